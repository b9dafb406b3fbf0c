"""CARP (ByteNet dilated-CNN masked LM, ``sequence-models`` on PyPI) as a backend.

Tokens: ``sequence_models.constants.PROTEIN_ALPHABET`` ("ACDEFGHIKLMNPQRSTVWYBZXJOU*-#@"),
residues only, no BOS/EOS (residue i is token i), right-padded with the gap token "-" (the
padding CARP's collater uses, masked out of every convolution), mask "#". Every residue letter,
J included, is a token. Scores are normalised over the 26 residue tokens by default
(``normalise="residues"``; "vocabulary" adds the four specials).

CARP has no positional encoding, but it was trained on sequences cropped to 1024 residues, so the
window policy is the scorer's: longer sequences are scored in a 1024-residue window centred on
the masked residue.

Checkpoints are the released ``carp_*.pt`` dicts (``model``, ``d_embed``, ``d_model``,
``n_layers``, ``kernel_size``, ``activation``, ``slim``, ``r``, ``model_state_dict``), read with
``weights_only=True`` and built with ``sequence_models.pretrained.load_carp``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.forward import _gather_rows
from plmscreen.screening.model.checkpoints import (
    OFFLINE_ENV,
    CheckpointIdentity,
    ModelLoadError,
    candidate_paths,
    file_sha256,
    hub_checkpoint_path,
    resolve_device,
)

CARP_MODELS = ("carp_600k", "carp_38M", "carp_76M", "carp_640M")
CARP_MAX_RESIDUES = 1024
CARP_URL = "https://zenodo.org/record/6564798/files/{name}.pt?download=1"  # sequence_models.pretrained.CARP_URL
CARP_KEYS = ("model", "d_embed", "d_model", "n_layers", "kernel_size", "activation", "slim", "r", "model_state_dict")


def is_carp_checkpoint(data) -> bool:
    return (isinstance(data, dict) and all(k in data for k in CARP_KEYS) and isinstance(data["model"], str)
            and "carp" in data["model"] and "big" not in data["model"])


def read_carp_checkpoint(path: Path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe files
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not is_carp_checkpoint(data):
        raise ModelLoadError(f"{path} is not a CARP checkpoint: expected a dict with {', '.join(CARP_KEYS)}")
    return data


def resolve_carp(model: str, weights_dir=None, allow_download: bool | None = None) -> tuple[str, Path]:
    """(name, checkpoint path) for a CARP name or file; a name may be downloaded into the torch hub cache."""
    if model not in CARP_MODELS:
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"checkpoint not found: {path}")
        return path.stem, path
    looked = candidate_paths(model, weights_dir)
    found = next((p for p in looked if p.is_file()), None)
    if found is not None:
        return model, found
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes")
    places = "\n".join(f"  {p} (missing)" for p in looked)
    if not allow_download:
        raise ModelLoadError(f"model '{model}' not found. Looked for:\n{places}\n  download disabled (${OFFLINE_ENV}=1)")
    destination = hub_checkpoint_path(model)
    url = CARP_URL.format(name=model)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(destination), progress=False)  # saved, never unpickled here
    except Exception as exc:  # network errors come in many types
        raise ModelLoadError(f"model '{model}' not found. Looked for:\n{places}\n  download from {url} failed: {exc}") from exc
    return model, destination


class CarpBackend(Backend):
    family = "carp"

    def __init__(self, carp, *, name: str, path: Path, sha256: str, device: torch.device, normalise: str = "residues",
                 max_residues: int = CARP_MAX_RESIDUES, extra: dict | None = None):
        from sequence_models.constants import MASK, PAD, PROTEIN_ALPHABET

        net = carp.model
        self._setup(
            model=carp, name=name, checkpoint_path=path, checkpoint_sha256=sha256, device=device,
            max_residues=max_residues, vocab=tuple(PROTEIN_ALPHABET), vocab_size=len(PROTEIN_ALPHABET), bos=None,
            eos=None, pad=PROTEIN_ALPHABET.index(PAD), mask=PROTEIN_ALPHABET.index(MASK), unk=None,
            normalise=normalise, embed_dim=net.embedder.layers[0].sequence1[0].normalized_shape[0],
            extra={"num_layers": len(net.embedder.layers), **(extra or {})},
        )

    @classmethod
    def load(cls, model: str, weights_dir=None, device: str = "auto", normalise: str = "residues",
             max_residues: int = CARP_MAX_RESIDUES, allow_download: bool | None = None,
             expected_sha256: str | None = None) -> CarpBackend:
        from sequence_models.pretrained import load_carp

        torch_device = resolve_device(device)
        name, path = resolve_carp(model, weights_dir, allow_download)
        before = CheckpointIdentity.of(path)
        data = read_carp_checkpoint(path)
        if CheckpointIdentity.of(path) != before:
            raise ModelLoadError(f"checkpoint {path} changed while it was being loaded; retry once it is complete")
        sha256 = file_sha256(path)
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise ModelLoadError(f"checkpoint {path} has sha256 {sha256}, but the run was planned with {expected_sha256}")
        try:
            carp = load_carp(data)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"checkpoint {path} does not match the CARP architecture its fields declare: "
                                 f"{str(exc).strip().splitlines()[0][:300]}") from exc
        return cls(carp.eval().to(torch_device), name=name, path=path, sha256=sha256, device=torch_device,
                   normalise=normalise, max_residues=max_residues,
                   extra={"carp_model": data["model"], "kernel_size": data["kernel_size"], "dilation_r": data["r"]})

    def _logits_at(self, tokens, query_pos, reference):
        if reference:
            logits = self.model(tokens, logits=True)["logits"]
            return torch.gather(logits, 1, query_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        net = self.model.model  # ByteNetLM: the same modules the CARP wrapper runs
        input_mask = (~self.padding(tokens)).unsqueeze(-1)
        x = net.embedder._embed(tokens)
        for layer in net.embedder.layers:
            x = layer(x, input_mask=input_mask)
        return net.decoder(net.last_norm(_gather_rows(x, query_pos)))
