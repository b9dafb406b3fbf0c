"""Where a screen's flow runs: the configured Prefect API or a temporary server, and a local Dask
cluster or an existing scheduler. Used by the CLI; the flow itself (``flows/screen.py``) only
submits shards to whatever task runner it is given.
"""

from __future__ import annotations

import contextlib


def scheduler_slots(address: str, timeout: float = 30.0) -> int:
    """Worker threads of the Dask cluster at ``address`` now (0 when none has joined yet): what the
    CLI sizes shards for before the flow starts. Workers that join later still get shards."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout) as client:
            return sum(client.nthreads().values())
    except OSError as exc:
        from plmscreen.screening.errors import ClusterError

        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def check_cluster_choice(workers: int | None = None, gpus: int | None = None, scheduler: str | None = None) -> None:
    """Conflicting choices are refused before anything starts."""
    chosen = [name for name, value in (("--workers", workers), ("--gpus", gpus), ("--scheduler", scheduler)) if value]
    if len(chosen) > 1:
        raise ValueError(f"choose one of {' and '.join(chosen)}: they name different clusters")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if gpus is not None and gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")


def quiet_orchestration_logs() -> None:
    """Prefect's own logs stay; Dask's per-connection INFO chatter does not (workers inherit this)."""
    import os

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


WORKER_PRELOAD = "plmscreen.flows.worker_preload"
# What Dask's nanny sets before it spawns a worker (distributed.nanny.pre-spawn-environ, less the
# malloc trim threshold): a worker forked from the forkserver inherits the forkserver's environment.
WORKER_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def start_worker_forkserver(env: dict[str, str] | None = None) -> None:
    """Start multiprocessing's forkserver now, importing Dask and the worker code (torch, Prefect's
    task engine, the scorer: ~5 CPU s on 2 cores) once, so that every local worker is forked from
    it in milliseconds instead of importing all of it again in a fresh interpreter (Dask's default,
    spawn). Returns at once: the imports run in the forkserver process while this one goes on.

    The forkserver inherits this process's environment plus ``env`` and the worker thread
    settings; a worker the nanny restarts after a crash is forked from it too."""
    import multiprocessing
    import os
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", WORKER_PRELOAD])
    extra = {**WORKER_THREAD_ENV, **(env or {})}
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TemporaryPrefectServer:
    """Prefect's own API server (``prefect.server.api.server:create_app`` under uvicorn, UI off),
    started in a subprocess for one screen, as Prefect's ``SubprocessASGIServer`` starts its
    temporary server, but without importing the server application into this process: that import
    costs ~2.4 CPU s on the screen's critical path, and the subprocess imports it anyway.

    ``launch`` returns at once (the server boots while the CLI reads the input); ``wait_ready``
    waits for its health endpoint. The subprocess inherits this process's environment, so
    PREFECT_HOME and every PREFECT_* setting given in the environment apply to it."""

    def __init__(self, port: int | None = None):
        import socket

        # With no port given, bind one now (the kernel picks it) and hand the bound socket to the
        # server: probing a free port and binding it again later let another process take it first.
        self.listener = None
        if port is None:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            port = self.listener.getsockname()[1]
        self.port = port
        self.process = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        import os
        import subprocess
        import sys

        print(f"Starting temporary Prefect server on http://127.0.0.1:{self.port}", file=sys.stderr, flush=True)
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)  # the server is the API, not a client of one
        module = [sys.executable, "-m", "plmscreen.flows.prefect_api_process"]
        if self.listener is None:  # a port given by the caller: the server binds it itself
            self.process = subprocess.Popen([*module, "--port", str(self.port)], env=env)
            return
        fd = self.listener.fileno()
        self.process = subprocess.Popen([*module, "--fd", str(fd)], env=env, pass_fds=(fd,))
        self.listener.close()  # the server holds its own copy of the socket now

    def wait_ready(self, timeout: float) -> None:
        import time
        import urllib.error
        import urllib.request

        from plmscreen.screening.errors import ClusterError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"the temporary Prefect server on port {self.port} exited with code "
                                   f"{self.process.returncode} before it answered (its errors are above); set "
                                   f"PREFECT_API_URL to use a running Prefect server instead")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise ClusterError(f"the temporary Prefect server on port {self.port} did not answer within {timeout:.0f} s "
                           f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        import subprocess

        if self.listener is not None:
            self.listener.close()
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def startup_timeout() -> float:
    import os

    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))


def configured_api_url() -> str | None:
    """The Prefect API URL that Prefect's settings (environment, profile, .env, prefect.toml,
    pyproject.toml) name, if any. Importing Prefect's settings costs ~1.2 s, a fifth of a small
    in-process screen, so when none of the files Prefect could read it from exists (and the
    environment does not name it), the answer is None without importing Prefect."""
    import os
    from pathlib import Path

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()

    def mentions(path: Path, text: str) -> bool:  # a project's own .env or pyproject.toml need not be Prefect's
        try:
            return path.is_file() and text in path.read_text(errors="replace")
        except OSError:
            return True  # unreadable here: let Prefect decide
    maybe = (os.environ.get("PREFECT_PROFILES_PATH") or Path("prefect.toml").is_file()
             or (home / "profiles.toml").is_file() or mentions(Path(".env"), "PREFECT_")
             or mentions(Path("pyproject.toml"), "tool.prefect"))
    if not maybe:
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


class ScreenStartup:
    """What a default screen needs before its flow can run and that does not depend on the input:
    the temporary Prefect server (when no Prefect API is configured) and, for a local CPU cluster,
    a forkserver that imports the worker code once. The CLI begins both first thing, so they boot
    while it reads and plans the input (the CPU-bound part of a small screen's start-up).

    The server is launched before Prefect is even imported, when the environment names no
    PREFECT_API_URL; if a Prefect profile turns out to configure one, it is stopped again and the
    configured API is used (``resolve_api``)."""

    def __init__(self, server: TemporaryPrefectServer | None):
        self.server = server

    @classmethod
    def begin(cls, *, local_cpu_cluster: bool) -> "ScreenStartup":
        import os

        quiet_orchestration_logs()  # before the server and the forkserver inherit the environment
        server = None
        if not os.environ.get("PREFECT_API_URL"):
            server = TemporaryPrefectServer()
            server.launch()
        if local_cpu_cluster:
            # The forkserver inherits this environment: workers forked from it know the API from the start.
            env = {"PREFECT_API_URL": server.api_url} if server else {}
            start_worker_forkserver(env)
        return cls(server)

    def resolve_api(self) -> str:
        """The API the flow reports to: the configured one, else the temporary server (waited for)."""
        import os

        # The environment first (what begin() saw), then Prefect's settings: a profile, .env, prefect.toml.
        configured = os.environ.get("PREFECT_API_URL") or configured_api_url()
        if self.server is not None and configured:  # a profile names an API: use it, not ours
            self.stop()
        if self.server is None:
            return configured
        self.server.wait_ready(startup_timeout())
        return self.server.api_url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextlib.contextmanager
def prefect_api_and_runner(runner, startup: ScreenStartup | None = None):
    with prefect_api(startup):
        yield runner


@contextlib.contextmanager
def prefect_api(startup: ScreenStartup | None = None):
    """Use the configured Prefect server, or a temporary one for this screen (``startup``'s, or
    one started now)."""
    startup = startup or ScreenStartup.begin(local_cpu_cluster=False)
    try:
        with reporting_to(startup) as url:
            yield url
    finally:
        startup.stop()


@contextlib.contextmanager
def reporting_to(startup: ScreenStartup):
    """This process reports to ``startup``'s API: a configured one as it is, the temporary server
    through ``temporary_api`` (waited for first)."""
    url = startup.resolve_api()
    if startup.server is None:
        yield url
        return
    with temporary_api(url):
        yield url


@contextlib.contextmanager
def temporary_api(api_url: str):
    """Point this process (and the workers it starts after this) at a started temporary server, and
    send the flow's queued log records before it stops, a failed flow's too: otherwise the log
    worker retries them after the server is gone and prints 'Error logging to API'."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            try:
                yield api_url
            finally:
                flush_api_logs()
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def local_cluster_and_prefect_api(plan, startup: ScreenStartup | None = None):
    """Start the planned local Dask cluster while the Prefect API (``startup``'s temporary server,
    or the configured one) comes up; yield a task runner on that cluster.

    Workers are forked from ``startup``'s forkserver, which imported torch and the scoring code
    while the CLI read the input (flows/worker_preload.py); the server boots meanwhile too."""
    from prefect_dask import DaskTaskRunner

    from plmscreen.flows.clusters import start_planned_cluster

    startup = startup or ScreenStartup.begin(local_cpu_cluster=not plan.gpus)
    try:
        server = startup.server
        env = {"PREFECT_API_URL": server.api_url} if server else {}
        with start_planned_cluster(plan, env=env) as cluster, reporting_to(startup):
            yield DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        startup.stop()


def flush_api_logs() -> None:
    """Send the flow's queued log records while the temporary server still runs."""
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)
    except Exception:  # a failed flush only loses log lines the terminal already showed
        pass
