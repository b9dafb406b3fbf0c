"""A real Prefect server on localhost: a screen shows up with its tasks and artifacts, the UI renders
its flow-run page, and the deployments in deploy/prefect.yaml register against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browser import assert_not_blank, rendered_dom, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None):
    """One REST call; a 503 (the server's database busy, e.g. SQLite locked by its own services) is
    retried a few times, as Prefect's own client retries it."""
    import time
    import urllib.error

    for attempt in range(5):
        request = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 4:
                raise
            time.sleep(1 + attempt)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            api(url, "/health")
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited: {proc.stdout.read()[-3000:]}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("prefect server did not become healthy in 180 s")
    client_env = {**env, "PREFECT_API_URL": url, "PLMSCREEN_OFFLINE": "1"}
    yield url, client_env
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


@pytest.fixture(scope="module")
def screened(server, tiny_checkpoint, tmp_path_factory):
    url, env = server
    tmp = tmp_path_factory.mktemp("screen")
    records = (REPO / "examples" / "sample.fasta").read_text().split(">")[1:5]
    fasta = tmp / "four.fasta"
    fasta.write_text("".join(">" + r for r in records))
    store = tmp / "store"
    done = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out", str(store),
                           "--model", str(tiny_checkpoint), "--device", "cpu", "--workers", "1", "--shard-tokens", "30000"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_id = next((store / "runs").iterdir()).name
    return url, run_id, store


def test_screen_run_tasks_and_artifacts_are_in_the_server(screened):
    from plmscreen.screening.run.catalog import Catalog

    url, run_id, store = screened
    flows = api(url, "/flow_runs/filter", {"flow_runs": {"name": {"like_": "screen "}}})
    assert len(flows) == 1 and flows[0]["state_type"] == "COMPLETED"
    assert flows[0]["name"] == "screen four.fasta · esm2_t2_tiny_test · exact"  # what, with what, how
    with Catalog.open(None, store) as catalog:
        n_shards = len(catalog.shards(run_id))
    tasks = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flows[0]["id"]]}}})
    shard_tasks = sorted(t["name"] for t in tasks if t["name"].startswith(f"{run_id}/shard-"))
    assert shard_tasks == sorted(f"{run_id}/shard-{i}" for i in range(n_shards))
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    artifacts = {a["key"]: a for a in api(url, "/artifacts/filter", {})}
    assert artifacts[f"shards-{run_id}"]["type"] == "progress" and artifacts[f"shards-{run_id}"]["data"] == 100.0
    flagged = artifacts[f"flagged-{run_id}"]
    assert flagged["type"] == "markdown" and f"plmscreen run `{run_id}`" in flagged["data"]
    assert "plmscreen report" in flagged["data"]
    assert f"Scored in this flow run: {n_shards} shards; taken as finished from the catalog: 0 shards." in flagged["data"]
    assert "4 scored, 0 reused from earlier runs, 0 copied from identical sequences of this input." in flagged["data"]
    changes = artifacts[f"changes-{run_id}"]
    assert changes["type"] == "markdown" and "No earlier run of this screen" in changes["data"]
    logs = api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flows[0]["id"]]}}})
    assert any(f"run {run_id}:" in entry["message"] for entry in logs)


def test_ui_shows_the_flow_run(screened, tmp_path):
    url, run_id, _ = screened
    flows = api(url, "/flow_runs/filter", {"flow_runs": {"name": {"like_": "screen "}}})
    page = url.removesuffix("/api") + f"/runs/flow-run/{flows[0]['id']}"
    dom = rendered_dom(page, tmp_path, budget_ms=20000)
    assert "Can't connect" not in dom and "Something went wrong" not in dom
    assert flows[0]["name"] in dom, "the flow-run page names the run"
    assert "Completed" in dom
    assert_not_blank(screenshot(page, tmp_path / "flow-run.png", budget_ms=20000))


def test_deployments_register_with_cron_schedules(server, tmp_path):
    url, env = server
    env = {**env, "PLMSCREEN_HOME": str(REPO), "PLMSCREEN_DATA": str(tmp_path), "PLMSCREEN_STORE": str(tmp_path / "store"),
           "PLMSCREEN_WEIGHTS_DIR": str(tmp_path / "weights"), "PLMSCREEN_CATALOG_URL": ""}
    for pool in ("plmscreen-cpu", "plmscreen-gpu"):
        made = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process", "--overwrite"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
    deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                               "--prefect-file", "deploy/prefect.yaml"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-4000:]
    deployments = {d["name"]: d for d in api(url, "/deployments/filter", {})}
    assert set(deployments) == {"ecoli-weekly", "human-monthly", "human-weekly-triage", "sample-nightly"}
    crons = {name: [s["schedule"]["cron"] for s in d["schedules"]] for name, d in deployments.items()}
    assert crons == {"ecoli-weekly": ["0 2 * * 1"], "human-monthly": ["0 3 1 * *"], "human-weekly-triage": ["0 4 * * 3"],
                     "sample-nightly": ["30 1 * * *"]}
    assert deployments["human-weekly-triage"]["parameters"]["settings"]["mode"] == "triage"
    assert deployments["human-monthly"]["parameters"]["settings"]["mode"] == "exact"
    assert deployments["ecoli-weekly"]["work_pool_name"] == "plmscreen-gpu"
    assert deployments["ecoli-weekly"]["parameters"]["settings"]["model"] == "esm2_t33_650M_UR50D"
    assert deployments["sample-nightly"]["parameters"]["settings"]["model"] == "plmscreen-mini"
    assert deployments["sample-nightly"]["entrypoint"] == "flows/screen.py:screen_proteome"


