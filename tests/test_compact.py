"""Compaction of a run's part files: same rows and metadata, one file per partition, and atomic:
killed for real mid-way (kill -9 of a compacting process) it loses nothing and never shows
duplicates, and readers running during a compaction always see every row exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA, SCHEMA_VERSION
from plmscreen.screening.errors import StoreError
from plmscreen.screening.run.tables import ShardTables, write_shard
from plmscreen.screening.store import open_store
from plmscreen.screening.store.compact import compact_run
from plmscreen.screening.store.layout import COMPACTED_PART, run_json_path

RUN, OTHER, MODEL = "r0000000000000001", "r0000000000000002", "tiny"
SHARDS, PER_SEQ, SEQS_PER_SHARD = 120, 250, 20


def shard_tables(shard: int, rng: np.random.Generator) -> ShardTables:
    ids = [f"s{shard:04d}_{k:02d}" for k in range(SEQS_PER_SHARD)]
    n = PER_SEQ * SEQS_PER_SHARD
    empty = pa.array([[]] * n, pa.list_(pa.int32()))
    residues = {
        "seq_id": np.repeat(ids, PER_SEQ).tolist(), "pos": np.tile(np.arange(1, PER_SEQ + 1), SEQS_PER_SHARD),
        "aa": ["M"] * n, "logp_masked": rng.normal(-2, 1, n), "logp_unmasked": rng.normal(-1, 1, n),
        "partner_pos": empty, "logp_ablated": [None] * n, "windowed": [False] * n, "inflation": [None] * n,
        "partner_region": empty, "partner_identity": pa.array([[]] * n, pa.list_(pa.float32())),
        "logp_random_comask": [None] * n, "net_inflation": [None] * n, "copy_following": [None] * n, "planted_residue": [None] * n,
    }
    sequences = [{"seq_id": i, "length": PER_SEQ, "pll": -1.0, "pppl": 7.0, "pppl_ablated": 7.0, "repeat_fraction": 0.0,
                  "inflation_factor": 1.0, "effect_flagged": False, "partner_pvalue": None, "mean_inflation": None, "max_inflation": None,
                  "pppl_unmasked": 3.0, "n_repeat_regions": 0, "windowed": False, "sequence_sha256": i, "mode": "exact",
                  "mean_net_inflation": None, "mean_copy_following": None, "reused_from_run": None} for i in ids]
    repeats = [{"seq_id": ids[0], "region_id": 1, "start": 1, "end": 10, "partner_start": 11, "partner_end": 20,
                "identity": 0.9, "score": 50.0, "pvalue": 1e-5}]
    return ShardTables(pa.table(residues, schema=RESIDUES_SCHEMA), pa.Table.from_pylist(sequences, schema=SEQUENCES_SCHEMA),
                       pa.Table.from_pylist(repeats, schema=REPEATS_SCHEMA))


def build_store(store: Path) -> None:
    rng = np.random.default_rng(0)
    for run, shards in ((RUN, SHARDS), (OTHER, 3)):
        metadata = {"schema_version": SCHEMA_VERSION, "run_id": run, "model_name": MODEL, "plmscreen_version": "test",
                    "parameters": {}, "created_utc": f"2026-01-0{1 if run == RUN else 2}T00:00:00+00:00"}
        for shard in range(shards):
            write_shard(shard_tables(shard, rng), store, MODEL, run, shard, metadata)
        run_json_path(store, run).parent.mkdir(parents=True, exist_ok=True)
        run_json_path(store, run).write_text(json.dumps({**metadata, "model": {"model_name": MODEL}}))


def rows_seen(store: Path) -> dict[str, tuple[int, int, float]]:
    """Per table of run RUN, as a view's glob sees it: rows, distinct keys, and a checksum of values."""
    con = duckdb.connect()
    out = {}
    for table, key, value in (("residues", "seq_id || ':' || pos", "logp_masked"), ("sequences", "seq_id", "length"),
                              ("repeats", "seq_id", "score")):
        glob = str(store / table / "*" / "*" / "part-*.parquet")
        out[table] = con.execute(
            f"SELECT count(*), count(DISTINCT {key}), round(sum({value}), 6) FROM read_parquet('{glob}', hive_partitioning = true) "
            f"WHERE run = '{RUN}'").fetchone()
    con.close()
    return out


