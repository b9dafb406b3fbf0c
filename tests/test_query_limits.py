"""Every query runs under a memory, spill and time limit: a runaway query stops with exit code 3
and one line naming the limit and how to raise it, and leaves the store as it was."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from plmscreen.screening import store as st
from plmscreen.cli.main import app
from store_fixtures import SEQ_IDS, copy_store, parquet_rows, shared_store

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"
# The documented names, spelled out: renaming one breaks users' scripts.
MEMORY_ENV, SPILL_ENV, TIMEOUT_ENV = "PLMSCREEN_QUERY_MEMORY_LIMIT", "PLMSCREEN_QUERY_SPILL_LIMIT", "PLMSCREEN_QUERY_TIMEOUT"
NO_LIMIT_ENV = {MEMORY_ENV: None, SPILL_ENV: None, TIMEOUT_ENV: None}
RUNAWAY_COUNT = "SELECT count(*) FROM range(10000000000000)"  # hours of counting, no memory
SELF_CROSS_JOIN = "SELECT * FROM residues AS a, residues AS b"  # (2 runs' residues)² rows
BIG_GROUP_BY = "SELECT range % 10000000 AS k, count(*) AS n FROM range(100000000) GROUP BY k"  # ~10M groups


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_checkpoint):
    return shared_store(tmp_path_factory, tiny_checkpoint)


@pytest.fixture()
def store(shared, tmp_path):
    root = copy_store(shared, tmp_path / "store")
    assert cli("query", root, "SELECT 1").exit_code == 0  # publishes plmscreen.duckdb before the snapshot
    return root


def cli(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env={**NO_LIMIT_ENV, **(env or {})})
    assert "Traceback" not in result.output
    return result


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_store_unharmed(root: Path, before: dict[str, str]) -> None:
    assert snapshot(root) == before
    result = cli("query", root, "SELECT count(*) AS n FROM sequences", "--format", "csv")
    assert result.exit_code == 0 and result.stdout == f"n\n{2 * len(SEQ_IDS)}\n"


def limit_error(result) -> str:
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.timeout(120)  # if the time limit failed, the count would run for hours
def test_a_runaway_query_stops_at_the_time_limit(store):
    before = snapshot(store)
    started = time.monotonic()
    message = limit_error(cli("query", store, RUNAWAY_COUNT, "--timeout", "1"))
    assert time.monotonic() - started < 20
    assert "time limit of 1 s" in message and "--timeout" in message and TIMEOUT_ENV in message
    started = time.monotonic()
    message = limit_error(cli("query", store, RUNAWAY_COUNT, env={TIMEOUT_ENV: "0.5"}))
    assert time.monotonic() - started < 20 and "time limit of 0.5 s" in message
    assert_store_unharmed(store, before)


def test_a_self_cross_join_stops_at_the_memory_limit(store):
    before = snapshot(store)
    message = limit_error(cli("query", store, SELF_CROSS_JOIN, "--memory-limit", "32MB", "--timeout", "60"))
    assert "memory limit of 32MB" in message and "--memory-limit" in message and MEMORY_ENV in message
    message = limit_error(cli("query", store, SELF_CROSS_JOIN, "--format", "csv", "--timeout", "60",
                              env={MEMORY_ENV: "16MiB"}))
    assert "memory limit of 16MiB" in message
    assert_store_unharmed(store, before)


def test_duckdb_out_of_memory_and_spill_space_names_both_limits(store, tmp_path, monkeypatch):
    spill_parent = tmp_path / "tmp"
    spill_parent.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spill_parent))
    before = snapshot(store)
    message = limit_error(cli("query", store, BIG_GROUP_BY, "--memory-limit", "64MB", "--spill-limit", "32MB",
                              "--timeout", "60"))
    assert "memory limit of 64MB" in message and "spill limit of 32MB" in message
    assert "--spill-limit" in message and SPILL_ENV in message
    assert list(spill_parent.iterdir()) == []  # the private views file and spill files went with the query
    assert_store_unharmed(store, before)


def test_the_same_connection_answers_after_a_limit_stopped_a_query(shared, store):
    limits = st.QueryLimits(memory="32MB", timeout_s=1)
    expected = sorted((r["run"], r["seq_id"]) for r in parquet_rows(store, "sequences") if r["flagged"])
    with st.open_store(store, limits=limits) as con:
        for runaway in (SELF_CROSS_JOIN, RUNAWAY_COUNT):
            with pytest.raises(st.QueryLimitExceeded):
                con.sql(runaway)
            assert sorted((r["run"], r["seq_id"]) for r in con.named("flagged").to_pylist()) == expected


def test_defaults_are_set_on_the_connection_and_documented(store):
    limits = st.QueryLimits()
    assert limits == st.QueryLimits.from_env({})
    assert (limits.spill, limits.timeout_s) == ("10GB", 300)
    half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    assert limits.memory_bytes == min(4 * 1000**3, half // 1024**2 * 1024**2)

    plain = duckdb.connect()  # how DuckDB itself shows the same settings
    plain.execute(f"SET memory_limit = '{limits.memory}'")
    plain.execute(f"SET max_temp_directory_size = '{limits.spill}'")
    show = "SELECT current_setting('memory_limit') AS memory, current_setting('max_temp_directory_size') AS spill"
    assert st.query(store, show, limits=limits).to_pylist() == [dict(zip(("memory", "spill"), plain.execute(show).fetchone()))]

    section = README.read_text().split("## Querying a store", 1)[1].split("\n## ", 1)[0]
    for documented in ("--memory-limit", MEMORY_ENV, "4GB", "half", "--spill-limit", SPILL_ENV,
                       "10GB", "--timeout", TIMEOUT_ENV, "300 s", "exit code 3"):
        assert documented in section, documented


def test_options_beat_the_environment_and_bad_values_are_refused(store):
    env = {TIMEOUT_ENV: "0.2", MEMORY_ENV: "1GB", SPILL_ENV: "1GB"}
    limits = st.QueryLimits.from_env(env, timeout_s=5.0)
    assert (limits.memory, limits.spill, limits.timeout_s) == ("1GB", "1GB", 5.0)
    result = cli("query", store, "SELECT count(*) AS n FROM range(1000)", "--timeout", "30", "--format", "csv", env=env)
    assert result.exit_code == 0 and result.stdout == "n\n1000\n"

    for args, env, words in [
        (("--memory-limit", "lots"), {}, "memory limit 'lots' is not a size"),
        (("--spill-limit", "-1GB"), {}, "spill limit '-1GB' is not a size"),
        (("--timeout", "-1"), {}, "time limit -1.0 is not a number of seconds"),
        ((), {TIMEOUT_ENV: "soon"}, f"{TIMEOUT_ENV}='soon' is not a number of seconds"),
        ((), {MEMORY_ENV: "4 apples"}, "memory limit '4 apples' is not a size"),
    ]:
        result = cli("query", store, "SELECT 1", *args, env=env)
        assert result.exit_code == 2 and words in result.stderr, (args, env, result.output)


def test_report_and_flagged_run_under_the_same_limits(store, tmp_path):
    before = snapshot(store)
    out = tmp_path / "report.html"
    message = limit_error(cli("report", store, "--out", out, "--memory-limit", "1KB"))
    assert "memory limit of 1KB" in message and "--memory-limit" in message and MEMORY_ENV in message
    assert not out.exists()
    message = limit_error(cli("flagged", store, env={MEMORY_ENV: "1KB"}))
    assert "memory limit of 1KB" in message
    assert_store_unharmed(store, before)
