"""Which path a plain ``plmscreen screen`` takes: the Prefect flow on a local Dask cluster, or (for
a local CPU screen too small to repay the flow's fixed start-up, with no Prefect API configured)
this process. Issue 15: start-up fits the work."""

import gzip
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import example_fasta
from plmscreen.cli import screen as screen_cli
from plmscreen.flows import resources
from plmscreen.screening.run.settings import ScreenSettings


def test_flow_pays_off_when_its_fixed_cost_is_within_5_percent_of_the_scoring():
    # 6 proteins of 250 residues with a 31 MB checkpoint: 375,000 cost tokens, 186 CPU s by the
    # recorded rate (92.3 s x 2 cores measured), far below 20 x 25 CPU s
    costs = [250 * 250] * 6
    assert resources.estimated_scoring_cpu_seconds(costs, 31_000_000) == pytest.approx(375_000 * 31e6 * 1.6e-11)
    assert not resources.flow_pays_off(costs, 31_000_000)
    # the threshold sits at FLOW_FIXED_CPU_SECONDS / MAX_ORCHESTRATION_SHARE = 500 CPU s
    assert resources.FLOW_FIXED_CPU_SECONDS / resources.MAX_ORCHESTRATION_SHARE == pytest.approx(500.0)
    tokens_at_500 = 500 / (31_000_000 * resources.CPU_SECONDS_PER_TOKEN_BYTE)
    assert not resources.flow_pays_off([int(tokens_at_500 * 0.99)], 31_000_000)
    assert resources.flow_pays_off([int(tokens_at_500 * 1.01)], 31_000_000)
    # 60 proteins of 1,500 residues (windowed at 1,022) with the 650M model's 2.6 GB file: a flow
    assert resources.flow_pays_off([1500 * 1022] * 60, 2_600_000_000)


def _settings(checkpoint):
    return ScreenSettings(model=str(checkpoint), device="cpu")


def test_small_local_screen_runs_in_process_unless_asked_or_watched(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # no profile naming a server
    fasta = example_fasta(tmp_path / "in.fasta", 8)
    settings = _settings(tiny_checkpoint)
    assert screen_cli._small_local_screen(fasta, settings, None, None, None)
    # any explicit cluster choice keeps the flow
    assert not screen_cli._small_local_screen(fasta, settings, 2, None, None)
    assert not screen_cli._small_local_screen(fasta, settings, None, None, "tcp://127.0.0.1:8786")
    assert not screen_cli._small_local_screen(fasta, ScreenSettings(model=str(tiny_checkpoint), device="cuda"),
                                              None, None, None)
    # a configured Prefect API (environment or profile): the user watches runs there
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not screen_cli._small_local_screen(fasta, settings, None, None, None)
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr("plmscreen.flows.orchestration.configured_api_url", lambda: "http://prefect.example/api")
    assert not screen_cli._small_local_screen(fasta, settings, None, None, None)


def test_small_input_lengths_reads_plain_and_gzip_and_stops_at_the_size_cap(tmp_path, monkeypatch):
    text = ">a desc\nMKV\nLLA\n>b\n\nACDEFG\n>c\n"
    plain = tmp_path / "x.fasta"
    plain.write_text(text)
    packed = tmp_path / "x.fasta.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    assert screen_cli._small_input_lengths(plain) == [6, 6, 0]
    assert screen_cli._small_input_lengths(packed) == [6, 6, 0]
    assert screen_cli._small_input_lengths(tmp_path / "missing.fasta") is None
    monkeypatch.setattr(resources, "SMALL_INPUT_BYTES", len(text) - 1)
    assert screen_cli._small_input_lengths(plain) is None  # larger inputs are flows, unread
    assert screen_cli._small_input_lengths(packed) is None  # decompressed size counts


def test_more_work_than_the_threshold_starts_the_flow(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    fasta = example_fasta(tmp_path / "in.fasta", 8)
    lengths = screen_cli._small_input_lengths(fasta)
    size = os.path.getsize(tiny_checkpoint)
    tokens = sum(n * n for n in lengths)
    # the rate at which these 8 proteins cost exactly the threshold: just above it, the flow
    rate_at_threshold = resources.FLOW_FIXED_CPU_SECONDS / resources.MAX_ORCHESTRATION_SHARE / (tokens * size)
    monkeypatch.setattr(resources, "CPU_SECONDS_PER_TOKEN_BYTE", rate_at_threshold * 1.01)
    assert not screen_cli._small_local_screen(fasta, _settings(tiny_checkpoint), None, None, None)
    monkeypatch.setattr(resources, "CPU_SECONDS_PER_TOKEN_BYTE", rate_at_threshold * 0.99)
    assert screen_cli._small_local_screen(fasta, _settings(tiny_checkpoint), None, None, None)


def test_a_plain_small_screen_scores_in_process_and_equals_the_flow(tmp_path, tiny_checkpoint):
    """The default command on a small input says it runs in this process, starts no Prefect server
    or cluster, and writes the same scores as the same screen forced through the flow (--flow)."""
    fasta = example_fasta(tmp_path / "in.fasta", 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", PLMSCREEN_OFFLINE="1")
    common = ["--model", str(tiny_checkpoint), "--device", "cpu", "--no-progress"]
    auto = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out",
                           str(tmp_path / "auto"), *common], env=env, capture_output=True, text=True, timeout=600)
    assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]
    assert "Small screen (about" in auto.stderr and "scoring in this process" in auto.stderr
    assert "Cluster:" not in auto.stderr and "Screened 6 sequences" in auto.stdout
    # no temporary Prefect server was started: it would have written its database under PREFECT_HOME
    assert not [p for p in (tmp_path / "prefect-home").rglob("*") if p.is_file()]
    flow = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--out",
                           str(tmp_path / "flow"), "--flow", *common], env=env, capture_output=True, text=True,
                          timeout=600)
    assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-3000:]
    assert "Small screen" not in flow.stderr and "Cluster:" in flow.stderr
    assert [p for p in (tmp_path / "prefect-home").rglob("*") if p.is_file()]  # the flow's server was there

    def scores(store):
        table = pq.ParquetDataset(sorted(store.glob("sequences/model=*/run=*/part-*.parquet"))).read()
        rows = sorted(zip(table["seq_id"].to_pylist(), table["pppl"].to_pylist()))
        return rows

    a, f = scores(tmp_path / "auto"), scores(tmp_path / "flow")
    assert [r[0] for r in a] == [r[0] for r in f] and len(a) == 6
    for (_, x), (_, y) in zip(a, f):
        assert x == pytest.approx(y, rel=1e-5)  # batch composition differs between shardings


