"""The run catalog: which runs exist, their shards' states and their input sequences.

SQLAlchemy 2 ORM tables, migrated by Alembic (``schema/migrations``; :meth:`Catalog.open`
upgrades a database to the newest revision). By default the catalog is a SQLite file inside the
store (``STORE/catalog.sqlite``); pass a URL for PostgreSQL
(``postgresql+psycopg://postgres@127.0.0.1:5432/test``; ``postgresql://`` is accepted too) so
several machines can share it.

Shard life cycle: ``pending`` → (:meth:`Catalog.claim_shard`) ``running`` → ``done`` or
``failed``; a failed shard can be claimed again. A claim is one conditional ``UPDATE ... WHERE
status IN (...)``: with any number of concurrent workers, or flows of the same run, exactly one
wins. A claim is a lease: its holder renews ``heartbeat_at`` (:meth:`Catalog.renew_claim`) while
it works, and ``claim_shard(..., stale_after=seconds)`` takes over a claim whose heartbeat is
older than that (its holder died). :meth:`Catalog.take_over_claim` takes over at once from a
holder known to be dead (a process on the same host that no longer exists).

Positions: ``first_seq``/``last_seq`` are 0-based, inclusive indexes into the run's valid input
records (in file order)."""


from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmscreen.schema.catalog import (
    _CLAIMABLE,
    _MAX_ERROR_CHARS,
    CATALOG_FILENAME,
    RUN_STATES,
    SHARD_STATES,
    InputSequence,
    Run,
    Shard,
    _utcnow,
    alembic_config,
)
from plmscreen.screening.errors import CatalogError
from sqlalchemy import (
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError


@dataclass(frozen=True)
class ShardSpec:
    """A shard to register: records ``first``..``last`` (0-based, inclusive) of the input and,
    optionally, their ``(seq_id, sha256)`` in order."""

    index: int
    first: int
    last: int
    sequences: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, spec: ShardSpec | Sequence) -> ShardSpec:
        if isinstance(spec, ShardSpec):
            return spec
        index, first, last, *rest = spec
        sequences = tuple((str(s), str(h)) for s, h in (rest[0] if rest else ()))
        return cls(int(index), int(first), int(last), sequences)


@dataclass(frozen=True)
class ShardInfo:
    run_id: str
    index: int
    first: int
    last: int
    status: str
    attempts: int
    output_files: list[str]
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    seconds: float | None
    error: str | None
    worker: str | None = None
    heartbeat_at: dt.datetime | None = None


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    input_path: str | None
    input_sha256: str | None
    model_name: str | None
    checkpoint_sha256: str | None
    parameters: dict | None
    plmscreen_version: str | None
    store_path: str | None
    shards: dict[str, int] = field(default_factory=dict)  # count per state, every state present
    n_sequences: int = 0
    calibration: dict | None = None  # the flag calibration the run used, or why none (run.json's too)
    model_family: str | None = None  # the backend (None in runs registered before catalog 0004)
    weight_sha256: dict | None = None  # weight file name -> sha256

    @property
    def n_shards(self) -> int:
        return sum(self.shards.values())

    @property
    def complete(self) -> bool:
        """Every registered shard is done (and there is at least one)."""
        return self.n_shards > 0 and self.shards["done"] == self.n_shards


def catalog_url(url: str | None, store: str | Path | None) -> str:
    """The SQLAlchemy URL: ``url`` as given (``postgresql://`` becomes ``postgresql+psycopg://``;
    a plain path is a SQLite file), or ``STORE/catalog.sqlite``."""
    if url is None:
        if store is None:
            raise CatalogError("no catalog URL and no store: give one of them")
        path = Path(store).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path / CATALOG_FILENAME}"
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url

