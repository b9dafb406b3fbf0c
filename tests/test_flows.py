"""The screen-proteome flow on real Prefect + Dask, with real faults.

(a) kill -9 a Dask worker mid-screen; (b) kill -9 the flow process, then rerun the same command;
(c) a shard that fails deterministically. Each ends with every input sequence exactly once and the
same numbers as an uninterrupted in-process screen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import example_fasta
from plmscreen.screening.input import read_fasta
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.plan import plan_shards
from plmscreen.screening.run.settings import ScreenSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SHARD_TOKENS = 80_000  # the 32 example proteins make ten shards of a few seconds each
N_PROTEINS = 32


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    """Real proteins from the committed example set."""
    return example_fasta(tmp_path_factory.mktemp("input") / "proteins.fasta", N_PROTEINS)


@pytest.fixture(scope="module")
def n_shards(fasta) -> int:
    count = len(plan_shards(read_fasta(fasta).records, SHARD_TOKENS))
    assert count >= 6, "the fault tests need several shards"
    return count


@pytest.fixture(scope="module")
def reference(fasta, tiny_checkpoint, tmp_path_factory):
    """An uninterrupted in-process screen: the numbers every faulty run must reproduce."""
    store = tmp_path_factory.mktemp("reference")
    run_id = run_screen(fasta, store, ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=SHARD_TOKENS)).run_id
    return {**read_store(store), "store": store, "run_id": run_id}


def read_store(store: Path) -> dict[str, dict]:
    files = sorted(store.glob("residues/model=*/run=*/part-*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    sequences = [row for f in sorted(store.glob("sequences/model=*/run=*/part-*.parquet")) for row in pq.read_table(f).to_pylist()]
    return {"residues": rows, "sequences": sequences}


def assert_same_screen(store: Path, reference: dict, fasta: Path) -> None:
    got = read_store(store)
    ids = [r.seq_id for r in read_fasta(fasta).records]
    assert sorted(row["seq_id"] for row in got["sequences"]) == sorted(ids), "every input exactly once"
    keys = [(row["seq_id"], row["pos"]) for row in got["residues"]]
    assert len(keys) == len(set(keys)) == len(reference["residues"])
    ref = {(r["seq_id"], r["pos"]): r for r in reference["residues"]}
    for row in got["residues"]:
        want = ref[(row["seq_id"], row["pos"])]
        assert row["logp_masked"] == pytest.approx(want["logp_masked"], abs=1e-5)
        assert row["logp_unmasked"] == pytest.approx(want["logp_unmasked"], abs=1e-5)
        assert row["partner_pos"] == want["partner_pos"]
        if want["logp_ablated"] is None:
            assert row["logp_ablated"] is None
        else:
            assert row["logp_ablated"] == pytest.approx(want["logp_ablated"], abs=1e-5)
    ref_seq = {r["seq_id"]: r for r in reference["sequences"]}
    for row in got["sequences"]:
        assert row["pppl"] == pytest.approx(ref_seq[row["seq_id"]]["pppl"], rel=1e-6)
        assert row["inflation_factor"] == pytest.approx(ref_seq[row["seq_id"]]["inflation_factor"], rel=1e-6)
        assert row["effect_flagged"] == ref_seq[row["seq_id"]]["effect_flagged"]
        want_p = ref_seq[row["seq_id"]]["partner_pvalue"]
        assert row["partner_pvalue"] == (None if want_p is None else pytest.approx(want_p, rel=1e-6))


def prefect_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PLMSCREEN_OFFLINE="1",
    )
    return env


def start_screen(fasta, store, checkpoint, tmp, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out", str(store), "--model", str(checkpoint),
           "--device", "cpu", "--shard-tokens", str(SHARD_TOKENS), *extra]
    return subprocess.Popen(cmd, env=prefect_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def shard_states(store: Path) -> dict[str, int]:
    db = store / "catalog.sqlite"
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("select status, count(*) from shards group by status").fetchall())
    except sqlite3.Error:
        return {}


def wait_for(predicate, timeout: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"screen exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def dask_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The worker processes of the screen's local cluster: forked from its forkserver (the default
    CPU cluster), or spawned by the nannies."""
    out = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            parent = child.parent()
            if "spawn_main" in " ".join(child.cmdline()) or (
                    parent is not None and "multiprocessing.forkserver" in " ".join(parent.cmdline())):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def shard_status(store: Path, shard: int) -> str | None:
    with sqlite3.connect(f"file:{store / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5) as con:
        row = con.execute("select status from shards where shard_index = ?", (shard,)).fetchone()
    return row[0] if row else None


def busy_worker(store: Path, workers: list[psutil.Process]) -> tuple[psutil.Process, int] | None:
    """A worker process that holds a running shard's claim, and that shard, if any."""
    by_pid = {w.pid: w for w in workers}
    try:
        with sqlite3.connect(f"file:{store / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute("select shard_index, worker from shards where status = 'running'").fetchall()
    except sqlite3.Error:
        return None
    for shard, worker in rows:
        pid = int(worker.rsplit(":", 1)[1]) if worker else None
        if pid in by_pid:
            return by_pid[pid], shard
    return None


def kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_killed_worker_loses_and_duplicates_nothing(fasta, n_shards, reference, tiny_checkpoint, tmp_path):
    store = tmp_path / "store"
    proc = start_screen(fasta, store, tiny_checkpoint, tmp_path, "--workers", "2")
    try:
        wait_for(lambda: shard_states(store).get("done", 0) >= 1 and len(dask_workers(proc)) == 2, 400, proc,
                 "the first shard and two workers")
        # Kill the worker that holds a running shard's claim (the catalog names its pid): mid-scoring.
        wait_for(lambda: busy_worker(store, dask_workers(proc)) is not None, 300, proc, "a running shard")
        victim, victim_shard = busy_worker(store, dask_workers(proc))
        victim.send_signal(signal.SIGKILL)
        # (A shard that finished in the instant between the read and the kill is not a retry case.)
        killed_mid_shard = shard_status(store, victim_shard) == "running"
        output, _ = proc.communicate(timeout=900)
    finally:
        kill_session(proc)
    assert proc.returncode == 0, output[-4000:]
    assert f"Screened {N_PROTEINS} sequences" in output and "0 rejected" in output
    assert_same_screen(store, reference, fasta)
    with sqlite3.connect(store / "catalog.sqlite") as con:
        states = dict(con.execute("select status, count(*) from shards group by status").fetchall())
        attempts = con.execute("select sum(attempts), count(*) from shards").fetchone()
    assert states == {"done": n_shards}
    assert attempts[0] > attempts[1], "the shard on the killed worker was retried"
    with sqlite3.connect(store / "catalog.sqlite") as con:
        retried, = con.execute("select attempts from shards where shard_index = ?", (victim_shard,)).fetchone()
    assert retried >= 2 or not killed_mid_shard, f"shard {victim_shard} was running on the killed worker; it must have been claimed again"


def test_killed_flow_resumes_and_redoes_only_unfinished_shards(fasta, n_shards, reference, tiny_checkpoint, tmp_path):
    store = tmp_path / "store"
    proc = start_screen(fasta, store, tiny_checkpoint, tmp_path, "--workers", "1")
    try:
        wait_for(lambda: shard_states(store).get("done", 0) >= 2, 400, proc, "two shards done")
        proc.send_signal(signal.SIGKILL)  # the flow process itself
        proc.wait(timeout=30)
    finally:
        kill_session(proc)  # its orphaned workers, so the rerun starts clean
    states = shard_states(store)
    done_before = states.get("done", 0)
    assert 2 <= done_before < n_shards, states
    before = {p: p.stat().st_mtime_ns for p in store.glob("sequences/model=*/run=*/part-*.parquet")}

    rerun = start_screen(fasta, store, tiny_checkpoint, tmp_path, "--workers", "1")
    try:
        output, _ = rerun.communicate(timeout=900)
    finally:
        kill_session(rerun)
    assert rerun.returncode == 0, output[-4000:]
    assert f"{done_before} of {n_shards} shards already done" in output
    assert "Error logging to API" not in output, "flow logs must reach the temporary server before it stops"
    assert_same_screen(store, reference, fasta)
    after = {p: p.stat().st_mtime_ns for p in store.glob("sequences/model=*/run=*/part-*.parquet")}
    assert all(after[p] == t for p, t in before.items()), "finished shards were not redone"
    assert shard_states(store) == {"done": n_shards}


def test_deterministic_shard_failure_is_retried_a_bounded_number_of_times(fasta, n_shards, reference, tiny_checkpoint, tmp_path, monkeypatch):
    """Threads-only Dask workers share this process, so the fault can be injected with monkeypatch."""
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    import plmscreen.screening.run.lifecycle as screen_module
    from plmscreen.flows.screen import SHARD_RETRIES, screen_proteome
    from plmscreen.screening.run.catalog import Catalog

    bad_id = read_fasta(fasta).records[11].seq_id
    real_score_shard = screen_module.score_shard

    def broken_on_one_shard(scorer, records, *args, **kwargs):
        if any(r.seq_id == bad_id for r in records):
            raise RuntimeError("corrupt weights on this worker")
        return real_score_shard(scorer, records, *args, **kwargs)

    monkeypatch.setattr(screen_module, "score_shard", broken_on_one_shard)
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                            cluster_kwargs={"n_workers": 2, "processes": False, "threads_per_worker": 1, "dashboard_address": None})
    store = tmp_path / "store"
    params = dict(input=str(fasta), store=str(store),
                  settings={"model": str(tiny_checkpoint), "device": "cpu", "shard_tokens": SHARD_TOKENS})
    with prefect_test_harness(server_startup_timeout=120):
        summary = screen_proteome.with_options(task_runner=runner)(**params)
        with Catalog.open(None, store) as catalog:
            shards = {s.index: s for s in catalog.shards(summary["run_id"])}
            status = catalog.run_status(summary["run_id"]).status
        bad = [i for i, s in shards.items() if s.status != "done"]
        assert summary["failed_shards"] == bad and len(bad) == 1
        assert shards[bad[0]].status == "failed" and shards[bad[0]].attempts == SHARD_RETRIES + 1
        assert "corrupt weights" in shards[bad[0]].error
        assert all(s.attempts == 1 for i, s in shards.items() if i != bad[0]), "other shards ran once"
        assert status == "failed"
        # The Prefect UI shows the failed shard as a failed task run, with the error.
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            shard_runs = [t for t in client.read_task_runs() if t.name == f"{summary['run_id']}/shard-{bad[0]}"]
        assert shard_runs and all(t.state.is_failed() for t in shard_runs)
        assert "corrupt weights on this worker" in shard_runs[-1].state.message
        assert bad_id not in {r["seq_id"] for r in read_store(store)["sequences"]}
        assert len(read_store(store)["sequences"]) == N_PROTEINS - (shards[bad[0]].last - shards[bad[0]].first + 1)
        # plmscreen status reports the failed shard and why.
        from typer.testing import CliRunner

        from plmscreen.cli.main import app

        shown = CliRunner().invoke(app, ["status", str(store)])
        assert shown.exit_code == 0, shown.output
        assert f"{summary['run_id']}   failed" in shown.output
        assert f"shard {bad[0]:>5}" in shown.output and "corrupt weights on this worker" in shown.output

        monkeypatch.setattr(screen_module, "score_shard", real_score_shard)  # the fault is fixed
        again = screen_proteome.with_options(task_runner=runner)(**params)
    assert again["failed_shards"] == [] and again["n_shards_skipped"] == n_shards - 1
    assert_same_screen(store, reference, fasta)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_flows_of_one_run_compute_each_shard_once(backend, fasta, n_shards, reference, tiny_checkpoint, tmp_path):
    """A cron run overlapping a manual rerun: both flows finish, and no shard is claimed (so scored)
    twice: a claim is only ever won by the one process that then scores the shard."""
    from postgres import fresh_database
    from plmscreen.screening.run.catalog import Catalog

    store = tmp_path / "store"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_database()) if backend == "postgresql" else None
        extra = ("--catalog", url) if url else ()
        homes = [tmp_path / f"flow{k}" for k in range(2)]  # each flow with its own temporary Prefect server
        for home in homes:
            (home / "prefect-home").mkdir(parents=True)
        procs = [start_screen(fasta, store, tiny_checkpoint, home, "--workers", "1", *extra) for home in homes]
        try:
            outputs = [proc.communicate(timeout=900)[0] for proc in procs]
        finally:
            for proc in procs:
                kill_session(proc)
        for proc, output in zip(procs, outputs):
            assert proc.returncode == 0, output[-4000:]
            assert f"Screened {N_PROTEINS} sequences" in output
        with Catalog.open(url, store) as catalog:
            (run,) = catalog.list_runs()
            shards = catalog.shards(run.run_id)
    assert len(shards) == n_shards
    assert [s.attempts for s in shards] == [1] * n_shards, "a shard was computed by both flows"
    assert_same_screen(store, reference, fasta)


