"""Two flows of one run never compute the same shard: a claim is a lease held by a live process.

The processes here are real and separate (a cron run overlapping a manual rerun), on SQLite and on
PostgreSQL; every scoring call is counted, not rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import example_fasta, write_esm2_checkpoint
from postgres import fresh_database
from plmscreen.screening.input import read_fasta
from plmscreen.screening.run.plan import plan_shards
from plmscreen.screening.run.settings import ScreenSettings

SHARD_TOKENS = 20_000

# One screen driver: plan the run, then process every shard with a scorer that logs each call.
DRIVER = r"""
import json, sys
from plmscreen.screening.run.lifecycle import process_shard
from plmscreen.screening.run.plan import prepare_run
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.run.workers import ScorerCache
fasta, store, checkpoint, catalog_url, log, shard_tokens = sys.argv[1:7]
settings = ScreenSettings(model=checkpoint, device="cpu", shard_tokens=int(shard_tokens))
plan = prepare_run(fasta, store, settings, catalog_url=catalog_url or None)
scorer = ScorerCache().for_plan(plan)
real_score = scorer.score
def counted(sequences, *args, **kwargs):
    with open(log, "a") as fh:
        fh.write(json.dumps(sorted(sequences)) + "\n")
    return real_score(sequences, *args, **kwargs)
scorer.score = counted
print("ready", flush=True)
sys.stdin.readline()  # both drivers start scoring together
with plan.open_catalog() as catalog:
    for shard in plan.shards:
        process_shard(scorer, plan, shard, catalog)
"""


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    return example_fasta(tmp_path_factory.mktemp("input") / "proteins.fasta", 12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_esm2_checkpoint(tmp_path_factory.mktemp("weights") / "esm2_lease.pt", layers=1, embed_dim=16, heads=2)


def run_two_drivers(fasta, store, checkpoint, catalog_url, log) -> None:
    env = {**os.environ, "PLMSCREEN_CLAIM_LEASE_SECONDS": "30"}
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(fasta), str(store), str(checkpoint), catalog_url or "",
                               str(log), str(SHARD_TOKENS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_concurrent_screens_of_one_run_score_each_shard_once(backend, fasta, checkpoint, tmp_path):
    records = read_fasta(fasta).records
    shards = plan_shards(records, ScreenSettings(shard_tokens=SHARD_TOKENS).shard_budget)
    assert len(shards) >= 4, "the race needs several shards"
    log = tmp_path / "scoring-calls.jsonl"
    if backend == "sqlite":
        run_two_drivers(fasta, tmp_path / "store", checkpoint, None, log)
    else:
        with fresh_database() as url:
            run_two_drivers(fasta, tmp_path / "store", checkpoint, url, log)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    scored = sorted(seq for call in calls for seq in call)
    assert scored == sorted(r.sequence for r in records), "every sequence scored exactly once across both screens"
    assert len(calls) == len(shards)


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path, checkpoint, fasta):
    from plmscreen.screening.run.catalog import Catalog
    from plmscreen.screening.run.claims import claim_or_wait
    from plmscreen.screening.run.plan import prepare_run

    plan = prepare_run(fasta, tmp_path / "store", ScreenSettings(model=str(checkpoint), device="cpu", shard_tokens=SHARD_TOKENS))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    with Catalog.open(None, tmp_path / "store") as catalog:
        assert catalog.claim_shard(plan.run_id, 0, worker=f"{socket.gethostname()}:{dead.pid}")
        started = time.monotonic()
        assert claim_or_wait(catalog, plan.run_id, 0, lease=3600, poll=0.05) is True
        assert time.monotonic() - started < 5, "a holder known dead must not be waited for"
        assert catalog.shard(plan.run_id, 0).attempts == 2


def test_a_live_holder_elsewhere_is_waited_for_until_its_lease_runs_out(tmp_path, checkpoint, fasta):
    from plmscreen.screening.run.catalog import Catalog
    from plmscreen.screening.run.claims import claim_or_wait
    from plmscreen.screening.run.plan import prepare_run

    plan = prepare_run(fasta, tmp_path / "store", ScreenSettings(model=str(checkpoint), device="cpu", shard_tokens=SHARD_TOKENS))
    with Catalog.open(None, tmp_path / "store") as catalog:
        assert catalog.claim_shard(plan.run_id, 0, worker="another-node:1")
        assert catalog.claim_shard(plan.run_id, 1, worker="another-node:1")
        catalog.mark_shard_done(plan.run_id, 1, ["part-00001.parquet"])
        assert claim_or_wait(catalog, plan.run_id, 1, lease=3600, poll=0.05) is False  # done by its holder
        started = time.monotonic()
        assert claim_or_wait(catalog, plan.run_id, 0, lease=1.0, poll=0.05) is True
        waited = time.monotonic() - started
        assert 0.9 <= waited < 10, waited
        assert catalog.shard(plan.run_id, 0).worker.endswith(f":{os.getpid()}")