@pytest.fixture
def store(tmp_path) -> Path:
    build_store(tmp_path / "store")
    return tmp_path / "store"


def test_compaction_keeps_every_row_and_the_metadata_in_one_file_per_partition(store):
    query = f"SELECT * FROM residues WHERE run = '{RUN}' ORDER BY seq_id, pos"
    with open_store(store) as st:
        before, flagged_before = st.sql(query), st.named("run_summary").to_pylist()
    meta_before = pq.read_schema(next((store / "residues").glob(f"*/run={RUN}/part-00000.parquet"))).metadata
    done = compact_run(store, RUN)
    assert (done.partitions, done.files_before, done.files_after) == (3, 3 * SHARDS, 3)
    assert done.rows == SHARDS * (PER_SEQ * SEQS_PER_SHARD + SEQS_PER_SHARD + 1)
    for table in ("residues", "sequences", "repeats"):
        files = sorted((store / table).glob(f"*/run={RUN}/*"))
        assert [f.name for f in files] == [COMPACTED_PART]
        if table == "residues":
            assert pq.read_schema(files[0]).metadata == meta_before
        assert len(list((store / table).glob(f"*/run={OTHER}/part-*.parquet"))) == 3  # other runs untouched
    with open_store(store) as st:
        assert st.sql(query).equals(before)
        assert st.named("run_summary").to_pylist() == flagged_before
    assert not any((store / ".compact").iterdir())
    again = compact_run(store, RUN)  # idempotent
    assert (again.partitions, again.files_after) == (0, 3)


def test_an_unfinished_run_is_not_compacted(store):
    run_json_path(store, RUN).unlink()
    with pytest.raises(StoreError, match="not finished"):
        compact_run(store, RUN)


COMPACT = "from plmscreen.screening.store.compact import compact_run; import sys; compact_run(sys.argv[1], sys.argv[2])"


def test_compaction_killed_for_real_loses_nothing_and_never_shows_duplicates(store):
    want = rows_seen(store)
    assert want["residues"][0] == want["residues"][1] == SHARDS * PER_SEQ * SEQS_PER_SHARD
    staging = store / ".compact" / RUN
    kills, mixed_states = 0, 0
    for delay in (None, 0.3, 0.8, 1.5, 2.5, 4.0):
        proc = subprocess.Popen([sys.executable, "-c", COMPACT, str(store), RUN])
        try:
            if delay is None:  # kill while the first partition is being merged outside the store
                deadline = time.monotonic() + 60
                while not any(staging.glob("*/*/.part-compacted*")) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
            else:
                time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        finally:
            proc.wait()
        seen = rows_seen(store)
        assert seen == want, f"after a kill at {delay}: {seen} != {want}"
        compacted = {t: (store / t / f"model={MODEL}" / f"run={RUN}" / COMPACTED_PART).exists()
                     for t in ("residues", "sequences", "repeats")}
        mixed_states += len(set(compacted.values())) > 1 or (not any(compacted.values()) and staging.exists())
        if all(compacted.values()):
            break
    assert kills >= 1 and mixed_states >= 1, "no kill landed in the middle of a compaction"
    done = compact_run(store, RUN)  # finishes what the killed ones left, cleans their staging
    assert rows_seen(store) == want
    assert all([f.name for f in (store / t).glob(f"*/run={RUN}/*")] == [COMPACTED_PART] for t in ("residues", "sequences", "repeats"))
    assert not staging.exists() and done.files_after == 3


def test_readers_during_a_compaction_see_every_row_exactly_once(store):
    want = rows_seen(store)
    proc = subprocess.Popen([sys.executable, "-c", COMPACT, str(store), RUN])
    reads = 0
    try:
        while proc.poll() is None:
            try:
                seen = rows_seen(store)
            except duckdb.IOException:
                continue  # a file globbed just before its partition was swapped out: an error, never wrong rows
            assert seen == want
            reads += 1
    finally:
        proc.wait()
    assert proc.returncode == 0 and reads >= 3
    assert rows_seen(store) == want