def wait_for_flow_run(url: str, flow_run_id: str, timeout: float, *logs: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(url, f"/flow_runs/{flow_run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert run["state_type"] == "COMPLETED", (run["state"], *(p.read_text()[-3000:] for p in logs))
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout} s: " + " ".join(p.read_text()[-3000:] for p in logs))


def schedule_now(url: str, deployment_id: str) -> dict:
    """What Prefect's scheduler does when a cron time comes: a Scheduled flow run of the deployment."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).isoformat()
    return api(url, f"/deployments/{deployment_id}/create_flow_run",
               {"state": {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now}}})


def start_logged(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, 9)


def test_scheduled_deployment_runs_on_a_process_worker(server, tmp_path):
    """Production's path: `prefect deploy` of sample-nightly, a `prefect worker` process polling its
    pool, and two runs scheduled at the same moment (a cron run and a manual one). Both complete,
    the store and catalog hold the run, every shard was computed once, and the UI shows the run."""
    from plmscreen.screening.run.catalog import Catalog

    url, env = server
    store = tmp_path / "store"
    env = {**env, "PLMSCREEN_HOME": str(REPO), "PLMSCREEN_DATA": str(tmp_path), "PLMSCREEN_STORE": str(store),
           "PLMSCREEN_WEIGHTS_DIR": str(tmp_path / "weights"), "PLMSCREEN_CATALOG_URL": ""}
    made = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "plmscreen-cpu", "--type", "process",
                           "--overwrite"], env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    deployed = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "sample-nightly",
                               "--prefect-file", "deploy/prefect.yaml"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-4000:]
    deployment = api(url, "/deployments/name/screen-proteome/sample-nightly")
    worker_log = tmp_path / "worker.log"
    worker = start_logged([sys.executable, "-m", "prefect", "worker", "start", "--pool", "plmscreen-cpu"], worker_log,
                          env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, cwd=tmp_path)
    try:
        runs = [schedule_now(url, deployment["id"]) for _ in range(2)]
        finished = [wait_for_flow_run(url, run["id"], 900, worker_log) for run in runs]
    finally:
        stop(worker)
    assert all(run["deployment_id"] == deployment["id"] for run in finished)
    with Catalog.open(None, store) as catalog:
        (status,) = catalog.list_runs()
        shards = catalog.shards(status.run_id)
    assert status.status == "done" and status.n_sequences == 32
    assert [s.attempts for s in shards] == [1] * len(shards), "two runs of one deployment computed a shard twice"
    import pyarrow.parquet as pq

    rows = [r for f in store.glob("sequences/model=*/run=*/part-*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len({r["seq_id"] for r in rows}) == 32
    artifacts = {a["key"] for a in api(url, "/artifacts/filter", {})}
    assert f"flagged-{status.run_id}" in artifacts
    page = url.removesuffix("/api") + f"/runs/flow-run/{finished[0]['id']}"
    dom = rendered_dom(page, tmp_path, budget_ms=20000)
    assert finished[0]["name"] in dom and "Completed" in dom and "sample-nightly" in dom
    assert_not_blank(screenshot(page, tmp_path / "scheduled-run.png", budget_ms=20000))


def test_served_flow_runs_when_its_schedule_fires(server, tmp_path):
    """deploy/serve.py: the single-machine way, no work pool."""
    from plmscreen.screening.run.catalog import Catalog

    url, env = server
    store = tmp_path / "store"
    env = {**env, "PLMSCREEN_STORE": str(store), "PLMSCREEN_CRON": "0 0 1 1 *", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = tmp_path / "serve.log"
    served = start_logged([sys.executable, "deploy/serve.py"], log, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 180
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            try:
                deployment = api(url, "/deployments/name/screen-proteome/local-nightly")
            except urllib.error.HTTPError:
                time.sleep(1)
        assert deployment is not None, log.read_text()[-3000:]
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 0 1 1 *"]
        finished = wait_for_flow_run(url, schedule_now(url, deployment["id"])["id"], 900, log)
    finally:
        stop(served)
    with Catalog.open(None, store) as catalog:
        (status,) = catalog.list_runs()
    assert status.status == "done" and status.n_sequences == 32
    assert finished["deployment_id"] == deployment["id"]
