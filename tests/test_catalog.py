"""The run catalog: the same tests on SQLite and on the local PostgreSQL (each test in its own
PostgreSQL schema). PostgreSQL tests are skipped, with the reason, only when the server does not
answer and this is not CI (tests/postgres.py)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from plmscreen.schema.catalog import CATALOG_FILENAME, Base, alembic_config

from plmscreen.screening.errors import CatalogError

from plmscreen.screening.run.catalog import Catalog, ShardSpec, catalog_url
from postgres import PG_URL, fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """A factory opening Catalogs (separate engines) on one fresh database, and its description."""
    opened: list[Catalog] = []
    if request.param == "sqlite":
        store = tmp_path / "store"

        def factory(**kwargs) -> Catalog:
            cat = Catalog.open(None, store, **kwargs)
            opened.append(cat)
            return cat

        yield factory
    else:
        with fresh_schema() as schema:

            def factory(**kwargs) -> Catalog:
                cat = Catalog.open(PG_URL, schema=schema, **kwargs)
                opened.append(cat)
                return cat

            yield factory
            for cat in opened:
                cat.close()
    for cat in opened:
        cat.close()


def _shards(n: int, per: int = 3) -> list[tuple]:
    return [(i, i * per, i * per + per - 1, [(f"s{i * per + k}", f"{i * per + k:064x}") for k in range(per)]) for i in range(n)]


def test_open_migrates_to_head_and_matches_the_models(backend):
    from alembic.script import ScriptDirectory

    cat = backend()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert cat.revision() == head == "0005"
    with cat.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) >= {"runs", "shards", "input_sequences", "alembic_version"}
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    again = backend()  # opening an up-to-date catalog changes nothing
    assert again.revision() == head


def test_migrations_downgrade_and_upgrade(backend):
    cat = backend()
    cat.register_run("r0")
    cfg = alembic_config()
    with cat.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with cat.engine.connect() as conn:
        assert "runs" not in inspect(conn).get_table_names()
    cat.upgrade()
    assert cat.revision() == "0005" and cat.list_runs() == []


def test_upgrade_from_0001_keeps_runs_and_shards(backend):
    """A catalog written by the first release gains the worker column without losing anything."""
    cat = backend()
    cfg = alembic_config()
    with cat.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with cat.engine.begin() as conn:
        assert "worker" not in {c["name"] for c in inspect(conn).get_columns("shards")}
        conn.exec_driver_sql("INSERT INTO runs (id, status, started_at) VALUES ('old', 'running', '2026-11-25 10:00:00')")
        conn.exec_driver_sql("INSERT INTO shards (run_id, shard_index, first_seq, last_seq, status, attempts) "
                             "VALUES ('old', 0, 0, 4, 'done', 1)")
    cat.upgrade()
    assert cat.revision() == "0005"
    old = cat.shard("old", 0)
    assert (old.status, old.attempts, old.worker, old.heartbeat_at) == ("done", 1, None, None)


def test_register_run_is_new_once_and_checks_identity(backend):
    cat = backend()
    meta = dict(input_path="/data/in.fasta", input_sha256="a" * 64, model_name="m", checkpoint_sha256="c" * 64,
                parameters={"flag": {"min_inflation_factor": 1.1}}, plmscreen_version="0.1.0", store_path="/s")
    assert cat.register_run("run1", **meta) is True
    assert cat.register_run("run1", **meta) is False
    status = cat.run_status("run1")
    assert status.status == "running" and status.parameters == meta["parameters"]
    assert status.input_path == "/data/in.fasta" and status.model_name == "m" and status.store_path == "/s"
    assert status.started_at.tzinfo is not None
    assert abs(status.started_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    with pytest.raises(CatalogError, match="checkpoint_sha256"):
        cat.register_run("run1", checkpoint_sha256="d" * 64)
    assert cat.run_status("nope") is None


def test_add_shards_is_idempotent_and_records_input_sequences(backend):
    cat = backend()
    cat.register_run("run1")
    assert cat.add_shards("run1", _shards(3)) == 3
    assert cat.add_shards("run1", _shards(3)) == 0
    assert cat.add_shards("run1", _shards(4)) == 1
    assert [s.index for s in cat.shards("run1")] == [0, 1, 2, 3]
    assert [(s.first, s.last, s.status, s.attempts) for s in cat.shards("run1")][1] == (3, 5, "pending", 0)
    seqs = cat.input_sequences("run1")
    assert len(seqs) == 12 and seqs[0] == ("s0", 0, f"{0:064x}") and seqs[-1] == ("s11", 3, f"{11:064x}")
    assert [s for s, _, _ in cat.input_sequences("run1", shard_index=2)] == ["s6", "s7", "s8"]
    assert cat.run_status("run1").n_sequences == 12
    with pytest.raises(CatalogError, match="registered as 0..2, not 0..5"):
        cat.add_shards("run1", [(0, 0, 5)])
    with pytest.raises(CatalogError, match="no run"):
        cat.add_shards("ghost", _shards(1))
    with pytest.raises(CatalogError, match="sequences for range"):
        cat.add_shards("run1", [ShardSpec(9, 0, 2, (("x", "y"),))])
    assert len(cat.shards("run1")) == 4  # nothing half-added


def test_shard_life_cycle(backend):
    cat = backend()
    cat.register_run("run1")
    cat.add_shards("run1", _shards(2))
    assert [s.index for s in cat.pending_shards("run1")] == [0, 1]
    assert cat.claim_shard("run1", 0) is True
    assert cat.claim_shard("run1", 0) is False  # already running
    assert [s.index for s in cat.pending_shards("run1")] == [1]
    cat.mark_shard_done("run1", 0, ["/s/residues/p0.parquet", "/s/sequences/p0.parquet"], seconds=1.25)
    done = cat.shards("run1")[0]
    assert (done.status, done.attempts, done.seconds) == ("done", 1, 1.25)
    assert done.output_files == ["/s/residues/p0.parquet", "/s/sequences/p0.parquet"]
    assert done.finished_at >= done.started_at
    assert cat.claim_shard("run1", 0) is False  # done shards stay done
    assert cat.claim_shard("run1", 1) is True
    assert cat.mark_shard_failed("run1", 1, "CUDA out of memory") is True
    failed = cat.shards("run1")[1]
    assert (failed.status, failed.error, failed.attempts) == ("failed", "CUDA out of memory", 1)
    assert [s.index for s in cat.pending_shards("run1")] == [1]
    assert cat.pending_shards("run1", include_failed=False) == []
    assert cat.claim_shard("run1", 1, max_attempts=1) is False
    assert cat.claim_shard("run1", 1, worker="node7:4242") is True
    assert cat.shards("run1")[1].attempts == 2 and cat.shards("run1")[1].error is None
    assert cat.shard("run1", 1).worker == "node7:4242" and cat.shard("run1", 0).worker is None
    assert cat.mark_shard_failed("run1", 0, "late report") is False  # never downgrades a done shard
    with pytest.raises(CatalogError, match="no shard 7"):
        cat.claim_shard("run1", 7)
    with pytest.raises(CatalogError, match="no shard 7"):
        cat.mark_shard_done("run1", 7, [])
    with pytest.raises(CatalogError, match="not done"):
        cat.finish_run("run1", "done")
    cat.mark_shard_done("run1", 1, [], seconds=2.0)
    cat.finish_run("run1", "done")
    status = cat.run_status("run1")
    assert status.status == "done" and status.complete and status.shards == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    assert status.finished_at is not None


def test_running_claims_are_recoverable(backend):
    cat = backend()
    cat.register_run("run1")
    cat.add_shards("run1", _shards(3))
    assert all(cat.claim_shard("run1", i) for i in range(3))
    assert cat.claim_shard("run1", 0, stale_after=3600) is False  # a fresh claim is respected
    assert cat.claim_shard("run1", 0, stale_after=0) is True  # an old one is taken over
    assert cat.shards("run1")[0].attempts == 2
    assert cat.reset_running("run1", older_than=3600) == 0
    assert cat.reset_running("run1") == 3
    assert [s.index for s in cat.pending_shards("run1")] == [0, 1, 2]
    assert cat.claim_shard("run1", 1) is True


def test_failed_run_resumes_when_registered_again(backend):
    cat = backend()
    cat.register_run("run1")
    cat.finish_run("run1", "failed")
    assert cat.run_status("run1").status == "failed"
    assert cat.register_run("run1") is False
    status = cat.run_status("run1")
    assert status.status == "running" and status.finished_at is None
    with pytest.raises(CatalogError, match="must be one of"):
        cat.finish_run("run1", "great")


def test_list_and_delete_runs(backend):
    cat = backend()
    for run in ("a", "b"):
        cat.register_run(run)
        cat.add_shards(run, _shards(2))
    assert [r.run_id for r in cat.list_runs()] == ["b", "a"]  # newest first
    assert cat.delete_run("a") is True
    assert cat.delete_run("a") is False
    assert [r.run_id for r in cat.list_runs()] == ["b"]
    assert cat.shards("a") == [] and cat.input_sequences("a") == []
    assert len(cat.shards("b")) == 2 and len(cat.input_sequences("b")) == 6
    assert cat.register_run("a") is True  # the id can be used again


def test_two_writers_claim_each_shard_exactly_once(backend):
    n_shards = 40
    setup = backend()
    setup.register_run("run1")
    setup.add_shards("run1", _shards(n_shards, per=1))
    writers = [backend(), backend()]  # separate engines, separate connections
    claimed: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        try:
            cat = writers[k]
            barrier.wait()
            for index in range(n_shards):
                if cat.claim_shard("run1", index):
                    claimed[k].append(index)
                    cat.mark_shard_done("run1", index, [f"part-{index:05d}.parquet"], seconds=0.01)
            # a second pass finds nothing left to claim
            assert not any(cat.claim_shard("run1", i) for i in range(n_shards))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(claimed[0] + claimed[1]) == list(range(n_shards))  # each exactly once
    assert not set(claimed[0]) & set(claimed[1])
    shards = setup.shards("run1")
    assert all(s.status == "done" and s.attempts == 1 for s in shards)
    setup.finish_run("run1")


def test_concurrent_add_shards_and_register_are_idempotent(backend):
    writers = [backend(), backend()]
    results: list = []
    barrier = threading.Barrier(2)

    def work(cat: Catalog) -> None:
        barrier.wait()
        results.append((cat.register_run("run1"), cat.add_shards("run1", _shards(10))))

    threads = [threading.Thread(target=work, args=(c,)) for c in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r[0] for r in results) == [False, True]
    assert sum(r[1] for r in results) == 10
    assert len(writers[0].shards("run1")) == 10 and len(writers[0].input_sequences("run1")) == 30


def test_default_catalog_lives_in_the_store(tmp_path):
    store = tmp_path / "store"
    with Catalog.open(None, store) as cat:
        cat.register_run("r")
    assert (store / CATALOG_FILENAME).is_file()
    assert catalog_url("postgresql://u@h/db", None) == "postgresql+psycopg://u@h/db"
    assert catalog_url(str(tmp_path / "c.sqlite"), None) == f"sqlite:///{tmp_path / 'c.sqlite'}"
    with pytest.raises(CatalogError, match="no catalog URL and no store"):
        Catalog.open(None, None)
    with pytest.raises(CatalogError, match="unsupported catalog database"):
        Catalog.open("mysql://x@localhost/db")


def test_status_command_names_the_worker_of_running_shards(tmp_path):
    from typer.testing import CliRunner

    from plmscreen.cli.main import app

    store = tmp_path / "store"
    with Catalog.open(None, store) as cat:
        cat.register_run("run1")
        cat.add_shards("run1", _shards(3))
        cat.claim_shard("run1", 0, worker="node7:4242")
        cat.mark_shard_done("run1", 0, [], seconds=1.0)
        cat.claim_shard("run1", 1, worker="node8:99")
        cat.claim_shard("run1", 2, worker="node9:7")
        cat.mark_shard_failed("run1", 2, "CUDA out of memory")
    shown = CliRunner().invoke(app, ["status", str(store)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any("shard     1" in line and "running" in line and "on node8:99" in line for line in lines)
    assert any("shard     2" in line and "failed" in line and "CUDA out of memory" in line for line in lines)
    assert not any("shard     0" in line for line in lines)  # done shards only with --run


def test_a_claim_is_a_lease_renewed_by_its_holder(backend):
    cat = backend()
    cat.register_run("run1")
    cat.add_shards("run1", _shards(2))
    assert cat.claim_shard("run1", 0, worker="node1:10") is True
    with cat.engine.begin() as conn:  # the holder went quiet an hour ago
        conn.execute(text("UPDATE shards SET heartbeat_at = :t, started_at = :t WHERE shard_index = 0"),
                     {"t": dt.datetime(2026, 1, 1)})
    assert cat.renew_claim("run1", 0, "node1:10") is True  # it was alive after all: renewed now
    assert cat.claim_shard("run1", 0, stale_after=600, worker="node2:20") is False  # renewed: still held
    assert cat.renew_claim("run1", 0, "node2:20") is False  # not the holder
    with cat.engine.begin() as conn:
        conn.execute(text("UPDATE shards SET heartbeat_at = :t WHERE shard_index = 0"), {"t": dt.datetime(2026, 1, 1)})
    assert cat.claim_shard("run1", 0, stale_after=600, worker="node2:20") is True  # lease expired: taken over
    shard = cat.shard("run1", 0)
    assert (shard.worker, shard.attempts) == ("node2:20", 2)
    assert cat.renew_claim("run1", 0, "node1:10") is False  # the old holder has lost it


def test_take_over_only_from_the_named_dead_holder(backend):
    cat = backend()
    cat.register_run("run1")
    cat.add_shards("run1", _shards(1))
    assert cat.claim_shard("run1", 0, worker="host:111") is True
    assert cat.take_over_claim("run1", 0, "host:999", worker="host:222") is False  # not who holds it
    assert cat.take_over_claim("run1", 0, "host:111", worker="host:222") is True
    assert cat.take_over_claim("run1", 0, "host:111", worker="host:333") is False  # already taken over
    assert cat.shard("run1", 0).worker == "host:222"
    cat.mark_shard_done("run1", 0, [])
    assert cat.take_over_claim("run1", 0, "host:222", worker="host:333") is False  # done stays done
