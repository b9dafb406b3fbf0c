"""Other processes reading STORE/plmscreen.duckdb (as the README tells users to) never block
plmscreen's own queries, and the README's advice for such users holds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plmscreen.screening import store as st
from plmscreen.cli.main import app
from store_fixtures import SEQ_IDS, parquet_rows, shared_store

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_checkpoint):
    return shared_store(tmp_path_factory, tiny_checkpoint)


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def add_run(shared, store: Path, run: str) -> None:
    """Add a finished run to ``store`` the way a screen leaves it: partitions and run.json."""
    for table in ("residues", "sequences", "repeats"):
        source = next(shared.root.glob(f"{table}/model=*/run={run}"))
        shutil.copytree(source, store / table / source.parent.name / source.name)
    shutil.copytree(shared.root / "runs" / run, store / "runs" / run)


class ReadOnlyReader:
    """Another process holding ``duckdb.connect(db, read_only=True)`` open until told to stop."""

    SCRIPT = textwrap.dedent("""
        import sys, duckdb
        con = duckdb.connect(sys.argv[1], read_only=True)
        for line in sys.stdin:
            print(con.sql(line).fetchall()[0][0], flush=True)
    """)

    def __init__(self, db: Path):
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT, str(db)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ask(self, sql: str) -> str:
        self.process.stdin.write(sql + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer, self.process.stderr.read()
        return answer

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=30)


def fresh_reader_count(db: Path, sql: str) -> int:
    """What a new process with its own read-only connection gets."""
    code = f"import duckdb; print(duckdb.connect({str(db)!r}, read_only=True).sql({sql!r}).fetchall()[0][0])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_query_flagged_and_report_work_while_another_process_reads_the_database(shared, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    result = cli("query", store, "SELECT count(*) AS n FROM sequences", "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout) == [{"n": 0}]  # placeholder views published
    db = store / st.DATABASE_NAME
    reader = ReadOnlyReader(db)
    try:
        assert reader.ask("SELECT count(*) FROM sequences") == "0"
        # The first run of each table: the views must change from their placeholders to the Parquet globs.
        add_run(shared, store, shared.run_a)

        result = cli("query", store, "SELECT count(*) AS n FROM sequences", "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"n": len(SEQ_IDS)}]

        expected = sorted(r["seq_id"] for r in parquet_rows(store, "sequences") if r["flagged"])
        assert expected  # the fixture's lenient rule flags some
        result = cli("flagged", store, "--format", "json")
        assert result.exit_code == 0, result.output
        assert sorted(r["seq_id"] for r in json.loads(result.stdout)) == expected

        report = tmp_path / "report.html"
        result = cli("report", store, "--out", report)
        assert result.exit_code == 0, result.output
        assert shared.run_a in report.read_text()

        # The published database now has the real views: a new reader sees the run...
        assert fresh_reader_count(db, "SELECT count(*) FROM sequences") == len(SEQ_IDS)
        assert fresh_reader_count(db, "SELECT count(*) FROM runs") == 1
        # ...and the reader that held the old one open still answers.
        assert reader.ask("SELECT 42") == "42"
    finally:
        assert reader.close() == 0


def test_open_readers_see_new_runs_without_reconnecting(shared, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    add_run(shared, store, shared.run_a)
    assert cli("query", store, "SELECT 1").exit_code == 0
    reader = ReadOnlyReader(store / st.DATABASE_NAME)
    try:
        assert reader.ask("SELECT count(DISTINCT run) FROM sequences") == "1"
        add_run(shared, store, shared.run_b)
        assert reader.ask("SELECT count(DISTINCT run) FROM sequences") == "2"
        assert reader.ask("SELECT count(*) FROM runs") == "2"
    finally:
        assert reader.close() == 0


def test_the_readme_python_example_reads_the_views(shared, tmp_path):
    """The README's snippet for users with their own DuckDB connection, run as written in another
    process (only ``.df()`` becomes ``.to_arrow_table()``: pandas is not a dependency)."""
    store = tmp_path / "store"
    store.mkdir()
    add_run(shared, store, shared.run_a)
    add_run(shared, store, shared.run_b)
    assert cli("query", store, "SELECT 1").exit_code == 0

    text = README.read_text()
    section = text[text.index("## Querying a store"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'duckdb.connect("STORE/plmscreen.duckdb", read_only=True)' in snippet
    assert ".df()" in snippet
    code = snippet.replace("STORE/", f"{store}/").replace(".df()", ".to_arrow_table()")
    code += "\nimport json; print(json.dumps(sorted([r['run'], r['seq_id']] for r in df.to_pylist())))\n"
    holder = ReadOnlyReader(store / st.DATABASE_NAME)  # another reader at the same time is fine
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        assert holder.close() == 0
    assert done.returncode == 0, done.stderr
    expected = sorted([r["run"], r["seq_id"]] for r in parquet_rows(store, "sequences") if r["flagged"])
    assert json.loads(done.stdout) == expected and expected
