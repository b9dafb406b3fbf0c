"""From a ``--model`` string to a backend.

  plmscreen-mini, esm2_t6_8M_UR50D ... , a fair-esm .pt file        -> fair-esm (native ESM-2 path)
  carp_600k, carp_38M, carp_76M, carp_640M, a CARP .pt file         -> carp
  a directory with config.json (model_type "esm" / "esmc")           -> hf-esm / hf-esmc
  a hub id "org/name" found in --weights-dir or the local HF cache   -> hf-esm / hf-esmc

fair-esm and CARP names download when online unless $PLMSCREEN_OFFLINE=1 (today's behaviour for
fair-esm); hub ids download only with ``hub_download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plmscreen.screening.model.backends.base import Backend, weights_sha256
from plmscreen.screening.model.backends.carp import CARP_MODELS, is_carp_checkpoint
from plmscreen.screening.model.backends.hf_common import is_hf_dir, looks_like_hub_id, read_config, resolve_hf
from plmscreen.screening.model.checkpoints import (
    BUNDLED_MODELS,
    ESM2_MODELS,
    CheckpointIdentity,
    ModelLoadError,
    file_sha256,
    load_weights_only,
)

FAMILIES = ("fair-esm", "carp", "hf-esm", "hf-esmc")
HF_MODEL_TYPES = {"esm": "hf-esm", "esmc": "hf-esmc"}
DEFAULT_NORMALISE = {"fair-esm": "vocabulary", "hf-esm": "vocabulary", "hf-esmc": "residues", "carp": "residues"}


def _pt_family(path: Path) -> str:
    """fair-esm or CARP, from the file's layout read through a memory map (the weights stay on disk)."""
    try:
        data = load_weights_only(path, mmap=True)  # thread-safe: a race here would misread CARP as fair-esm
    except Exception:  # old-style or unreadable: fair-esm's loader reports it
        return "fair-esm"
    return "carp" if is_carp_checkpoint(data) else "fair-esm"


def _hf_family(directory: Path) -> str:
    model_type = read_config(directory).get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ModelLoadError(f"{directory}: model_type '{model_type}' is not supported "
                             f"(supported: {', '.join(HF_MODEL_TYPES)})")
    return HF_MODEL_TYPES[model_type]


def resolve_model(model: str, weights_dir=None, hub_download: bool = False) -> tuple[str, str | None, Path | None]:
    """(family, display name, HF directory) for ``model``; the directory only for HF families
    (fair-esm and CARP resolve their files in their own loaders, with their own download rules)."""
    if model in BUNDLED_MODELS or model in ESM2_MODELS:
        return "fair-esm", None, None
    if model in CARP_MODELS:
        return "carp", None, None
    path = Path(model)
    if path.is_dir():
        if not is_hf_dir(path):
            raise ModelLoadError(f"{path} is a directory without config.json: not a Hugging Face checkpoint")
        return _hf_family(path), None, path
    if path.is_file():
        return _pt_family(path), None, None
    if looks_like_hub_id(model):
        name, directory = resolve_hf(model, weights_dir, allow_download=hub_download)
        return _hf_family(directory), name, directory
    return "fair-esm", None, None  # fair-esm's resolver says what is wrong with it


def load_backend(model: str, weights_dir=None, device: str = "auto", allow_download: bool | None = None,
                 hub_download: bool = False, normalise: str | None = None, max_residues: int | None = None,
                 expected_sha256: str | None = None, **fair_esm_kwargs) -> Backend:
    family, name, directory = resolve_model(model, weights_dir, hub_download)
    normalise = normalise or DEFAULT_NORMALISE[family]
    if family == "fair-esm":
        from plmscreen.screening.model.backends.fair_esm import FairEsmBackend
        from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES

        return FairEsmBackend.load(model, normalise=normalise, weights_dir=weights_dir, device=device,
                                   allow_download=allow_download, max_residues=max_residues or ESM2_MAX_RESIDUES,
                                   expected_sha256=expected_sha256, **fair_esm_kwargs)
    if family == "carp":
        from plmscreen.screening.model.backends.carp import CARP_MAX_RESIDUES, CarpBackend

        return CarpBackend.load(model, weights_dir=weights_dir, device=device, normalise=normalise,
                                max_residues=max_residues or CARP_MAX_RESIDUES, allow_download=allow_download,
                                expected_sha256=expected_sha256)
    try:
        if family == "hf-esm":
            from plmscreen.screening.model.backends.hf_esm import HfEsmBackend as cls
        else:
            from plmscreen.screening.model.backends.esmc import EsmcBackend as cls
    except ImportError as exc:
        raise ModelLoadError(f"{model} is a Hugging Face checkpoint: install plmscreen[hf] ({exc})") from exc
    return cls.load(directory, name=name, device=device, normalise=normalise, max_residues=max_residues,
                    expected_sha256=expected_sha256)


