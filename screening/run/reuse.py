"""Incremental rescreens: copy the rows of sequences already scored instead of scoring them again.

Stored rows stand in for scoring a sequence when they were computed from the same residues
(``sequences.sequence_sha256``) with the same checkpoint (sha256), the same plmscreen version and
Parquet schema, and the same ``ScreenSettings.reuse_key()`` (precision, masks per copy, repeat
parameters, mode). They then hold the numbers a fresh computation gives, up to the float noise of
batching (a sequence's numbers move by ~1e-6 nats with the other sequences padded into its batches).

Where they come from:
- earlier runs of the store: ``find_sources`` reads the footers of the store's sequences files
  once, at planning, and the ``(seq_id, sequence_sha256)`` columns of those with a matching key;
- this run: a sequence that occurs under several ids is scored once per shard, and a copy in a
  later shard is copied from the shard of its first copy when that shard is done (shards run at
  the same time never wait for each other, so such a copy may be scored twice on a cluster).

What is not copied: ``effect_flagged`` is recomputed under this run's flag rule from the copied
numbers, and the q-value and flag are the run's own (finalize_run). The partner test's null
co-masks are copied where the source tested the sequence (same draws: seeded by the sequence, and
``null_draws`` is in the reuse key) and computed now otherwise. The copy-following columns exist
only for effect-flagged sequences of runs with diagnostics on: copied where the source has them,
computed now for sequences this run's rule flags and the source did not, and null where this run
does not want them.

A copied row records in ``sequences.reused_from_run`` the run that scored it (followed through
copies of copies). Reuse happens inside a shard's task, between claiming the shard and writing
its files, so a shard's exactly-once guarantees are those of a scored shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from plmscreen import screening
from plmscreen.schema.arrow import METADATA_KEY, REPEATS_SCHEMA, RESIDUES_SCHEMA, SCHEMA_VERSION, SEQUENCES_SCHEMA
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.store.layout import data_files, run_dir


@dataclass(frozen=True)
class ReuseSource:
    """Where the rows of one already scored sequence are: its run, id and three part files."""

    run_id: str
    seq_id: str
    residues: str
    sequences: str
    repeats: str
    diagnostics: bool  # its run computed diagnostics for the sequences it flagged


@dataclass
class StoredSequence:
    """One sequence's stored rows, read back."""

    row: dict  # its sequences row
    residues: pa.Table  # its residues rows, by position (RESIDUES_SCHEMA)
    repeats: pa.Table  # its repeat region pairs (REPEATS_SCHEMA)
    origin: str  # the run that scored it
    has_diagnostics: bool  # its diagnostics columns were computed (its run's setting and its flag)


def source_for_part(store: Path, model_name: str, run_id: str, part: str, seq_id: str, diagnostics: bool) -> ReuseSource:
    """The source of ``seq_id`` in the part file ``part`` of run ``run_id``."""
    paths = [str(run_dir(store, table, model_name, run_id) / part) for table in ("residues", "sequences", "repeats")]
    return ReuseSource(run_id, seq_id, *paths, diagnostics=diagnostics)


def _part_paths(sequences_file: str) -> tuple[str, str, str]:
    """The residues, sequences and repeats files of the shard whose sequences file this is (the
    store's own layout: STORE/<table>/model=<m>/run=<r>/part-NNNNN.parquet)."""
    path = Path(sequences_file)
    root, partition = path.parents[3], path.relative_to(path.parents[2])
    return tuple(str(root / table / partition) for table in ("residues", "sequences", "repeats"))


def _file_key(meta: Mapping) -> tuple | None:
    """(checkpoint, plmscreen version, reuse key, diagnostics) of a file's plmscreen metadata."""
    try:
        settings = ScreenSettings.from_dict(meta["parameters"])
        return (meta["checkpoint_sha256"], meta["plmscreen_version"],
                json.dumps(settings.reuse_key(), sort_keys=True)), settings.diagnostics
    except Exception:  # noqa: BLE001 - another version's parameters: not a source
        return None


