"""A default screen's start-up: the CLI starts without torch or Prefect, the temporary Prefect
server is Prefect's own app in a subprocess, and local CPU workers are forked from a forkserver
that imported their code once (restarted workers too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from plmscreen.flows.orchestration import ScreenStartup, TemporaryPrefectServer


def run_python(code: str, timeout: float = 300, **env) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_cli_starts_without_torch_prefect_or_dask():
    # The temporary server and the forkserver are launched right after the options are read; what
    # the CLI imported by then delays both (torch alone is ~2 s).
    out = run_python("""
        import sys
        import plmscreen.cli.main
        import plmscreen.flows.orchestration
        print([m for m in ("torch", "prefect", "distributed", "scipy") if m in sys.modules])
    """)
    assert out.strip() == "[]"


def test_temporary_server_answers_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    server = TemporaryPrefectServer()
    server.launch()
    try:
        server.wait_ready(180)
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) is True
        with urllib.request.urlopen(f"{server.api_url}/admin/version", timeout=10) as response:
            import prefect

            assert json.loads(response.read()) == prefect.__version__  # Prefect's own server app
        process = server.process
    finally:
        server.stop()
    assert process.poll() is not None and server.process is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.api_url}/health", timeout=5)


def test_the_servers_port_is_held_from_the_start_so_no_other_process_can_take_it(tmp_path, monkeypatch):
    # CI once lost a screen because a port probed free was taken before uvicorn bound it
    # ("address already in use"): the port must be held from construction until the server owns it.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import errno
    import socket

    server = TemporaryPrefectServer()
    try:
        for when in ("before launch", "after launch"):
            with socket.socket() as rival, pytest.raises(OSError) as taken:
                rival.bind(("127.0.0.1", server.port))
            assert taken.value.errno == errno.EADDRINUSE, when
            if when == "before launch":
                server.launch()
        server.wait_ready(180)
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
            assert response.status == 200
        # the server subprocess, not this process, holds the socket now
        assert server.listener.fileno() == -1
    finally:
        server.stop()


def test_a_server_that_exits_is_reported_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    import socket

    from plmscreen.screening.errors import ClusterError

    with socket.socket() as taken:  # the port is in use: uvicorn exits at once
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = TemporaryPrefectServer(port=taken.getsockname()[1])
        server.launch()
        with pytest.raises(ClusterError, match="temporary Prefect server on port .* exited"):
            server.wait_ready(120)
    server.stop()


def test_a_configured_api_starts_no_server(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    startup = ScreenStartup.begin(local_cpu_cluster=False)
    try:
        assert startup.server is None
        assert startup.resolve_api() == "http://127.0.0.1:9/api"
    finally:
        startup.stop()


def test_local_workers_are_forked_with_their_code_imported_and_restarted_the_same_way(tmp_path):
    # In a fresh process: multiprocessing's forkserver is one per process.
    out = run_python("""
        import json, os, signal, sys, time
        import psutil
        from plmscreen.flows.orchestration import start_worker_forkserver
        from plmscreen.flows.clusters import start_planned_cluster
        from plmscreen.flows.resources import ClusterPlan

        start_worker_forkserver({"PLMSCREEN_STARTUP_MARK": "from-the-forkserver"})
        plan = ClusterPlan(workers=2, threads_per_worker=1, shard_tokens=1, n_shards=2)

        def probe():
            import os, sys
            return {"ppid": os.getppid(), "pid": os.getpid(),
                    "imported": [m for m in ("torch", "scipy.stats", "prefect.task_engine", "plmscreen.flows.screen")
                                 if m in sys.modules],
                    "mark": os.environ.get("PLMSCREEN_STARTUP_MARK"), "api": os.environ.get("PREFECT_API_URL"),
                    "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "omp": os.environ.get("OMP_NUM_THREADS")}

        from distributed import Client
        with start_planned_cluster(plan, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}) as cluster:
            with Client(cluster.scheduler_address) as client:
                client.wait_for_workers(2, timeout=120)
                before = list(client.run(probe).values())
                victim = before[0]["pid"]
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        after = list(client.run(probe).values())
                    except Exception:
                        after = []
                    if len(after) == 2 and victim not in {w["pid"] for w in after}:
                        break
                    time.sleep(0.5)
        parents = {w["ppid"]: " ".join(psutil.Process(w["ppid"]).cmdline()) for w in before + after}
        print(json.dumps({"before": before, "after": after, "parents": parents}))
    """)
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["after"]) == 2, "the nanny restarted the killed worker"
    assert {w["pid"] for w in result["before"]} != {w["pid"] for w in result["after"]}
    for worker in result["before"] + result["after"]:
        assert "multiprocessing.forkserver" in result["parents"][str(worker["ppid"])], worker
        assert worker["imported"] == ["torch", "scipy.stats", "prefect.task_engine", "plmscreen.flows.screen"]
        assert worker["mark"] == "from-the-forkserver"
        assert worker["api"] == "http://127.0.0.1:9/api"  # the nanny's env reaches forked workers too
        assert worker["malloc_trim"] is None  # glibc's adaptive thresholds kept (flows/clusters.py)
        assert worker["omp"] == "1"
    assert len({w["ppid"] for w in result["before"] + result["after"]}) == 1, "one forkserver for all"
