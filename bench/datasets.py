"""Where benchmark and calibration scripts find the public data sets they read.

The data are not shipped (their sources and licences: docs/data-sources.md). Point
``$PLMSCREEN_DATA_DIR`` at a folder laid out as that page says (``fasta/``, ``repeats/``,
``proteingym/``), or pass each script's path options."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "PLMSCREEN_DATA_DIR"
ECOLI_FASTA = Path("fasta") / "UP000000625_83333_ecoli_k12.fasta"
TANDEM_REPEATS = Path("repeats") / "wrightlab_tandem_repeat"


def data_path(relative: str | Path) -> Path:
    """``$PLMSCREEN_DATA_DIR/relative``; a clear error when the variable is unset."""
    root = os.environ.get(DATA_ENV)
    if not root:
        raise SystemExit(f"set ${DATA_ENV} to the folder holding {relative} (see docs/data-sources.md), "
                         f"or pass the path as an option")
    return Path(root) / relative


def default_path(relative: str | Path) -> Path | None:
    """For argparse defaults: the path under ``$PLMSCREEN_DATA_DIR``, or None when it is unset."""
    root = os.environ.get(DATA_ENV)
    return Path(root) / relative if root else None


def require(path: Path | None, option: str, relative: str | Path) -> Path:
    """The path a script was given, or a clear error naming the option and the variable."""
    if path is None:
        return data_path(relative)
    if not path.exists():
        raise SystemExit(f"{option}: {path} does not exist (see docs/data-sources.md)")
    return path
