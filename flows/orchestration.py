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


def quiet_orchestration_logs() -> None:
    """Prefect's own logs stay; Dask's per-connection INFO chatter does not (workers inherit this)."""
    import os

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@contextlib.contextmanager
def prefect_api_and_runner(runner):
    with prefect_api():
        yield runner


@contextlib.contextmanager
def prefect_api():
    """Use the configured Prefect server, or start a temporary one for this screen.

    The temporary server's URL goes into the environment before the Dask cluster starts, so every
    worker, including one the nanny restarts after a crash, reports to the same server."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        start_prefect_server(server)
        with temporary_api(server) as url:
            yield url
    finally:
        server.stop()


def start_prefect_server(server) -> None:
    import os

    server.start(timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))


@contextlib.contextmanager
def temporary_api(server):
    """Point this process (and the workers it starts after this) at a started temporary server, and
    send the flow's queued log records before it stops, a failed flow's too: otherwise the log
    worker retries them after the server is gone and prints 'Error logging to API'."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                flush_api_logs()
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def local_cluster_and_prefect_api(plan):
    """Start the planned local Dask cluster and, when no Prefect API is configured, a temporary
    Prefect server at the same time; yield a task runner on that cluster.

    The server's port is chosen first so that every worker (restarted ones too, through the nanny's
    env) knows its URL from the start; workers import torch and the scoring code while the server
    boots (flows/worker_preload.py). Both used to start one after the other, the imports only
    with the first shard."""
    import socket
    import threading

    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    from plmscreen.flows.clusters import start_planned_cluster

    if PREFECT_API_URL.value():
        with start_planned_cluster(plan) as cluster:
            yield DaskTaskRunner(address=cluster.scheduler_address)
        return
    from prefect.server.api.server import SubprocessASGIServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = SubprocessASGIServer(port=port)
    failure: list[BaseException] = []

    def start_in_background() -> None:
        try:
            start_prefect_server(server)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)

    starting = threading.Thread(target=start_in_background, name="prefect-server-start", daemon=True)
    starting.start()
    try:
        with start_planned_cluster(plan, env={"PREFECT_API_URL": server.api_url}) as cluster:
            starting.join()
            if failure:
                raise failure[0]
            with temporary_api(server):
                yield DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        starting.join()
        server.stop()


def flush_api_logs() -> None:
    """Send the flow's queued log records while the temporary server still runs."""
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)
    except Exception:  # a failed flush only loses log lines the terminal already showed
        pass
