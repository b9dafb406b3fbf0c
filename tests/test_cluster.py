"""A Dask cluster started the way Dask users start one: `dask scheduler` and `dask worker`
processes, each in its own working directory as if on its own node, the catalog on PostgreSQL and
the store on a path every worker sees. Workers are killed for real.

- kill -9 a whole worker (nanny and process) mid-shard, start a replacement: the screen completes
  with every sequence exactly once; a worker that joins late gets work; each worker loads (and
  verifies) the model once.
- kill -9 the scheduler mid-run: the flow fails with a clear error; a rerun against a new
  scheduler redoes only the unfinished shards.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text

from conftest import example_fasta
from postgres import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SHARD_TOKENS = 60_000
N_PROTEINS = 24
DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """A process in its own session and working directory: killing it kills what it started."""

    def __init__(self, cmd: list[str], workdir: Path, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "log.txt"
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def pids(self) -> set[int]:
        try:
            root = psutil.Process(self.proc.pid)
            return {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def worker_env() -> dict:
    return {**os.environ, "DASK_LOGGING__PLMSCREEN": "info", "PLMSCREEN_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start_scheduler(tmp: Path, port: int) -> Node:
    node = Node([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], tmp / "scheduler")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return node
        time.sleep(0.2)
    pytest.fail(f"dask scheduler did not listen on {port}: {node.log.read_text()[-2000:]}")


def start_worker(tmp: Path, address: str, name: str) -> Node:
    workdir = tmp / name
    return Node([DASK, "worker", address, "--nthreads", "1", "--name", name, "--local-directory", str(workdir / "dask"),
                 "--no-dashboard"], workdir, worker_env())


def start_screen(fasta: Path, store: Path, checkpoint: Path, address: str, catalog: str, tmp: Path) -> subprocess.Popen:
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PLMSCREEN_OFFLINE="1")
    cmd = [sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out", str(store), "--model", str(checkpoint),
           "--device", "cpu", "--shard-tokens", str(SHARD_TOKENS), "--scheduler", address, "--catalog", catalog,
           "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def shard_rows(catalog: str) -> list[tuple[int, str, int, str | None]]:
    engine = create_engine(catalog)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT shard_index, status, attempts, worker FROM shards ORDER BY shard_index"))]
    except Exception:  # noqa: BLE001 - not created yet
        return []
    finally:
        engine.dispose()


def wait_for(predicate, timeout: float, what: str, screen: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if screen is not None and screen.poll() is not None:
            pytest.fail(f"screen exited ({screen.returncode}) before {what}:\n{screen.stdout.read()[-4000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def loads_logged(node: Node) -> int:
    # "worker NAME loaded MODEL (FAMILY, sha256 HEX, verified) on DEVICE" (screening/run/workers.py)
    return len(re.findall(r"worker \S+ loaded .* \([\w.-]+, sha256 [0-9a-f]{64}, verified\)", node.log.read_text()))


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    return example_fasta(tmp_path_factory.mktemp("input") / "proteins.fasta", N_PROTEINS)


@pytest.fixture(scope="module")
def reference(fasta, tiny_checkpoint, tmp_path_factory):
    from plmscreen.screening.run.lifecycle import run_screen
    from plmscreen.screening.run.settings import ScreenSettings

    store = tmp_path_factory.mktemp("reference")
    run_screen(fasta, store, ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=SHARD_TOKENS))
    return read_sequences(store)


def read_sequences(store: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = [r for f in sorted(store.glob("sequences/model=*/run=*/part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    by_id = {r["seq_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a sequence appears twice"
    return by_id


def assert_same_as_reference(store: Path, reference: dict) -> None:
    got = read_sequences(store)
    assert got.keys() == reference.keys()
    for seq_id, row in got.items():
        assert row["pppl"] == pytest.approx(reference[seq_id]["pppl"], rel=1e-6)
        assert row["effect_flagged"] == reference[seq_id]["effect_flagged"]
        want_p = reference[seq_id]["partner_pvalue"]
        assert row["partner_pvalue"] == (None if want_p is None else pytest.approx(want_p, rel=1e-6))


def test_killed_worker_node_is_replaced_and_late_workers_get_work(fasta, reference, tiny_checkpoint, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    nodes: list[Node] = []
    with fresh_database() as catalog:
        try:
            nodes.append(start_scheduler(tmp_path, port))
            first = start_worker(tmp_path, address, "node-a")
            nodes.append(first)
            screen = start_screen(fasta, tmp_path / "store", tiny_checkpoint, address, catalog, tmp_path / "flow")
            # A worker that joins after the screen started.
            wait_for(lambda: any(s == "done" for _, s, _, _ in shard_rows(catalog)), 600, "a first shard", screen)
            late = start_worker(tmp_path, address, "node-b")
            nodes.append(late)

            def victim_shard():
                held = {int(w.rsplit(":", 1)[1]): i for i, s, _, w in shard_rows(catalog) if s == "running" and w}
                for pid, shard in held.items():
                    if pid in first.pids():
                        return shard
                return None

            shard = wait_for(victim_shard, 600, "a shard running on node-a", screen)
            first.kill()  # the whole node: nanny and worker process
            nodes.append(start_worker(tmp_path, address, "node-c"))  # its replacement
            output, _ = screen.communicate(timeout=1200)
            late_pids = {str(p) for p in late.pids()}  # before the nodes are killed below
        finally:
            for node in reversed(nodes):
                node.kill()
        rows = shard_rows(catalog)
    assert screen.returncode == 0, output[-4000:]
    assert f"Screened {N_PROTEINS} sequences" in output
    assert_same_as_reference(tmp_path / "store", reference)
    assert all(status == "done" for _, status, _, _ in rows)
    attempts = {i: a for i, _, a, _ in rows}
    assert attempts[shard] >= 2, "the killed node's shard was claimed again"
    holders = {w.rsplit(":", 1)[1] for _, _, _, w in rows}
    assert holders & late_pids and loads_logged(late) == 1, "the late worker got no work"
    for node in nodes[1:]:
        assert loads_logged(node) <= 1, f"{node.log} loaded the model more than once"


def start_cluster(tmp: Path, n_workers: int) -> tuple[str, Node, list[Node]]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = start_scheduler(tmp, port)
    return address, scheduler, [start_worker(tmp, address, f"node-{k}") for k in range(n_workers)]


def test_killed_scheduler_fails_the_flow_and_a_rerun_resumes(fasta, reference, tiny_checkpoint, tmp_path):
    with fresh_database() as catalog:
        address, scheduler, workers = start_cluster(tmp_path / "first", 2)
        try:
            screen = start_screen(fasta, tmp_path / "store", tiny_checkpoint, address, catalog, tmp_path / "flow1")
            wait_for(lambda: sum(s == "done" for _, s, _, _ in shard_rows(catalog)) >= 2, 600, "two shards done", screen)
            scheduler.kill()
            output, _ = screen.communicate(timeout=600)
        finally:
            for node in [*workers, scheduler]:
                node.kill()
        assert screen.returncode == 5, output[-4000:]
        assert re.search(r"plmscreen: error: lost the Dask scheduler after \d+ of \d+ shards", output), output[-4000:]
        assert "rerun the same command against a live scheduler to resume" in output
        assert "Error logging to API" not in output
        done_before = [i for i, s, _, _ in shard_rows(catalog) if s == "done"]
        n_shards = len(shard_rows(catalog))
        assert 2 <= len(done_before) < n_shards
        files = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").glob("sequences/model=*/run=*/part-*.parquet")}

        address, scheduler, workers = start_cluster(tmp_path / "second", 2)
        try:
            rerun = start_screen(fasta, tmp_path / "store", tiny_checkpoint, address, catalog, tmp_path / "flow2")
            output, _ = rerun.communicate(timeout=1200)
        finally:
            for node in [*workers, scheduler]:
                node.kill()
        assert rerun.returncode == 0, output[-4000:]
        assert f"{len(done_before)} of {n_shards} shards already done" in output
        assert all(p.stat().st_mtime_ns == t for p, t in files.items()), "finished shards were redone"
        assert_same_as_reference(tmp_path / "store", reference)