def model_window(model: str, weights_dir=None) -> int:
    """The window ``load_backend(model)`` will use, from names and config.json only (no weights
    read): what shard planning (``screen.shard_cost``) needs before any worker loads the model."""
    family, _, directory = resolve_model(model, weights_dir)
    return _window(family, directory)


def _window(family: str, directory: Path | None) -> int:
    from plmscreen.screening.model.backends.carp import CARP_MAX_RESIDUES
    from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES

    if family == "fair-esm":
        return ESM2_MAX_RESIDUES
    if family == "carp":
        return CARP_MAX_RESIDUES
    config = read_config(directory)
    positions = config.get("max_position_embeddings", 2048 if family == "hf-esmc" else 1026)
    if family == "hf-esmc":
        return positions - 2
    if config.get("position_embedding_type", "absolute") == "rotary":
        return ESM2_MAX_RESIDUES
    return min(ESM2_MAX_RESIDUES, positions - config.get("pad_token_id", 1) - 3)


@dataclass(frozen=True)
class PlannedCheckpoint:
    """What a run is planned with, before any worker loads the model: the family, the files and
    their digests (what workers must find again), the window and the default normalisation."""

    model: str  # the --model string as given
    family: str
    name: str  # display name: the partition key model=<name> of the store
    path: Path  # the checkpoint file, or the HF checkpoint directory
    sha256: str  # Backend.checkpoint_sha256: one file's digest, or of the shards' "name<TAB>sha256" lines
    weight_sha256: dict[str, str]  # weight file name -> its own sha256
    window: int
    normalise: str
    size_bytes: int  # the weights on disk (the cluster plan sizes workers' memory by it)
    identity: CheckpointIdentity | None = None  # single-file checkpoints: the version that was hashed
    config_sha256: str | None = None  # HF: config.json decides the architecture, window and tokens

    def record(self) -> dict:
        """What run.json, the catalog and every Parquet file record about the planned model."""
        return {"model_id": self.model, "model_family": self.family, "model_name": self.name,
                "checkpoint_path": str(self.path), "checkpoint_sha256": self.sha256,
                "weight_sha256": dict(self.weight_sha256), "max_residues": self.window,
                "normalise": self.normalise,
                **({"config_sha256": self.config_sha256} if self.config_sha256 else {})}

    def identity_key(self) -> dict | None:
        """What besides the weights' digest changes a run's numbers: nothing for fair-esm (whose
        run ids stay what they were), the family, config, window and normalisation for the rest."""
        if self.family == "fair-esm":
            return None
        return {"family": self.family, "config_sha256": self.config_sha256, "window": self.window,
                "normalise": self.normalise}


def _checkpoint_files(model: str, weights_dir=None, hub_download: bool = False):
    """``model`` resolved to (family, name, directory, path, weight files, config.json's sha256): no
    weight file is read (only a Hugging Face directory's small config.json is)."""
    family, name, directory = resolve_model(model, weights_dir, hub_download)
    if family == "fair-esm":
        from plmscreen.screening.model.checkpoints import resolve_checkpoint

        name, path = resolve_checkpoint(model, weights_dir)
        files, config_sha256 = [path], None
    elif family == "carp":
        from plmscreen.screening.model.backends.carp import resolve_carp

        name, path = resolve_carp(model, weights_dir)
        files, config_sha256 = [path], None
    else:
        import hashlib

        from plmscreen.screening.model.backends.hf_common import weight_files

        path = directory
        name = name or directory.resolve().name
        files = weight_files(directory)
        config_sha256 = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return family, name, directory, path, files, config_sha256


def checkpoint_bytes(model: str, weights_dir=None, hub_download: bool = False) -> int:
    """Size of ``model``'s weight files, without hashing them (a 60 GB checkpoint takes minutes)."""
    return sum(f.stat().st_size for f in _checkpoint_files(model, weights_dir, hub_download)[4])


def plan_checkpoint(model: str, weights_dir=None, hub_download: bool = False) -> PlannedCheckpoint:
    """Resolve ``model`` and hash its weight files without building the model (hub ids are
    downloaded only with ``hub_download``). Digests are remembered per file version in this
    process, so the load that follows does not read the files again."""
    family, name, directory, path, files, config_sha256 = _checkpoint_files(model, weights_dir, hub_download)
    normalise = DEFAULT_NORMALISE[family]
    digests = {f.name: file_sha256(f) for f in files}
    return PlannedCheckpoint(
        model=model, family=family, name=name, path=Path(path), sha256=weights_sha256(files),
        weight_sha256=digests, window=_window(family, directory), normalise=normalise,
        size_bytes=sum(f.stat().st_size for f in files),
        identity=CheckpointIdentity.of(path) if family in ("fair-esm", "carp") else None,
        config_sha256=config_sha256)
