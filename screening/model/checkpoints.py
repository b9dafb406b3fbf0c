"""One path from "model name or checkpoint file" to a loaded fair-esm ESM-2 model.

Every way in ends in ``load_model``: the bundled ``plmscreen-mini``, a fair-esm ESM-2 name
resolved from a weights directory, the torch hub cache or a download from fair-esm's release
location, or a path to a checkpoint file in fair-esm's format. Checkpoints are read with
``weights_only=True`` and an allow-list for the ``argparse.Namespace`` fair-esm pickles, never
with ``weights_only=False``: a download is only saved to the hub cache (never unpickled by
fair-esm or ``torch.hub.load_state_dict_from_url``, whose default is ``weights_only=False``), then
read through the same path as a local file.

A checkpoint is hashed once per process and file version: ``file_sha256`` remembers digests by
the file's identity (path, size, mtime, inode), and a worker given the identity the run was
planned with (``CheckpointIdentity``) trusts the planned digest only while the file it opens
still has that identity; otherwise it hashes the file and refuses one whose digest differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from plmscreen.screening.errors import ModelError

ESM2_MODELS = (
    "esm2_t6_8M_UR50D",
    "esm2_t12_35M_UR50D",
    "esm2_t30_150M_UR50D",
    "esm2_t33_650M_UR50D",
    "esm2_t36_3B_UR50D",
    "esm2_t48_15B_UR50D",
)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
BUNDLED_MODELS = {"plmscreen-mini": BUNDLED_DIR / "esm2_plmscreen_mini.pt"}
# ESM-2 was trained on crops of 1022 residues (+ BOS and EOS = 1024 tokens).
ESM2_MAX_RESIDUES = 1022
WEIGHTS_DIR_ENV = "PLMSCREEN_WEIGHTS_DIR"
OFFLINE_ENV = "PLMSCREEN_OFFLINE"


# fair-esm's own release location (esm.pretrained downloads from here too).
DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"


class ModelLoadError(ModelError):
    """The model could not be found or its checkpoint could not be used; the message says why."""


@dataclass(frozen=True)
class CheckpointIdentity:
    """A checkpoint file version as the file system sees it: the same identity means the same bytes
    unless someone rewrote the file in place and restored its mtime."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | Path) -> CheckpointIdentity:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino)


_SHA256_BY_IDENTITY: dict[CheckpointIdentity, str] = {}


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
        return {**model_record(self), "num_layers": self.model.num_layers, "embed_dim": self.model.embed_dim,
                "attention_heads": self.model.attention_heads}


def model_record(loaded) -> dict:
    """What every run records about its model, whatever its family (``describe()`` adds the rest)."""
    return {"model_name": loaded.name, "checkpoint_path": loaded.checkpoint_path,
            "checkpoint_sha256": loaded.checkpoint_sha256, "num_parameters": loaded.num_parameters}


def _hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, planned: tuple[CheckpointIdentity, str] | None = None) -> str:
    """sha256 of ``path``, computed at most once per file version in this process. ``planned``
    (identity, digest) is what the run's planner hashed: while the file keeps that identity its
    digest is taken as is, so a 60 GB checkpoint is not read again by every process of a run."""
    identity = CheckpointIdentity.of(path)
    if planned is not None and planned[0] == identity:
        return planned[1]
    if identity not in _SHA256_BY_IDENTITY:
        _SHA256_BY_IDENTITY[identity] = _hash_file(path)
    return _SHA256_BY_IDENTITY[identity]


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
    places.append(hub_checkpoint_path(name))
    return places


# torch.serialization.safe_globals adds its globals to one process-wide allow-list on entry and
# removes them on exit, so a thread leaving it takes argparse.Namespace away from another thread
# still unpickling: threads-only Dask workers loading the model at once then failed with
# "Weights only load failed" (a shard retried for nothing). Every load of ours holds this lock.
_SAFE_LOAD_LOCK = threading.Lock()


def load_weights_only(path: str | Path, **kwargs):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with fair-esm's Namespace allowed,
    safe to call from several threads at once."""
    with _SAFE_LOAD_LOCK, torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def read_checkpoint(path: str | Path) -> dict:
    """Read a fair-esm ESM-2 checkpoint safely and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        data = load_weights_only(path)
    except Exception as exc:  # torch raises several types for truncated, foreign or unsafe files
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    _check_layout(data, path)
    return data


def _check_layout(data, path: Path) -> None:
    cfg = data.get("cfg", {}).get("model") if isinstance(data, dict) else None
    needed = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "token_dropout")
    if cfg is None or not all(hasattr(cfg, key) for key in needed) or not isinstance(data.get("model"), dict):
        raise ModelLoadError(
            f"{path} is not a fair-esm ESM-2 checkpoint: expected {{'cfg': {{'model': Namespace({', '.join(needed)})}}, "
            f"'model': state_dict}}"
        )


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


def hub_checkpoint_path(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"


def _download(name: str, looked: list[Path]) -> Path:
    """Save fair-esm's release file to the torch hub cache without unpickling it (it is read later
    like any local file, with weights_only=True). download_url_to_file writes a temporary file in
    the same folder and renames it, so an interrupted download leaves nothing half-written."""
    destination = hub_checkpoint_path(name)
    url = DOWNLOAD_URL.format(name=name)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(destination), progress=False)
    except Exception as exc:  # network errors come in many types
        raise ModelLoadError(_not_found_message(name, looked, f"download from {url} failed: {type(exc).__name__}: {exc}")) from exc
    return destination


def check_checkpoint(path: str | Path) -> None:
    """Check a checkpoint's layout without loading its weights: the file is memory-mapped, so a
    15B checkpoint costs the calling process (the CLI) almost no memory. Old-style (non-zip)
    checkpoints cannot be mapped; they are checked where they are loaded."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        data = load_weights_only(path, mmap=True)
    except RuntimeError as exc:
        if "mmap" in str(exc) or "zip" in str(exc):
            return
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # torch raises several types for truncated, foreign or unsafe files
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    _check_layout(data, path)


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
        return model, _download(model, looked)
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
    expected_sha256: str | None = None,
    planned_identity: CheckpointIdentity | None = None,
) -> LoadedModel:
    """Load ``model`` (bundled name, fair-esm ESM-2 name or checkpoint path) in eval mode.

    With ``expected_sha256`` (the digest a run was planned with) a checkpoint with other bytes is
    refused: the file was replaced after the run started, and its numbers would not be the run's.
    ``planned_identity`` is the file version the planner hashed; it spares a re-hash while the
    file is unchanged."""
    torch_device = resolve_device(device)
    name, path = resolve_checkpoint(model, weights_dir, allow_download)
    before = CheckpointIdentity.of(path)
    data = read_checkpoint(path)
    if CheckpointIdentity.of(path) != before:
        raise ModelLoadError(f"checkpoint {path} changed while it was being loaded; retry once it is complete")
    planned = (planned_identity, expected_sha256) if planned_identity is not None and expected_sha256 else None
    sha256 = file_sha256(path, planned)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ModelLoadError(
            f"checkpoint {path} has sha256 {sha256}, but the run was planned with {expected_sha256}: "
            f"the file was replaced after the run started. Restore it, or start a new run with the new file."
        )
    esm_model, alphabet = build_model(path.stem, data, str(path))
    esm_model = esm_model.eval().to(torch_device)
    return LoadedModel(esm_model, alphabet, name, str(path), sha256, torch_device, max_residues)
