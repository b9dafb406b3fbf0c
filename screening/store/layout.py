"""Where a store keeps its files (partitions, part files, run records) and the schema version of each file."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from plmscreen import schema
from plmscreen.schema.arrow import METADATA_KEY
from plmscreen.screening.errors import SchemaVersionError, StoreError

DATABASE_NAME = "plmscreen.duckdb"
# Version 4 moved the final flag out of the shard files (verdicts.parquet, the run-wide q-value):
# a version-3 `flagged` column would mean something else, so older runs must be re-screened.
SUPPORTED_SCHEMA_VERSIONS = frozenset({4})
DATA_TABLES = ("residues", "sequences", "repeats")
# Only complete files: writers create ".part-NNNNN.parquet.<pid>.tmp" and rename them when done.
PART_GLOB = "*/*/part-*.parquet"
COMPACTED_PART = "part-compacted.parquet"  # a compacted partition's one file (screening/store/compact.py)
COMPACT_DIR = ".compact"  # STORE/.compact/<run>/: a compaction's staging area, outside every view's glob
RUNS_DIR = "runs"  # STORE/runs/<run>/: run.json (a finished run), rejects.tsv, input.fasta, verdicts.parquet
CALIBRATIONS_DIR = "calibrations"  # STORE/calibrations/<id>.json: flag calibrations made in this store
VIEWS_DIR = Path(schema.__file__).resolve().parent / "views"
QUERIES_DIR = Path(schema.__file__).resolve().parent / "queries"
_INFO_TABLE = "plmscreen_views_info"
_STORE_TOKEN = "@STORE@"
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# Files and schema versions


def _store_dir(store: str | Path, must_exist: bool = True) -> Path:
    path = Path(store).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise StoreError(f"{store}: no such store directory")
    return path


def database_path(store: str | Path) -> Path:
    return _store_dir(store, must_exist=False) / DATABASE_NAME


def data_files(store: str | Path, table: str | None = None) -> list[Path]:
    """The complete Parquet files of ``table`` (or of every data table), as the views see them."""
    root = _store_dir(store)
    tables = DATA_TABLES if table is None else (table,)
    return sorted(p for t in tables for p in (root / t).glob(PART_GLOB) if p.is_file())


def file_schema_version(path: str | Path) -> int:
    """The ``schema_version`` in a Parquet file's plmscreen metadata (a SchemaVersionError if absent)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    except (OSError, pa.ArrowException) as exc:
        raise SchemaVersionError(f"{path}: not a readable Parquet file ({exc})") from None
    if raw is None:
        raise SchemaVersionError(f"{path} has no plmscreen metadata: not written by plmscreen; move it out of the store")
    try:
        version = json.loads(raw)["schema_version"]
    except (ValueError, KeyError, TypeError):
        raise SchemaVersionError(f"{path}: plmscreen metadata without a schema_version") from None
    if not isinstance(version, int):
        raise SchemaVersionError(f"{path}: schema_version {version!r} is not an integer")
    return version


def _version_problem(path: Path, version: int) -> str:
    from plmscreen import screening

    known = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
    if version > max(SUPPORTED_SCHEMA_VERSIONS):
        return (f"{path} has Parquet schema version {version}, newer than this plmscreen "
                f"{screening.__version__} reads (version {known}): upgrade plmscreen to query this store")
    return (f"{path} has Parquet schema version {version}, older than this plmscreen "
            f"{screening.__version__} reads (version {known}): re-run that screen, or delete the run")


def check_schema_versions(store: str | Path, files: Sequence[Path] | None = None,
                          con: duckdb.DuckDBPyConnection | None = None) -> dict[int, int]:
    """Number of files per schema version; a SchemaVersionError naming the files of unknown versions.

    The file footers are read by DuckDB in parallel (cheap: no data pages), on ``con`` if given
    (it must still allow file access) or on a new in-memory connection."""
    files = data_files(store) if files is None else list(files)
    if not files:
        return {}
    own = con is None
    con = duckdb.connect() if own else con
    try:
        rows = con.execute(
            "SELECT file_name, decode(value) FROM parquet_kv_metadata($files) WHERE decode(key) = $key",
            {"files": [str(f) for f in files], "key": METADATA_KEY.decode()},
        ).fetchall()
    except duckdb.Error:
        rows = None  # some file is not even Parquet: let pyarrow say which
    finally:
        if own:
            con.close()
    counts: dict[int, int] = {}
    problems: list[str] = []
    if rows is None:
        versions = {}
        for f in files:
            try:
                versions[str(f)] = file_schema_version(f)
            except SchemaVersionError as exc:
                problems.append(str(exc))
    else:
        versions = {}
        for name, value in rows:
            try:
                versions[name] = int(json.loads(value)["schema_version"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{name}: plmscreen metadata without a valid schema_version")
        for f in files:
            if str(f) not in versions and not any(p.startswith(f"{f}:") for p in problems):
                problems.append(f"{f} has no plmscreen metadata: not written by plmscreen; move it out of the store")
    for name, version in versions.items():
        counts[version] = counts.get(version, 0) + 1
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            problems.append(_version_problem(Path(name), version))
    if problems:
        more = f" (and {len(problems) - 3} more files)" if len(problems) > 3 else ""
        raise SchemaVersionError("; ".join(problems[:3]) + more)
    return counts


def run_dir(store: Path, table: str, model_name: str, run_id: str) -> Path:
    """Hive partitions: STORE/<table>/model=<model>/run=<run_id>/part-NNNNN.parquet."""
    model_part = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return Path(store) / table / f"model={model_part}" / f"run={run_id}"


def part_file(store: Path, table: str, model_name: str, run_id: str, shard: int) -> Path:
    """The Parquet file of one shard of one table: STORE/<table>/model=<m>/run=<r>/part-NNNNN.parquet."""
    return run_dir(store, table, model_name, run_id) / f"part-{shard:05d}.parquet"


def run_parts(store: Path, table: str, model_name: str, run_id: str) -> list[Path]:
    """A run's finished part files of one table, in shard order."""
    return sorted(run_dir(store, table, model_name, run_id).glob("part-*.parquet"))


def run_info_dir(store: Path, run_id: str) -> Path:
    """STORE/runs/<run_id>: the run's record (run.json once finished) and its rejects."""
    return Path(store) / RUNS_DIR / run_id


def run_json_path(store: Path, run_id: str) -> Path:
    return run_info_dir(store, run_id) / "run.json"


def verdicts_path(store: Path, run_id: str) -> Path:
    """STORE/runs/<run_id>/verdicts.parquet: the run-wide q-values and flags, written when it ends."""
    return run_info_dir(store, run_id) / "verdicts.parquet"


def calibration_path(store: Path, calibration_id: str) -> Path:
    """STORE/calibrations/<id>.json: a flag calibration's record (``plmscreen calibrate``)."""
    return Path(store) / CALIBRATIONS_DIR / f"{calibration_id}.json"


def run_input_path(store: Path, run_id: str) -> Path:
    """STORE/runs/<run_id>/input.fasta: the run's input as planned (decompressed), which shard
    tasks read their records from (workers need the store, not the input's own path)."""
    return run_info_dir(store, run_id) / "input.fasta"


def input_scan_path(store: Path) -> Path:
    """Where a planner writes the input's copy before the run is named (renamed to run_input_path)."""
    import os
    import uuid

    return Path(store) / RUNS_DIR / f".input-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def compaction_dir(store: Path) -> Path:
    """STORE/.compact: where compaction builds partitions before swapping them in."""
    return Path(store) / COMPACT_DIR
