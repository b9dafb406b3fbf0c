"""Compaction: a finished run's per-shard part files merged into one file per table partition.

A run writes three part files per shard (thousands for a proteome), and every query opens every
file's footer: measured on synthetic stores (bench/results/store_scale.md), queries slow down with
the number of files, not the rows. ``compact_run`` rewrites each of the run's partitions
(``STORE/<table>/model=<m>/run=<r>/``) as one file, ``part-compacted.parquet``, with the same rows
in shard order, the same columns and the same plmscreen metadata.

Atomicity: the new partition is built outside every view's glob (``STORE/.compact/``), checked
(row count against the parts' footers), then swapped with the live partition directory in one
``renameat2(RENAME_EXCHANGE)``: a reader's glob sees either the old part files or the new file,
never both (no duplicates) and never neither (nothing lost). A compaction killed at any point
leaves the old parts or the new file in place; its staging leftovers are outside the store's data
and are removed by the next compaction. File systems without an atomic exchange (some network
file systems) are refused rather than compacted unsafely.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from plmscreen.screening.errors import StoreError
from plmscreen.screening.store.layout import (
    _RUN_ID,
    COMPACTED_PART,
    DATA_TABLES,
    _store_dir,
    compaction_dir,
    run_json_path,
)

# Row groups of about this many rows (a shard's residues are tens of thousands of rows).
ROW_GROUP_ROWS = 1 << 20
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass
class CompactedRun:
    run_id: str
    partitions: int  # partition directories rewritten
    files_before: int
    files_after: int
    rows: int


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise StoreError("compaction needs renameat2 (Linux, glibc >= 2.28) to swap partitions atomically")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise StoreError(f"{b}: this file system cannot swap directories atomically; the run was not compacted")
        raise OSError(code, os.strerror(code), str(b))


def _merge(parts: list[Path], target: Path) -> int:
    """Write the rows of ``parts`` (in order) into ``target``; returns the rows written."""
    schema = pq.read_schema(parts[0])  # with the run's plmscreen metadata (every part of a run has it)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    rows, pending, pending_rows = 0, [], 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for part in parts:
            table = pq.read_table(part).cast(schema)
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                rows += pending_rows
                pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
            rows += pending_rows
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return rows


def compact_run(store: str | Path, run_id: str, min_parts: int = 2) -> CompactedRun:
    """Merge each partition of a finished run that has at least ``min_parts`` part files into one
    file, swapping it in atomically. Idempotent: a compacted partition has one file and is left."""
    root = _store_dir(store)
    if not _RUN_ID.fullmatch(run_id):
        raise StoreError(f"invalid run id {run_id!r}")
    if not run_json_path(root, run_id).is_file():
        raise StoreError(f"run {run_id} in {root} is not finished (runs/{run_id}/run.json is missing): "
                         f"compact it once its screen has ended")
    staging_root = compaction_dir(root) / run_id
    shutil.rmtree(staging_root, ignore_errors=True)  # an interrupted compaction's leftovers
    result = CompactedRun(run_id, 0, 0, 0, 0)
    for table in DATA_TABLES:
        for live in sorted((root / table).glob(f"model=*/run={run_id}")):
            parts = sorted(live.glob("part-*.parquet"))
            result.files_before += len(parts)
            if len(parts) < min_parts:
                result.files_after += len(parts)
                continue
            expected = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
            staging = staging_root / f"{table}.{uuid.uuid4().hex[:8]}" / live.name
            staging.mkdir(parents=True)
            rows = _merge(parts, staging / COMPACTED_PART)
            if rows != expected or pq.ParquetFile(staging / COMPACTED_PART).metadata.num_rows != expected:
                raise StoreError(f"{live}: compacted {rows} rows of {expected}; the partition was left as it was")
            exchange_paths(staging, live)  # the one step readers can see
            shutil.rmtree(staging.parent)  # now the old parts
            result.partitions += 1
            result.files_after += 1
            result.rows += rows
    shutil.rmtree(staging_root, ignore_errors=True)
    return result