def _configured_api_url_in(cwd, env) -> tuple[str, bool]:
    """configured_api_url() in a fresh interpreter: its answer, and whether Prefect got imported."""
    code = ("import sys; from plmscreen.flows.orchestration import configured_api_url; "
            "print(configured_api_url()); print('prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answer, imported = done.stdout.split()
    return answer, imported == "True"


def test_configured_api_url_skips_prefect_only_when_no_settings_file_could_name_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    work = tmp_path / "work"
    work.mkdir()
    assert _configured_api_url_in(work, env) == ("None", False)  # nothing to read: Prefect not imported
    (work / "pyproject.toml").write_text('[project]\nname = "someone-elses"\n')  # not Prefect's
    (work / ".env").write_text("DEBUG=1\n")
    assert _configured_api_url_in(work, env) == ("None", False)
    (work / "pyproject.toml").write_text('[tool.prefect]\napi.url = "http://pyproject.example/api"\n')
    assert _configured_api_url_in(work, env) == ("http://pyproject.example/api", True)
    (work / "pyproject.toml").unlink()
    (work / ".env").write_text("PREFECT_API_URL=http://dotenv.example/api\n")
    assert _configured_api_url_in(work, env) == ("http://dotenv.example/api", True)
    (work / ".env").unlink()
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "profiles.toml").write_text(
        'active = "remote"\n\n[profiles.remote]\nPREFECT_API_URL = "http://prefect.example:4200/api"\n')
    assert _configured_api_url_in(work, env) == ("http://prefect.example:4200/api", True)
    (tmp_path / "home" / "profiles.toml").unlink()
    (work / "prefect.toml").write_text('[api]\nurl = "http://toml.example:4200/api"\n')
    assert _configured_api_url_in(work, env) == ("http://toml.example:4200/api", True)
    (work / "prefect.toml").unlink()
    assert _configured_api_url_in(work, {**env, "PREFECT_API_URL": "http://env.example/api"})[0] == "http://env.example/api"


def test_checkpoint_bytes_is_the_planned_size_without_hashing(tiny_checkpoint, monkeypatch):
    from plmscreen.screening.model.backends import resolve

    planned = resolve.plan_checkpoint(str(tiny_checkpoint))
    monkeypatch.setattr(resolve, "file_sha256", lambda *a, **k: pytest.fail("checkpoint_bytes hashed a file"))
    assert resolve.checkpoint_bytes(str(tiny_checkpoint)) == planned.size_bytes == os.path.getsize(tiny_checkpoint)