def test_gpu_deployment_runs_one_worker_per_visible_gpu(fasta, n_shards, reference, tiny_checkpoint, tmp_path, monkeypatch):
    """The GPU deployments' entry point (flows/gpu.py, deploy/prefect.yaml) chooses its cluster by
    itself: one worker per visible GPU. Two GPUs are simulated for the flow process; the workers are
    real processes, each pinned to its own device, scoring on the CPU."""
    import torch
    from prefect.testing.utilities import prefect_test_harness

    from plmscreen.flows.gpu import screen_proteome_gpu
    from plmscreen.screening.run.catalog import Catalog

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    store = tmp_path / "store"
    with prefect_test_harness(server_startup_timeout=120):
        summary = screen_proteome_gpu(input=str(fasta), store=str(store),
                                      settings={"model": str(tiny_checkpoint), "device": "cpu", "shard_tokens": SHARD_TOKENS})
    assert summary["failed_shards"] == []
    with Catalog.open(None, store) as catalog:
        holders = {s.worker for s in catalog.shards(summary["run_id"])}
    assert len(holders) == 2, f"shards ran on {holders}: one worker per simulated GPU expected"
    assert_same_screen(store, reference, fasta)


def test_a_flow_rescreen_with_another_flag_rule_copies_every_sequence(fasta, reference, tiny_checkpoint, tmp_path):
    """Through Prefect and Dask, a rescreen that only changes the flag rule scores nothing: every
    row is copied from the earlier run in the store, and the flags follow the new rule."""
    import shutil

    from plmscreen.screening.score.metrics import FlagRule

    store = tmp_path / "store"
    shutil.copytree(reference["store"], store)
    proc = start_screen(fasta, store, tiny_checkpoint, tmp_path, "--workers", "1", "--min-inflation-factor", "1.01")
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        kill_session(proc)
    assert proc.returncode == 0, output[-4000:]
    assert f"Sequences: 0 scored, {N_PROTEINS} reused from earlier runs, 0 copied" in output, output[-2000:]
    rule = FlagRule(min_inflation_factor=1.01)
    ref = {r["seq_id"]: r for r in reference["sequences"]}
    runs = {p.name for p in store.glob("sequences/model=*/run=*")}
    assert len(runs) == 2
    new_run = next(iter(runs - {f"run={reference['run_id']}"}))
    rows = [row for p in sorted(store.glob(f"sequences/model=*/{new_run}/part-*.parquet")) for row in pq.read_table(p).to_pylist()]
    assert sorted(r["seq_id"] for r in rows) == sorted(ref)
    for row in rows:
        want = ref[row["seq_id"]]
        assert row["pppl"] == want["pppl"] and row["inflation_factor"] == want["inflation_factor"]
        assert row["effect_flagged"] == rule.effect_flags(want["inflation_factor"], want["repeat_fraction"])
        assert row["partner_pvalue"] == want["partner_pvalue"]
        assert row["reused_from_run"] == reference["run_id"]


