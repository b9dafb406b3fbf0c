"""The DuckDB query layer: views and named queries checked against pyarrow reads of the Parquet
files, schema versions, the read-only guard, the CLI and the store's integrity rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from plmscreen.schema.arrow import METADATA_KEY, SCHEMA_VERSION
from plmscreen.screening import store as st
from plmscreen.cli.main import app
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.settings import ScreenSettings
from store_fixtures import FASTA, SEQ_IDS, copy_store, parquet_rows, shared_store

runner = CliRunner()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_checkpoint):
    return shared_store(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def store(shared):
    return shared.root


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def by_key(rows, *keys):
    return {tuple(r[k] for k in keys): r for r in rows}


# ---------------------------------------------------------------------------------------------
# Views against pyarrow


@pytest.mark.parametrize("table", ["residues", "sequences", "repeats"])
def test_base_views_equal_the_parquet_files(store, table):
    expected = parquet_rows(store, table)
    got = st.query(store, f"SELECT * FROM {table}").to_pylist()
    assert len(got) == len(expected) > 0
    keys = {"residues": ("run", "seq_id", "pos"), "sequences": ("run", "seq_id"), "repeats": ("run", "seq_id", "region_id")}[table]
    exp, act = by_key(expected, *keys), by_key(got, *keys)
    assert exp.keys() == act.keys()
    for key, row in exp.items():
        for column, value in row.items():
            if isinstance(value, float):
                assert act[key][column] == pytest.approx(value, nan_ok=True), (key, column)
            elif isinstance(value, list) and value and isinstance(value[0], float):
                assert act[key][column] == pytest.approx(value), (key, column)
            else:
                assert act[key][column] == value, (key, column)


def test_run_ids_stay_strings_and_every_run_has_every_input(shared, store):
    counts = st.query(store, "SELECT run, model, count(*) AS n, count(DISTINCT seq_id) AS d FROM sequences GROUP BY ALL ORDER BY run").to_pylist()
    assert {r["run"] for r in counts} == {shared.run_a, shared.run_b}
    assert all(r["n"] == r["d"] == len(SEQ_IDS) for r in counts)
    assert {r["model"] for r in counts} == {"esm2_t2_tiny_test", "esm2_t2_tiny_b"}
    described = st.query(store, "SELECT column_name, column_type FROM (DESCRIBE sequences)").to_pylist()
    types = {r["column_name"]: r["column_type"] for r in described}
    assert types["run"] == types["model"] == "VARCHAR"


def test_several_files_per_run_are_read(shared, store):
    files = sorted(store.glob(f"residues/model=*/run={shared.run_a}/part-*.parquet"))
    assert len(files) >= 3  # small shards: the views must union files
    n = st.query(store, f"SELECT count(*) AS n FROM residues WHERE run = '{shared.run_a}'").column("n")[0].as_py()
    assert n == sum(pq.read_metadata(f).num_rows for f in files) == len(parquet_rows(store, "residues")) // 2


def test_repeat_regions_mean_inflation_matches_residues(store):
    residues = parquet_rows(store, "residues")
    inflation = {(r["run"], r["seq_id"], r["pos"]): r["inflation"] for r in residues}
    pairs = parquet_rows(store, "repeats")
    got = by_key(st.query(store, "SELECT * FROM repeat_regions").to_pylist(), "run", "seq_id", "region_id")
    assert len(got) == len(pairs) > 0

    def mean(run, seq, lo, hi):
        values = [inflation[(run, seq, p)] for p in range(lo, hi + 1) if inflation[(run, seq, p)] is not None]
        return sum(values) / len(values) if values else None

    for pair in pairs:
        row = got[(pair["run"], pair["seq_id"], pair["region_id"])]
        assert (row["start"], row["end"], row["partner_start"], row["partner_end"]) == \
            (pair["start"], pair["end"], pair["partner_start"], pair["partner_end"])
        assert row["identity"] == pair["identity"]
        assert row["length"] == pair["end"] - pair["start"] + 1
        assert row["mean_inflation"] == pytest.approx(mean(pair["run"], pair["seq_id"], pair["start"], pair["end"]))
        assert row["partner_mean_inflation"] == pytest.approx(
            mean(pair["run"], pair["seq_id"], pair["partner_start"], pair["partner_end"]))


def test_runs_view_matches_run_json(shared, store):
    rows = by_key(st.query(store, "SELECT * FROM runs").to_pylist(), "run")
    for run in (shared.run_a, shared.run_b):
        meta = json.loads((store / "runs" / run / "run.json").read_text())
        row = rows[(run,)]
        assert row["model"] == meta["model_name"] and row["checkpoint_sha256"] == meta["checkpoint_sha256"]
        assert row["input_sha256"] == meta["input_sha256"] and row["n_scored"] == meta["n_scored"] == len(SEQ_IDS)
        assert json.loads(row["parameters"]) == meta["parameters"]
        assert row["created_utc"].isoformat() == meta["created_utc"]


# ---------------------------------------------------------------------------------------------
# Named queries against pyarrow


def test_flagged_query_ranks_flagged_sequences_with_regions(shared, store):
    sequences = parquet_rows(store, "sequences")
    pairs = parquet_rows(store, "repeats")
    for run in (None, shared.run_a, shared.run_b):
        expected = sorted((r for r in sequences if r["flagged"] and run in (None, r["run"])),
                          key=lambda r: (-r["inflation_factor"], r["run"], r["seq_id"]))
        got = st.query_named(store, "flagged", {} if run is None else {"run": run}).to_pylist()
        assert [(r["run"], r["seq_id"]) for r in got] == [(r["run"], r["seq_id"]) for r in expected]
        assert len(got) > 0
        for row, exp in zip(got, expected):
            assert row["inflation_factor"] == pytest.approx(exp["inflation_factor"])
            assert row["pppl"] == pytest.approx(exp["pppl"])
            own = sorted((p for p in pairs if (p["run"], p["seq_id"]) == (exp["run"], exp["seq_id"])),
                         key=lambda p: p["region_id"])
            assert row["n_repeat_regions"] == len(own)
            assert row["regions"].count("~") == len(own)
            for p in own:
                assert f"{p['start']}-{p['end']}~{p['partner_start']}-{p['partner_end']} id={p['identity']:.2f}" in row["regions"]
    structured = st.query(store, f"SELECT regions FROM flagged WHERE run = '{shared.run_a}'").to_pylist()
    assert all(isinstance(r["regions"], list) for r in structured)


def test_flagged_short_command_equals_named_query(shared, store):
    result = cli("flagged", store, "--run", shared.run_b, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows == json.loads(cli("query", store, "--name", "flagged", "--param", f"run={shared.run_b}", "--format", "json").stdout)
    expected = {r["seq_id"] for r in parquet_rows(store, "sequences") if r["flagged"] and r["run"] == shared.run_b}
    assert {r["seq_id"] for r in rows} == expected and expected
    table = cli("flagged", store).stdout
    for seq_id in {r["seq_id"] for r in parquet_rows(store, "sequences") if r["flagged"]}:
        assert seq_id in table


@pytest.mark.parametrize("k,min_inflation", [(5, 0.0), (1000, 0.1)])
def test_top_inflated_residues(shared, store, k, min_inflation):
    residues = [r for r in parquet_rows(store, "residues") if r["run"] == shared.run_a]
    expected = sorted((r for r in residues if r["inflation"] is not None and r["inflation"] >= min_inflation),
                      key=lambda r: (-r["inflation"], r["seq_id"], r["pos"]))[:k]
    got = st.query_named(store, "top_inflated_residues", {"k": str(k), "min_inflation": str(min_inflation),
                                                          "run": shared.run_a}).to_pylist()
    assert [(r["seq_id"], r["pos"]) for r in got] == [(r["seq_id"], r["pos"]) for r in expected]
    assert [r["inflation"] for r in got] == pytest.approx([r["inflation"] for r in expected])
    assert len(got) == min(k, len(expected)) and got


def test_copy_following_query_lists_diagnosed_residues_of_flagged_sequences(shared, store):
    residues = [r for r in parquet_rows(store, "residues") if r["run"] == shared.run_a]
    flagged = {r["seq_id"] for r in parquet_rows(store, "sequences") if r["run"] == shared.run_a and r["flagged"]}
    diagnosed = [r for r in residues if r["copy_following"] is not None]
    assert diagnosed and {r["seq_id"] for r in diagnosed} == flagged
    expected = sorted(diagnosed, key=lambda r: (-r["copy_following"], r["seq_id"], r["pos"]))[:7]
    got = st.query_named(store, "copy_following", {"k": "7", "run": shared.run_a}).to_pylist()
    assert [(r["seq_id"], r["pos"], r["planted_residue"]) for r in got] == \
        [(r["seq_id"], r["pos"], r["planted_residue"]) for r in expected]
    assert [r["net_inflation"] for r in got] == pytest.approx([r["net_inflation"] for r in expected])
    flagged_view = st.query(store, f"SELECT seq_id, mean_copy_following FROM flagged WHERE run = '{shared.run_a}'").to_pylist()
    for row in flagged_view:
        own = [r["copy_following"] for r in diagnosed if r["seq_id"] == row["seq_id"]]
        assert row["mean_copy_following"] == pytest.approx(sum(own) / len(own))


def test_compare_runs_deltas_and_flag_changes(shared, store):
    seqs = by_key(parquet_rows(store, "sequences"), "run", "seq_id")
    got = st.query_named(store, "compare_runs", {"run_a": shared.run_a, "run_b": shared.run_b}).to_pylist()
    assert sorted(r["seq_id"] for r in got) == sorted(SEQ_IDS)
    changes = set()
    for row in got:
        a, b = seqs[(shared.run_a, row["seq_id"])], seqs[(shared.run_b, row["seq_id"])]
        assert row["delta_pppl"] == pytest.approx(b["pppl"] - a["pppl"])
        assert row["delta_inflation_factor"] == pytest.approx(b["inflation_factor"] - a["inflation_factor"])
        expected = {(False, True): "gained", (True, False): "lost", (True, True): "both", (False, False): "neither"}
        assert row["flag_change"] == expected[(a["flagged"], b["flagged"])]
        assert (row["model_a"], row["model_b"]) == ("esm2_t2_tiny_test", "esm2_t2_tiny_b")
        changes.add(row["flag_change"])
    assert {"gained", "lost"} & changes  # the fixture's two models disagree on some flags
    deltas = [abs(r["delta_inflation_factor"]) for r in got]
    assert deltas == sorted(deltas, reverse=True)


def test_repeat_free_baseline_quantiles(shared, store):
    got = by_key(st.query_named(store, "repeat_free_baseline").to_pylist(), "run")
    for run in (shared.run_a, shared.run_b):
        free = [r for r in parquet_rows(store, "sequences") if r["run"] == run and r["repeat_fraction"] == 0]
        pppl = np.array([r["pppl"] for r in free])
        row = got[(run,)]
        assert row["n_sequences"] == len(free) >= 3
        assert row["n_residues"] == sum(r["length"] for r in free)
        assert row["pppl_mean"] == pytest.approx(pppl.mean())
        for column, q in (("pppl_q05", 0.05), ("pppl_q25", 0.25), ("pppl_median", 0.5), ("pppl_q75", 0.75), ("pppl_q95", 0.95)):
            assert row[column] == pytest.approx(np.quantile(pppl, q)), column
    only = st.query_named(store, "repeat_free_baseline", {"run": shared.run_b}).to_pylist()
    assert [r["run"] for r in only] == [shared.run_b]


def test_named_query_catalogue_and_parameter_errors(store):
    queries = st.named_queries()
    assert {"flagged", "top_inflated_residues", "compare_runs", "repeat_free_baseline", "copy_following"} <= set(queries)
    listing = cli("query", store, "--list")
    assert listing.exit_code == 0 and "compare_runs run_a=<varchar> run_b=<varchar>" in listing.stdout
    for args, message in [
        (["--name", "nope"], "no named query 'nope'"),
        (["--name", "compare_runs", "--param", "run_a=x"], "parameter run_b is required"),
        (["--name", "top_inflated_residues", "--param", "k=ten"], "parameter k must be INTEGER"),
        (["--name", "flagged", "--param", "colour=red"], "unknown parameter colour"),
        (["--name", "flagged", "--param", "run"], "--param needs NAME=VALUE"),
        (["SELECT 1", "--name", "flagged"], "either SQL or --name"),
    ]:
        result = cli("query", store, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# CLI output formats


def test_cli_formats(shared, store, tmp_path):
    sql = "SELECT run, seq_id, pppl, flagged, partner_pos FROM residues JOIN sequences USING (run, model, seq_id) WHERE pos = 1 ORDER BY run, seq_id"
    expected = st.query(store, sql).to_pylist()
    table = cli("query", store, sql)
    assert table.exit_code == 0 and f"({len(expected)} rows)" in table.stdout and "seq_id" in table.stdout.splitlines()[0]
    rows = json.loads(cli("query", store, sql, "--format", "json").stdout)
    assert [r["seq_id"] for r in rows] == [r["seq_id"] for r in expected]
    assert [r["pppl"] for r in rows] == [r["pppl"] for r in expected]  # full precision
    csv_lines = cli("query", store, sql, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "run,seq_id,pppl,flagged,partner_pos" and len(csv_lines) == len(expected) + 1
    assert float(csv_lines[1].split(",")[2]) == expected[0]["pppl"]
    out = tmp_path / "r.parquet"
    result = cli("query", store, sql, "--format", "parquet", "--out", out)
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).to_pylist() == expected
    assert cli("query", store, sql, "--format", "parquet").exit_code == 2  # needs --out


def test_queries_on_a_missing_store_fail_clearly(tmp_path):
    result = cli("query", tmp_path / "nowhere", "SELECT 1")
    assert result.exit_code == 2 and "no such store directory" in result.stderr


# ---------------------------------------------------------------------------------------------
# The read-only guard

HOSTILE = [
    "INSERT INTO residues VALUES (1)",
    "DELETE FROM sequences",
    "UPDATE sequences SET flagged = true",
    "DROP VIEW residues",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE TEMP TABLE evil AS SELECT 1",
    "ATTACH '/tmp/plmscreen-evil.duckdb' AS evil",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY (SELECT * FROM sequences) TO '/tmp/plmscreen-evil.csv'",
    "COPY sequences FROM '/etc/passwd'",
    "EXPORT DATABASE '/tmp/plmscreen-evil'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_parquet('/tmp/*.parquet')",
    "SELECT * FROM read_json('/etc/os-release')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM sequences, '/etc/passwd'",
    "SELECT * FROM \"read_blob\"('/etc/hostname')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM parquet_scan('/tmp/x.parquet')",
    "SELECT * FROM arrow_scan(1, 2, 3)",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM 'runs/x/run.json'",
    "SET enable_external_access = true",
    "SET threads = 1",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "SET VARIABLE x = 1",
    "USE memory",
    "CALL checkpoint()",
    "CHECKPOINT",
    "SELECT 1; DROP VIEW residues",
    "SELECT 1; SELECT 2",
    "BEGIN TRANSACTION",
    "EXPLAIN ANALYZE SELECT 1",
    "",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_guard_refuses_hostile_statements(store, sql):
    result = cli("query", store, sql)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("plmscreen: error: refused: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_guard_left_everything_intact(shared, store):
    # (runs after the hostile statements: module order)
    assert not list(Path("/tmp").glob("plmscreen-evil*"))
    names = {r["table_name"] for r in st.query(store, "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal").to_pylist()}
    assert {"residues", "sequences", "repeats", "repeat_regions", "flagged", "runs"} <= names and "evil" not in names
    assert st.query(store, "SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == 2 * len(SEQ_IDS)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{store}/../*/*.parquet')",
    "COPY (SELECT 1) TO '/tmp/plmscreen-evil.csv'",
    "ATTACH '/tmp/plmscreen-evil.duckdb'",
    "CREATE TABLE evil AS SELECT 1",
    "CREATE VIEW evil AS SELECT 1",
    "DROP VIEW residues",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "SET threads = 1",
])
def test_duckdb_itself_refuses_without_the_validator(store, sql):
    """Defence in depth: the statement validator bypassed, the connection still refuses."""
    with st.open_store(store) as con:
        with pytest.raises(st.QueryRefused):
            con._run(sql.format(store=store), None)
        # the connection still works and still sees the data afterwards
        assert con.sql("SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == 2 * len(SEQ_IDS)
    assert not list(Path("/tmp").glob("plmscreen-evil*"))


@pytest.mark.parametrize("sql", [
    "WITH f AS (SELECT * FROM flagged) SELECT count(*) FROM f",
    "FROM sequences SELECT seq_id LIMIT 1",
    "DESCRIBE residues",
    "SUMMARIZE sequences",
    "SELECT 'read_csv(''/etc/passwd'')' AS harmless_text",
    "SELECT 1 -- read_csv('/etc/passwd')",
    "SELECT count(*) AS read_count FROM residues;",
    "SELECT extract(year FROM '2024-05-01'::DATE) AS y, trim(both 'x' FROM 'xax') AS t",
])
def test_guard_accepts_ordinary_selects(store, sql):
    assert st.query(store, sql).num_rows >= 1


@pytest.mark.parametrize("sql,message", [
    ("SELEC seq_id FROM sequences", "Parser Error"),
    ("SELECT no_such_column FROM sequences", 'Referenced column "no_such_column" not found'),
    ("SELECT * FROM no_such_view", "no_such_view does not exist"),
    ("SELECT 1 / 'x'", "Error"),
])
def test_bad_sql_is_one_clear_line(store, sql, message):
    result = cli("query", store, sql)
    assert result.exit_code == 2
    assert result.stderr.startswith("plmscreen: error: query failed: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Schema versions


def _rewrite_metadata(path: Path, version: int | None) -> None:
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    if version is None:
        meta.pop(METADATA_KEY)
    else:
        meta[METADATA_KEY] = json.dumps({**json.loads(meta[METADATA_KEY]), "schema_version": version}).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


@pytest.mark.parametrize("version,message", [
    (SCHEMA_VERSION + 1, f"has Parquet schema version {SCHEMA_VERSION + 1}, newer than this plmscreen"),
    (0, "has Parquet schema version 0, older than this plmscreen"),
    (None, "has no plmscreen metadata: not written by plmscreen"),
])
def test_unknown_schema_versions_fail_with_a_clear_message(shared, tmp_path, version, message):
    store = copy_store(shared, tmp_path / "store")
    assert st.check_schema_versions(store) == {SCHEMA_VERSION: len(st.data_files(store))}
    victim = sorted(store.glob("sequences/model=*/run=*/part-*.parquet"))[-1]
    _rewrite_metadata(victim, version)
    with pytest.raises(st.SchemaVersionError, match=message) as excinfo:
        st.query(store, "SELECT count(*) FROM sequences")
    assert str(victim) in str(excinfo.value)
    result = cli("query", store, "SELECT count(*) FROM residues")
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_file_schema_version_reads_the_footer(store):
    assert {st.file_schema_version(p) for p in st.data_files(store)} == {SCHEMA_VERSION}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_files_before_the_run_wide_flag_are_refused_by_name(shared, tmp_path, version):
    """Version 4 moved the flag out of the shard files (the q-value is taken across the run): an
    older file's `flagged` means something else, so queries refuse the store, naming the file and
    what to do, instead of mixing two meanings of `flagged`."""
    store = copy_store(shared, tmp_path / "store")
    old = sorted(store.glob("sequences/model=*/run=*/part-*.parquet"))[0]
    table = pq.read_table(old)
    meta = dict(table.schema.metadata)
    meta[METADATA_KEY] = json.dumps({**json.loads(meta[METADATA_KEY]), "schema_version": version}).encode()
    pq.write_table(table.replace_schema_metadata(meta), old)
    with pytest.raises(st.SchemaVersionError) as err:
        st.check_schema_versions(store)
    assert str(old) in str(err.value) and f"version {version}, older" in str(err.value) and "re-run" in str(err.value)
    with pytest.raises(st.SchemaVersionError, match="re-run that screen"):
        st.query(store, "SELECT count(*) FROM sequences")


# ---------------------------------------------------------------------------------------------
# Empty stores, integrity, deletion


def test_empty_store_has_every_view_with_the_same_columns(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for view in ("residues", "sequences", "repeats", "repeat_regions", "flagged", "runs"):
        full = st.query(store, f"SELECT * FROM {view} LIMIT 0").schema
        none = st.query(empty, f"SELECT * FROM {view}")
        assert none.num_rows == 0
        assert none.schema.names == full.names, view
        assert [f.type for f in none.schema] == [f.type for f in full], view
    for name, query in st.named_queries().items():
        params = {p.name: "x" for p in query.params if p.required}
        assert st.query_named(empty, name, params).num_rows == 0, name


def test_views_follow_a_store_that_gets_its_first_run_and_moves(shared, tmp_path):
    store = tmp_path / "grows"
    store.mkdir()
    assert st.query(store, "SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == 0
    for table in ("residues", "sequences", "repeats"):
        shutil.copytree(next(shared.root.glob(f"{table}/model=*/run={shared.run_a}")),
                        store / table / "model=esm2_t2_tiny_test" / f"run={shared.run_a}")
    assert st.query(store, "SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == len(SEQ_IDS)
    moved = shutil.move(store, tmp_path / "moved")
    assert st.query(moved, "SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == len(SEQ_IDS)
    import duckdb

    con = duckdb.connect(str(Path(moved) / st.DATABASE_NAME), read_only=True)  # what a user does
    try:
        assert con.sql("SELECT count(*) FROM residues").fetchall()[0][0] == sum(len(s) for s in FASTA.splitlines()[1::2])
    finally:
        con.close()


def test_half_written_files_are_invisible(shared, tmp_path):
    store = copy_store(shared, tmp_path / "store")
    before = {v: st.query(store, f"SELECT count(*) AS n FROM {v}").column("n")[0].as_py() for v in ("residues", "sequences", "repeats")}
    for table in ("residues", "sequences", "repeats"):
        part_dir = next(store.glob(f"{table}/model=*/run={shared.run_a}"))
        (part_dir / ".part-00009.parquet.123.tmp").write_bytes(b"PAR1 half a file")
        (part_dir / "part-00009.parquet.tmp").write_bytes(b"garbage")
    after = {v: st.query(store, f"SELECT count(*) AS n FROM {v}").column("n")[0].as_py() for v in before}
    assert after == before
    assert st.check_schema_versions(store)  # the garbage is not even looked at


def test_rerunning_the_same_input_does_not_duplicate_rows(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "small.fasta"
    fasta.write_text(">a\nGSAKLEVWQGSAKLEVWQGSAKLEVWQPPLKDEM\n>b\nMRLLPKVTAEGHWQNDFSYCIRPLE\n>c\nMKTAYIAKQR\n")
    store = tmp_path / "store"
    settings = ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=700)  # 3 shards
    first = run_screen(fasta, store, settings)
    count = "SELECT run, count(*) AS n, count(DISTINCT seq_id) AS d FROM {} GROUP BY run"
    assert st.query(store, count.format("sequences")).to_pylist() == [{"run": first.run_id, "n": 3, "d": 3}]
    resumed = run_screen(fasta, store, settings)  # every shard already done: nothing rewritten
    assert resumed.run_id == first.run_id and resumed.n_shards_skipped == 3
    assert st.query(store, count.format("sequences")).to_pylist() == [{"run": first.run_id, "n": 3, "d": 3}]
    second = run_screen(fasta, store, settings, overwrite=True)
    assert second.run_id == first.run_id and second.n_shards_skipped == 0
    assert st.query(store, count.format("sequences")).to_pylist() == [{"run": first.run_id, "n": 3, "d": 3}]
    residues = st.query(store, "SELECT count(*) AS n, count(DISTINCT (seq_id, pos)) AS d FROM residues").to_pylist()
    assert residues == [{"n": 34 + 25 + 10, "d": 34 + 25 + 10}] == [{"n": len(parquet_rows(store, "residues")), "d": 69}]
    assert len(list(store.glob("sequences/*/*/part-*.parquet"))) == 3 == len(second.files) // 3


def test_delete_run_removes_files_and_catalog_rows_together(shared, tmp_path):
    from plmscreen.screening.run.catalog import Catalog

    store = copy_store(shared, tmp_path / "store")
    with Catalog.open(None, store) as cat:  # run_screen registered both runs in STORE/catalog.sqlite
        for run in (shared.run_a, shared.run_b):
            assert cat.run_status(run).status == "done" and len(cat.input_sequences(run)) == len(SEQ_IDS)
    assert sorted(st.store_runs(store)) == sorted([shared.run_a, shared.run_b])
    result = cli("runs", "list", store)
    assert result.exit_code == 0 and shared.run_a in result.stdout and "3/3" in result.stdout

    result = cli("runs", "delete", store, shared.run_a, "--yes")
    assert result.exit_code == 0, result.output
    assert not list(store.rglob(f"run={shared.run_a}")) and not (store / "runs" / shared.run_a).exists()
    assert not (store / ".trash").exists()
    assert st.query(store, "SELECT DISTINCT run FROM residues").column("run").to_pylist() == [shared.run_b]
    assert st.query(store, "SELECT run FROM runs").column("run").to_pylist() == [shared.run_b]
    with Catalog.open(None, store) as cat:
        assert cat.run_status(shared.run_a) is None and cat.input_sequences(shared.run_a) == []
        assert cat.run_status(shared.run_b) is not None and len(cat.input_sequences(shared.run_b)) == 8

    assert cli("runs", "delete", store, shared.run_a, "--yes").exit_code == 2  # gone
    assert cli("runs", "delete", store, "../etc", "--yes").exit_code == 2
    result = cli("runs", "delete", store, shared.run_b, "--yes")
    assert result.exit_code == 0
    assert st.query(store, "SELECT count(*) AS n FROM residues").column("n")[0].as_py() == 0  # placeholder views
    assert not list((store / "residues").iterdir())


def test_a_damaged_database_file_is_rebuilt(shared, tmp_path):
    store = copy_store(shared, tmp_path / "store")
    (store / st.DATABASE_NAME).write_bytes(b"not a duckdb file at all" * 100)
    assert st.query(store, "SELECT count(*) AS n FROM sequences").column("n")[0].as_py() == 2 * len(SEQ_IDS)