def _sqlite_engine(url: str, echo: bool) -> Engine:
    engine = create_engine(url, echo=echo, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, emit BEGIN (see "begin" below); enforce foreign keys.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Take the write lock up front: two writers never deadlock on a read→write lock upgrade
        # (SQLite would fail one of them at once instead of waiting).
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Catalog:
    """The run catalog. Open with :meth:`open`; every method is one short transaction, safe to
    call from several threads or processes (each with its own ``Catalog``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, store: str | Path | None = None, *, schema: str | None = None,
             upgrade: bool = True, echo: bool = False) -> Catalog:
        """Open (creating and migrating to the newest revision if ``upgrade``) a catalog.

        ``url`` None means ``STORE/catalog.sqlite``. ``schema`` (PostgreSQL only) keeps the tables
        in that schema, created if missing: several catalogs can share one database."""
        full = catalog_url(url, store)
        try:
            backend = make_url(full).get_backend_name()
        except Exception as exc:  # noqa: BLE001 - any parse error is a bad URL
            raise CatalogError(f"invalid catalog URL {url!r}: {exc}") from None
        if backend == "sqlite":
            if schema:
                raise CatalogError("schema= is for PostgreSQL catalogs only")
            engine = _sqlite_engine(full, echo)
        elif backend == "postgresql":
            connect_args: dict[str, Any] = {"connect_timeout": 10}
            if schema:
                if not _SCHEMA_NAME.fullmatch(schema):
                    raise CatalogError(f"invalid schema name {schema!r}")
                connect_args["options"] = f"-csearch_path={schema}"
            engine = create_engine(full, echo=echo, pool_pre_ping=True, connect_args=connect_args)
        else:
            raise CatalogError(f"unsupported catalog database {backend!r}: use SQLite or PostgreSQL")
        catalog = cls(engine)
        try:
            if schema:
                catalog._create_schema(schema)
            if upgrade:
                catalog.upgrade()
        except (OperationalError, DBAPIError) as exc:
            engine.dispose()
            raise CatalogError(f"cannot open catalog {engine.url.render_as_string(hide_password=True)}: "
                               f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}") from None
        except Exception:
            engine.dispose()
            raise
        return catalog

    def _create_schema(self, schema: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        except (IntegrityError, ProgrammingError):
            pass  # created concurrently by another process

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the database to ``revision`` (Alembic), serialised across processes."""
        from alembic import command
        from alembic.util.exc import CommandError

        cfg = alembic_config()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7390142501)"))  # one migrator at a time
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, revision)
            except CommandError as exc:
                raise CatalogError(f"cannot migrate the catalog: {exc} (written by a newer plmscreen?)") from None

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    def _insert(self, conn: Connection, table):
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @staticmethod
    def _shard_info(row) -> ShardInfo:
        return ShardInfo(row.run_id, row.shard_index, row.first_seq, row.last_seq, row.status, row.attempts,
                         list(row.output_files or []), row.started_at, row.finished_at, row.seconds, row.error,
                         row.worker, row.heartbeat_at)

    def _require_shard(self, conn: Connection, run_id: str, index: int) -> None:
        found = conn.execute(select(Shard.id).where(Shard.run_id == run_id, Shard.shard_index == index)).first()
        if found is None:
            raise CatalogError(f"run {run_id} has no shard {index}")

    # -- runs ------------------------------------------------------------------------------

    def register_run(self, run_id: str, *, input_path: str | Path | None = None, input_sha256: str | None = None,
                     model_name: str | None = None, checkpoint_sha256: str | None = None,
                     parameters: dict | None = None, plmscreen_version: str | None = None,
                     store_path: str | Path | None = None, calibration: dict | None = None,
                     model_family: str | None = None, weight_sha256: dict | None = None) -> bool:
        """Record a run; True if it is new. An existing run is kept (its shards resume); if it had
        failed or was cancelled it becomes ``running`` again. Run ids name the input, checkpoint and
        parameters, so a different input or checkpoint sha256 under the same id is an error."""
        values = dict(id=run_id, status="running", started_at=_utcnow(),
                      input_path=None if input_path is None else str(input_path), input_sha256=input_sha256,
                      model_name=model_name, checkpoint_sha256=checkpoint_sha256, parameters=parameters,
                      plmscreen_version=plmscreen_version, store_path=None if store_path is None else str(store_path),
                      calibration=calibration, model_family=model_family, weight_sha256=weight_sha256)
        with self.engine.begin() as conn:
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING here.
            inserted = conn.execute(self._insert(conn, Run.__table__).values(**values)
                                    .on_conflict_do_nothing(index_elements=["id"]).returning(Run.id)).first()
            if inserted is not None:
                return True
            row = conn.execute(select(Run.__table__).where(Run.id == run_id)).one()
            for name in ("input_sha256", "checkpoint_sha256"):
                given, stored = values[name], getattr(row, name)
                if given is not None and stored is not None and given != stored:
                    raise CatalogError(f"run {run_id} is registered with {name} {stored}, not {given}")
            conn.execute(update(Run).where(Run.id == run_id, Run.status.in_(("failed", "cancelled")))
                         .values(status="running", finished_at=None))
            return False

    def finish_run(self, run_id: str, status: str = "done") -> None:
        """Mark a run done, failed or cancelled. ``done`` requires every shard to be done."""
        if status not in RUN_STATES or status == "running":
            raise CatalogError(f"finish_run status must be one of done, failed, cancelled; got {status!r}")
        with self.engine.begin() as conn:
            if conn.execute(select(Run.id).where(Run.id == run_id)).first() is None:
                raise CatalogError(f"no run {run_id} in the catalog")
            if status == "done":
                unfinished = conn.execute(select(func.count()).select_from(Shard)
                                          .where(Shard.run_id == run_id, Shard.status != "done")).scalar_one()
                if unfinished:
                    raise CatalogError(f"run {run_id} has {unfinished} shards not done")
            conn.execute(update(Run).where(Run.id == run_id).values(status=status, finished_at=_utcnow()))

    def run_status(self, run_id: str) -> RunStatus | None:
        runs = self._runs(run_id)
        return runs[0] if runs else None

    def list_runs(self) -> list[RunStatus]:
        """Every run, most recently started first."""
        return self._runs(None)

    def _runs(self, run_id: str | None) -> list[RunStatus]:
        with self.engine.connect() as conn:
            query = select(Run.__table__).order_by(Run.started_at.desc(), Run.id)
            counts = select(Shard.run_id, Shard.status, func.count()).group_by(Shard.run_id, Shard.status)
            n_seq = select(InputSequence.run_id, func.count()).group_by(InputSequence.run_id)
            if run_id is not None:
                query = query.where(Run.id == run_id)
                counts = counts.where(Shard.run_id == run_id)
                n_seq = n_seq.where(InputSequence.run_id == run_id)
            runs = conn.execute(query).all()
            shard_counts: dict[str, dict[str, int]] = {}
            for rid, status, n in conn.execute(counts):
                shard_counts.setdefault(rid, {})[status] = n
            sequences = dict(conn.execute(n_seq).all())
        return [
            RunStatus(r.id, r.status, r.started_at, r.finished_at, r.input_path, r.input_sha256, r.model_name,
                      r.checkpoint_sha256, r.parameters, r.plmscreen_version, r.store_path,
                      {s: shard_counts.get(r.id, {}).get(s, 0) for s in SHARD_STATES}, sequences.get(r.id, 0),
                      calibration=r.calibration, model_family=r.model_family, weight_sha256=r.weight_sha256)
            for r in runs
        ]

    def delete_run(self, run_id: str) -> bool:
        """Remove a run, its shards and input sequences (one transaction); True if it existed."""
        with self.engine.begin() as conn:
            conn.execute(delete(InputSequence).where(InputSequence.run_id == run_id))
            conn.execute(delete(Shard).where(Shard.run_id == run_id))
            return conn.execute(delete(Run).where(Run.id == run_id)).rowcount > 0

    # -- shards ----------------------------------------------------------------------------

    def add_shards(self, run_id: str, shards: Iterable[ShardSpec | Sequence],
                   sequences_of: Callable[[int], Iterable[tuple[str, str]]] | None = None) -> int:
        """Register shards ``(index, first, last, [(seq_id, sha256), ...])``; returns how many were
        new. Idempotent: shards already registered with the same range are left as they are (state
        included); a different range for an existing index is an error.

        ``sequences_of(index)`` gives a shard's ``(seq_id, sha256)`` instead, read only for shards
        this call inserts and streamed into the same transaction (a planner that does not hold the
        input's records); a count other than the shard's range rolls everything back."""
        specs = [ShardSpec.of(s) for s in shards]
        for spec in specs:
            if spec.first > spec.last or spec.first < 0:
                raise CatalogError(f"shard {spec.index}: bad range {spec.first}..{spec.last}")
            if spec.sequences and len(spec.sequences) != spec.last - spec.first + 1:
                raise CatalogError(f"shard {spec.index}: {len(spec.sequences)} sequences for range "
                                   f"{spec.first}..{spec.last}")
        if len({s.index for s in specs}) != len(specs):
            raise CatalogError("duplicate shard index in add_shards")
        with self.engine.begin() as conn:
            if conn.execute(select(Run.id).where(Run.id == run_id)).first() is None:
                raise CatalogError(f"no run {run_id} in the catalog: register_run first")
            stored = self._shard_ranges(conn, run_id)
            self._check_ranges(run_id, specs, stored)
            inserted: set[int] = set()
            new = [s for s in specs if s.index not in stored]
            if new:
                # RETURNING names the shards this call inserted (a concurrent caller may win some).
                result = conn.execute(self._insert(conn, Shard.__table__).on_conflict_do_nothing(
                    index_elements=["run_id", "shard_index"]).returning(Shard.shard_index),
                    [dict(run_id=run_id, shard_index=s.index, first_seq=s.first, last_seq=s.last,
                          status="pending", attempts=0) for s in new])
                inserted = {row[0] for row in result}
                if len(inserted) < len(new):
                    self._check_ranges(run_id, specs, self._shard_ranges(conn, run_id))
            insert = self._insert(conn, InputSequence.__table__).on_conflict_do_nothing(index_elements=["run_id", "seq_id"])
            rows: list[dict] = []
            for s in specs:
                if s.index not in inserted:
                    continue
                count = 0
                for seq_id, sha in (s.sequences if sequences_of is None else sequences_of(s.index)):
                    rows.append(dict(run_id=run_id, seq_id=seq_id, shard_index=s.index, sequence_sha256=sha))
                    count += 1
                    if len(rows) == 5000:
                        conn.execute(insert, rows)
                        rows = []
                if sequences_of is not None and count != s.last - s.first + 1:
                    raise CatalogError(f"shard {s.index}: {count} sequences for range {s.first}..{s.last}")
            if rows:
                conn.execute(insert, rows)
            return len(inserted)

    @staticmethod
    def _shard_ranges(conn: Connection, run_id: str) -> dict[int, tuple[int, int]]:
        query = select(Shard.shard_index, Shard.first_seq, Shard.last_seq).where(Shard.run_id == run_id)
        return {r.shard_index: (r.first_seq, r.last_seq) for r in conn.execute(query)}

    @staticmethod
    def _check_ranges(run_id: str, specs: list[ShardSpec], stored: dict[int, tuple[int, int]]) -> None:
        for spec in specs:
            if spec.index in stored and stored[spec.index] != (spec.first, spec.last):
                first, last = stored[spec.index]
                raise CatalogError(f"run {run_id} shard {spec.index} is registered as {first}..{last}, "
                                   f"not {spec.first}..{spec.last}")

    def shards(self, run_id: str) -> list[ShardInfo]:
        """Every shard of a run, by index."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Shard.__table__).where(Shard.run_id == run_id).order_by(Shard.shard_index))
            return [self._shard_info(r) for r in rows]

    def shard(self, run_id: str, index: int) -> ShardInfo:
        """One shard of a run (a task needs only its own row, not the run's thousands)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Shard.__table__).where(Shard.run_id == run_id, Shard.shard_index == index)).first()
        if row is None:
            raise CatalogError(f"run {run_id} has no shard {index}")
        return self._shard_info(row)

    def unfinished_shards(self, run_id: str) -> list[ShardInfo]:
        """Shards not done: waiting, failed, or held by a worker (alive, or dead and to be taken over)."""
        return [s for s in self.shards(run_id) if s.status != "done"]

    def pending_shards(self, run_id: str, include_failed: bool = True) -> list[ShardInfo]:
        """Shards waiting for a worker (pending, and failed ones unless ``include_failed`` is False)."""
        states = _CLAIMABLE if include_failed else ("pending",)
        return [s for s in self.shards(run_id) if s.status in states]

    def input_sequences(self, run_id: str, shard_index: int | None = None) -> list[tuple[str, int, str]]:
        """``(seq_id, shard_index, sha256)`` of a run's input sequences, in shard order."""
        with self.engine.connect() as conn:
            query = (select(InputSequence.seq_id, InputSequence.shard_index, InputSequence.sequence_sha256)
                     .where(InputSequence.run_id == run_id).order_by(InputSequence.shard_index, InputSequence.id))
            if shard_index is not None:
                query = query.where(InputSequence.shard_index == shard_index)
            return [tuple(r) for r in conn.execute(query)]

    def claim_shard(self, run_id: str, index: int, *, stale_after: float | None = None,
                    max_attempts: int | None = None, worker: str | None = None) -> bool:
        """Atomically move a pending or failed shard to ``running`` and count the attempt; True if
        this caller won it. ``stale_after`` (seconds) also takes over a ``running`` claim whose
        holder has not renewed it for that long (it presumably died). ``max_attempts`` refuses
        shards that were already tried that many times. ``worker`` ("host:pid") says who holds the
        claim: the status command shows it, and an operator can find the process."""
        now = _utcnow()
        claimable = Shard.status.in_(_CLAIMABLE)
        if stale_after is not None:
            last_sign_of_life = func.coalesce(Shard.heartbeat_at, Shard.started_at)
            claimable = or_(claimable, and_(Shard.status == "running",
                                            last_sign_of_life < now - dt.timedelta(seconds=stale_after)))
        condition = [Shard.run_id == run_id, Shard.shard_index == index, claimable]
        if max_attempts is not None:
            condition.append(Shard.attempts < max_attempts)
        return self._claim(run_id, index, condition, worker, now)

    def take_over_claim(self, run_id: str, index: int, dead_worker: str, *, worker: str | None = None) -> bool:
        """Take a ``running`` claim from ``dead_worker`` at once (the caller knows it is dead);
        False if the shard is no longer held by it (it finished, or someone else took it over)."""
        condition = [Shard.run_id == run_id, Shard.shard_index == index, Shard.status == "running",
                     Shard.worker == dead_worker]
        return self._claim(run_id, index, condition, worker, _utcnow())

    def _claim(self, run_id: str, index: int, condition: list, worker: str | None, now: dt.datetime) -> bool:
        with self.engine.begin() as conn:
            won = conn.execute(update(Shard).where(*condition).values(
                status="running", attempts=Shard.attempts + 1, started_at=now, heartbeat_at=now,
                finished_at=None, seconds=None, error=None, worker=worker)).rowcount
            if not won:
                self._require_shard(conn, run_id, index)
            return won == 1

    def renew_claim(self, run_id: str, index: int, worker: str | None) -> bool:
        """Renew the lease of a ``running`` claim held by ``worker``; False if it holds it no more."""
        with self.engine.begin() as conn:
            return conn.execute(update(Shard).where(
                Shard.run_id == run_id, Shard.shard_index == index, Shard.status == "running",
                Shard.worker == worker).values(heartbeat_at=_utcnow())).rowcount == 1

    def mark_shard_done(self, run_id: str, index: int, files: Sequence[str | Path] = (),
                        seconds: float | None = None) -> None:
        """Record a shard's output files and time; it is done."""
        with self.engine.begin() as conn:
            changed = conn.execute(update(Shard).where(Shard.run_id == run_id, Shard.shard_index == index).values(
                status="done", output_files=[str(f) for f in files], finished_at=_utcnow(),
                seconds=None if seconds is None else float(seconds), error=None)).rowcount
            if not changed:
                raise CatalogError(f"run {run_id} has no shard {index}")

    def mark_shard_failed(self, run_id: str, index: int, error: str) -> bool:
        """Record a shard's failure (it can be claimed again); False if it was already done (a
        late report from a worker whose stale claim was taken over)."""
        with self.engine.begin() as conn:
            changed = conn.execute(update(Shard).where(Shard.run_id == run_id, Shard.shard_index == index,
                                                       Shard.status != "done").values(
                status="failed", finished_at=_utcnow(), error=str(error)[:_MAX_ERROR_CHARS])).rowcount
            if not changed:
                self._require_shard(conn, run_id, index)
            return changed == 1

    def reset_running(self, run_id: str, older_than: float | None = None) -> int:
        """Return ``running`` shards (started more than ``older_than`` seconds ago, or all) to
        ``pending``; call it when a flow restarts after its workers died. Returns how many."""
        condition = [Shard.run_id == run_id, Shard.status == "running"]
        if older_than is not None:
            condition.append(Shard.started_at < _utcnow() - dt.timedelta(seconds=older_than))
        with self.engine.begin() as conn:
            return conn.execute(update(Shard).where(*condition).values(status="pending")).rowcount