def test_the_flow_keeps_a_bounded_window_of_shard_tasks_in_flight(fasta, n_shards, reference, tiny_checkpoint, tmp_path, monkeypatch):
    """The flow submits a window of shards and refills it as they finish, instead of one future per
    shard at once: every as_completed call sees at most the window, and nothing is lost."""
    from prefect.testing.utilities import prefect_test_harness
    from prefect_dask import DaskTaskRunner

    import plmscreen.flows.screen as flow_module

    window, seen = 2, []
    real_as_completed, real_in_flight = flow_module.as_completed, flow_module.shards_in_flight
    assert real_in_flight(0) == flow_module.MIN_IN_FLIGHT
    assert real_in_flight(64) == 64 * flow_module.IN_FLIGHT_PER_SLOT

    def watched(futures, *args, **kwargs):
        seen.append(len(futures))
        return real_as_completed(futures, *args, **kwargs)

    monkeypatch.setattr(flow_module, "shards_in_flight", lambda slots: window)
    monkeypatch.setattr(flow_module, "as_completed", watched)
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                            cluster_kwargs={"n_workers": 2, "processes": False, "threads_per_worker": 1, "dashboard_address": None})
    store = tmp_path / "store"
    with prefect_test_harness(server_startup_timeout=120):
        summary = flow_module.screen_proteome.with_options(task_runner=runner)(
            input=str(fasta), store=str(store), settings={"model": str(tiny_checkpoint), "device": "cpu", "shard_tokens": SHARD_TOKENS})
    assert summary["failed_shards"] == [] and summary["n_shards"] == n_shards
    assert len(seen) == n_shards and max(seen) == window and seen[-1] == 1
    assert_same_screen(store, reference, fasta)
