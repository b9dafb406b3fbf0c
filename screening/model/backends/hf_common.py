"""Finding and reading Hugging Face checkpoints (config.json + safetensors) without the network.

``--model`` may be a local directory or a hub id ("facebook/esm2_t6_8M_UR50D"). A hub id is
looked for in ``--weights-dir`` (a folder named after the repository) and in the local Hugging Face
cache (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``); it is downloaded only when the
caller allows it, and then only its config, tokenizer and safetensors files. Weights are read from
safetensors only: a checkpoint that has nothing but pickled ``pytorch_model.bin`` files is refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from plmscreen.screening.model.backends.base import weights_sha256
from plmscreen.screening.model.checkpoints import WEIGHTS_DIR_ENV, ModelLoadError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt"]


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def looks_like_hub_id(model: str) -> bool:
    return bool(HUB_ID.match(model)) and not Path(model).exists() and not model.endswith(".pt")


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_cache_entry(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def resolve_hf(model: str, weights_dir: str | Path | None = None, allow_download: bool = False) -> tuple[str, Path]:
    """(display name, checkpoint directory) for a local directory or a hub id."""
    if Path(model).is_dir():
        if not is_hf_dir(model):
            raise ModelLoadError(f"{model} is a directory without config.json: not a Hugging Face checkpoint")
        return Path(model).resolve().name, Path(model)
    if not looks_like_hub_id(model):
        raise ModelLoadError(f"'{model}' is neither a Hugging Face checkpoint directory nor a hub id (org/name)")
    looked: list[str] = []
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        local = Path(weights_dir) / model.split("/")[1]
        if is_hf_dir(local):
            return model, local
        looked.append(f"{local} (no config.json)")
    entry = hub_cache_entry(model)
    try:
        from huggingface_hub import snapshot_download

        return model, Path(snapshot_download(model, local_files_only=True))
    except ImportError as exc:
        raise ModelLoadError(f"hub id '{model}' needs huggingface_hub: pip install 'plmscreen[hf]'") from exc
    except Exception:  # LocalEntryNotFoundError and friends: not in the cache
        looked.append(f"{entry} (not in the Hugging Face cache)")
    if not allow_download:
        places = "\n".join(f"  {p}" for p in looked)
        raise ModelLoadError(
            f"model '{model}' not found. Looked for:\n{places}\n  download not allowed (offline by default "
            f"for hub ids; allow it with --hub-download, or put the checkpoint directory in --weights-dir / ${WEIGHTS_DIR_ENV})"
        )
    try:
        from huggingface_hub import snapshot_download

        return model, Path(snapshot_download(model, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as exc:  # network errors come in many types
        raise ModelLoadError(f"download of '{model}' from the Hugging Face hub failed: {type(exc).__name__}: {exc}") from exc


def read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {directory / 'config.json'}: {exc}") from exc


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (the shards its index names, if sharded)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    if list(directory.glob("*.bin")):
        raise ModelLoadError(
            f"{directory} holds only pickled *.bin weights; plmscreen reads safetensors only "
            f"(convert with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    raise ModelLoadError(f"{directory} has no *.safetensors weight files")


def checkpoint_identity(directory: Path) -> tuple[str, dict]:
    """(sha256 of the weight files, extra provenance: the files and config.json's sha256)."""
    import hashlib

    files = weight_files(directory)
    extra = {
        "weight_files": [f.name for f in files],
        "config_sha256": hashlib.sha256((directory / "config.json").read_bytes()).hexdigest(),
    }
    return weights_sha256(files), extra


def check_expected(directory: Path, sha256: str, expected_sha256: str | None) -> None:
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ModelLoadError(
            f"checkpoint {directory} has sha256 {sha256}, but the run was planned with {expected_sha256}: "
            f"the files were replaced after the run started."
        )