def find_sources(store: str | Path, checkpoint_sha256: str, settings: ScreenSettings, sha256s: Iterable[str],
                 exclude_run: str | None = None) -> dict[str, ReuseSource]:
    """For each of ``sha256s`` already scored in the store under this screen's reuse key (runs
    other than ``exclude_run``), where its rows are. Among several, a run with diagnostics, then
    the newest, is taken. Only parts whose three files (residues, sequences, repeats) exist count:
    a shard's files are written in that order, each atomically."""
    import duckdb

    store = Path(store)
    if not (store / "sequences").is_dir():
        return {}
    files = data_files(store, "sequences")
    wanted = sorted(set(sha256s))
    if not files or not wanted:
        return {}
    key = (checkpoint_sha256, screening.__version__, json.dumps(settings.reuse_key(), sort_keys=True))
    con = duckdb.connect()
    try:
        try:
            footers = con.execute(
                "SELECT file_name, decode(value) FROM parquet_kv_metadata($files) WHERE decode(key) = $key",
                {"files": [str(f) for f in files], "key": METADATA_KEY.decode()}).fetchall()
        except duckdb.Error:
            return {}  # a damaged file: queries report it; reuse simply finds nothing
        usable: dict[str, tuple[str, bool, str]] = {}  # file -> (run, diagnostics, created)
        for name, value in footers:
            try:
                meta = json.loads(value)
            except ValueError:
                continue
            if meta.get("schema_version") != SCHEMA_VERSION or meta.get("run_id") in (None, exclude_run):
                continue
            found = _file_key(meta)
            if found is None or found[0] != key:
                continue
            if all(Path(p).is_file() for p in _part_paths(name)[::2]):
                usable[name] = (meta["run_id"], found[1], str(meta.get("created_utc", "")))
        if not usable:
            return {}
        con.register("wanted", pa.table({"sha": wanted}))
        rows = con.execute(
            "SELECT filename, seq_id, sequence_sha256 FROM read_parquet($files, filename = true) "
            "WHERE sequence_sha256 IN (SELECT sha FROM wanted)", {"files": sorted(usable)}).fetchall()
    finally:
        con.close()
    best: dict[str, tuple] = {}
    for name, seq_id, sha in rows:
        run, diagnostics, created = usable[name]
        rank = (diagnostics, created, run, seq_id)
        if sha not in best or rank > best[sha][0]:
            residues, sequences, repeats = _part_paths(name)
            best[sha] = (rank, ReuseSource(run, seq_id, residues, sequences, repeats, diagnostics))
    return {sha: source for sha, (_, source) in best.items()}


def _rows_by_seq_id(path: str, seq_ids: Sequence[str], schema: pa.Schema) -> dict[str, pa.Table]:
    """The rows of each of ``seq_ids`` in one part file, in file order."""
    table = pq.read_table(path, filters=[("seq_id", "in", list(seq_ids))]).select(schema.names)
    table = table.cast(schema).replace_schema_metadata(None)
    ids = np.asarray(table.column("seq_id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    out = {}
    for seq_id in seq_ids:
        lo, hi = np.searchsorted(sorted_ids, seq_id, "left"), np.searchsorted(sorted_ids, seq_id, "right")
        out[seq_id] = table.take(pa.array(order[lo:hi], type=pa.int64()))
    return out


def load_stored(sources: Mapping[str, ReuseSource]) -> dict[str, StoredSequence]:
    """Read back the rows of each sequence (by sha256) from its source; a sequence whose files are
    gone or whose rows do not match its residues is left out (it is scored instead)."""
    by_part: dict[tuple, list[tuple[str, ReuseSource]]] = {}
    for sha, source in sources.items():
        by_part.setdefault((source.residues, source.sequences, source.repeats), []).append((sha, source))
    stored: dict[str, StoredSequence] = {}
    for (residues_path, sequences_path, repeats_path), members in by_part.items():
        ids = sorted({source.seq_id for _, source in members})
        try:
            rows = {i: t.to_pylist() for i, t in _rows_by_seq_id(sequences_path, ids, SEQUENCES_SCHEMA).items()}
            residues = _rows_by_seq_id(residues_path, ids, RESIDUES_SCHEMA)
            repeats = _rows_by_seq_id(repeats_path, ids, REPEATS_SCHEMA)
        except (OSError, pa.ArrowException):
            continue  # deleted or rewritten meanwhile: score these
        for sha, source in members:
            found = rows[source.seq_id]
            if len(found) != 1 or found[0]["sequence_sha256"] != sha:
                continue
            row, res = found[0], residues[source.seq_id]
            if res.num_rows != row["length"] or res.column("pos").to_pylist() != list(range(1, row["length"] + 1)):
                continue
            stored[sha] = StoredSequence(row, res, repeats[source.seq_id], row["reused_from_run"] or source.run_id,
                                         source.diagnostics and row["effect_flagged"])
    return stored
