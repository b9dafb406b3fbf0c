"""Parquet outputs, written atomically: a reader sees a whole file or none."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from plmscreen.schema.arrow import METADATA_KEY


def with_metadata(table: pa.Table, metadata: dict) -> pa.Table:
    existing = dict(table.schema.metadata or {})
    existing[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    return table.replace_schema_metadata(existing)


def read_metadata(path: str | Path) -> dict:
    """The plmscreen metadata (model, checksum, version, parameters) of a Parquet file."""
    raw = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{path} has no plmscreen metadata: not written by plmscreen?")
    return json.loads(raw[METADATA_KEY])


def write_parquet_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
