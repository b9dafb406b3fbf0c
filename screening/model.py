"""One path from "model name or checkpoint file" to a loaded fair-esm ESM-2 model.

Every way in ends in ``load_model``: the bundled ``plmscreen-mini``, a fair-esm ESM-2 name
resolved from a weights directory, the torch hub cache or fair-esm's own download, or a path to a
checkpoint file in fair-esm's format. Checkpoints are read with ``weights_only=True`` and an
allow-list for the ``argparse.Namespace`` fair-esm pickles, never with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ESM2_MODELS = (
    "esm2_t6_8M_UR50D",
    "esm2_t12_35M_UR50D",
    "esm2_t30_150M_UR50D",
    "esm2_t33_650M_UR50D",
    "esm2_t36_3B_UR50D",
    "esm2_t48_15B_UR50D",
)
BUNDLED_DIR = Path(__file__).parent / "models"
BUNDLED_MODELS = {"plmscreen-mini": BUNDLED_DIR / "esm2_plmscreen_mini.pt"}
# ESM-2 was trained on crops of 1022 residues (+ BOS and EOS = 1024 tokens).
ESM2_MAX_RESIDUES = 1022
WEIGHTS_DIR_ENV = "PLMSCREEN_WEIGHTS_DIR"
OFFLINE_ENV = "PLMSCREEN_OFFLINE"


class ModelLoadError(RuntimeError):
    """The model could not be found or its checkpoint could not be used; the message says why."""


@dataclass
class LoadedModel:
    model: torch.nn.Module  # esm.model.esm2.ESM2, eval mode
    alphabet: object  # esm.data.Alphabet
    name: str
    checkpoint_path: str
    checkpoint_sha256: str
    device: torch.device
    max_residues: int = ESM2_MAX_RESIDUES

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        return {
            "model_name": self.name,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.checkpoint_sha256,
            "num_layers": self.model.num_layers,
            "embed_dim": self.model.embed_dim,
            "attention_heads": self.model.attention_heads,
            "num_parameters": self.num_parameters,
        }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device '{device}' (use auto, cpu or cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' was requested but torch sees no CUDA GPU")
    return torch.device(device)


def candidate_paths(name: str, weights_dir: str | Path | None = None) -> list[Path]:
    """Where a fair-esm model name is looked for, in order."""
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    places = []
    if weights_dir:
        places.append(Path(weights_dir) / f"{name}.pt")
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt")
    return places


def read_checkpoint(path: str | Path) -> dict:
    """Read a fair-esm ESM-2 checkpoint safely and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated, foreign or unsafe files
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    cfg = data.get("cfg", {}).get("model") if isinstance(data, dict) else None
    needed = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "token_dropout")
    if cfg is None or not all(hasattr(cfg, key) for key in needed) or not isinstance(data.get("model"), dict):
        raise ModelLoadError(
            f"{path} is not a fair-esm ESM-2 checkpoint: expected {{'cfg': {{'model': Namespace({', '.join(needed)})}}, "
            f"'model': state_dict}}"
        )
    return data


def build_model(name: str, data: dict, source: str):
    """Instantiate fair-esm's ESM2 from checkpoint data; mismatched weights are reported, not ignored."""
    from esm.pretrained import load_model_and_alphabet_core

    # fair-esm picks its ESM-2 loader by the name's prefix; contact-regression weights are not needed.
    esm_name = name if name.startswith("esm2") else f"esm2_{name}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Regression weights not found")
            return load_model_and_alphabet_core(esm_name, data, None)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"checkpoint {source} does not match the ESM-2 architecture its config declares: "
            f"{' '.join(line.strip() for line in first[:3])[:500]}"
        ) from exc


def _download(name: str, looked: list[Path]) -> dict:
    from esm.pretrained import _download_model_and_regression_data  # noqa: PLC2701 (fair-esm's own download)

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            model_data, _ = _download_model_and_regression_data(name)
    except Exception as exc:  # network errors come in many types
        raise ModelLoadError(_not_found_message(name, looked, f"fair-esm download failed: {type(exc).__name__}: {exc}")) from exc
    return model_data


def _not_found_message(name: str, looked: list[Path], tail: str) -> str:
    places = "\n".join(f"  {p} (missing)" for p in looked)
    return (
        f"model '{name}' not found. Looked for:\n{places}\n  {tail}\n"
        f"Put {name}.pt in a directory given by --weights-dir or ${WEIGHTS_DIR_ENV}, "
        f"or pass the checkpoint's path as --model."
    )


def resolve_checkpoint(model: str, weights_dir: str | Path | None = None, allow_download: bool | None = None) -> tuple[str, Path]:
    """(display name, checkpoint path) for ``model``, without building it; may download a fair-esm model."""
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes")
    if model in BUNDLED_MODELS:
        path = BUNDLED_MODELS[model]
        if not path.is_file():
            raise ModelLoadError(f"bundled model '{model}' is missing from the installation: {path}")
        return model, path
    if model in ESM2_MODELS:
        looked = candidate_paths(model, weights_dir)
        found = next((p for p in looked if p.is_file()), None)
        if found is not None:
            return model, found
        if not allow_download:
            raise ModelLoadError(_not_found_message(model, looked, f"download disabled (${OFFLINE_ENV}=1)"))
        _download(model, looked)
        return model, Path(torch.hub.get_dir()) / "checkpoints" / f"{model}.pt"
    if Path(model).suffix == ".pt" or Path(model).exists() or os.sep in model:
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"checkpoint not found: {path}")
        return path.stem, path
    known = ", ".join(list(BUNDLED_MODELS) + list(ESM2_MODELS))
    raise ModelLoadError(f"unknown model '{model}': not a checkpoint file and not one of {known}")


def load_model(
    model: str,
    weights_dir: str | Path | None = None,
    device: str = "auto",
    allow_download: bool | None = None,
    max_residues: int = ESM2_MAX_RESIDUES,
) -> LoadedModel:
    """Load ``model`` (bundled name, fair-esm ESM-2 name or checkpoint path) in eval mode."""
    torch_device = resolve_device(device)
    name, path = resolve_checkpoint(model, weights_dir, allow_download)
    data = read_checkpoint(path)
    esm_model, alphabet = build_model(path.stem, data, str(path))
    esm_model = esm_model.eval().to(torch_device)
    return LoadedModel(esm_model, alphabet, name, str(path), file_sha256(path), torch_device, max_residues)
