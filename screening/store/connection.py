"""Open a store for queries: a private, guarded, limited, read-only DuckDB connection to its views."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from plmscreen.screening.errors import QueryError, QueryRefused, StoreError
from plmscreen.screening.store.guard import (
    _BATCH_ROWS,
    MEMORY_LIMIT_ENV,
    QueryLimitExceeded,
    QueryLimits,
    _explain_duckdb_error,
    _first_line,
    _memory_limit_error,
    _time_limit_error,
    validate_sql,
)
from plmscreen.screening.store.layout import DATA_TABLES, RUNS_DIR, _store_dir, check_schema_versions
from plmscreen.screening.store.queries import bind_params, named_queries
from plmscreen.screening.store.views import (
    _CONFIG,
    _sql_literal_path,
    _view_statements,
    _write_views_database,
    refresh_views,
)


class Store:
    """A guarded, read-only DuckDB connection to a store's views. Use :func:`open_store`."""

    def __init__(self, root: Path, con: duckdb.DuckDBPyConnection, limits: QueryLimits | None = None,
                 private_dir: Path | None = None):
        self.root = root
        self.limits = limits or QueryLimits()
        self._con = con
        self._private_dir = private_dir  # the private views file and spill space: removed on close

    def close(self) -> None:
        self._con.close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sql(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """Run one user SELECT (validated by :func:`validate_sql`) and return the rows as Arrow."""
        validate_sql(sql)
        return self._run(sql, params)

    def named(self, name: str, **params: Any) -> pa.Table:
        queries = named_queries()
        if name not in queries:
            raise QueryError(f"no named query {name!r}; known: {', '.join(queries)}")
        named = queries[name]
        return self._run(validate_sql(named.sql), bind_params(named, params))

    def _run(self, sql: str, params: Mapping[str, Any] | None) -> pa.Table:
        """The rows, streamed in as Arrow batches under the limits: DuckDB's memory limit does not
        cover a result once it is Arrow, so the result's own size is held to the memory limit too;
        the time limit interrupts the connection from a timer thread."""
        limits = self.limits
        guard = threading.Lock()
        state = {"finished": False, "timed_out": False}

        def stop() -> None:
            with guard:  # never interrupt a later query on this connection
                if not state["finished"]:
                    state["timed_out"] = True
                    self._con.interrupt()

        timer = threading.Timer(limits.timeout_s, stop) if limits.timeout_s > 0 else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        reader = None
        try:
            relation = self._con.sql(sql, params=dict(params) if params else None)
            if relation is None:
                raise QueryRefused("the statement returned no rows: only SELECT queries are allowed")
            # An interrupt that lands between DuckDB's steps (binding done, execution not yet
            # started) finds no running query and is lost: the flag catches it at the next step.
            if state["timed_out"]:
                raise _time_limit_error(limits)
            reader = relation.to_arrow_reader(_BATCH_ROWS)
            batches, size, cap = [], 0, limits.memory_bytes
            for batch in reader:
                if state["timed_out"]:
                    raise _time_limit_error(limits)
                size += batch.nbytes
                if size > cap:
                    raise QueryLimitExceeded(
                        f"query stopped: its result is larger than the memory limit of {limits.memory}; add LIMIT or "
                        f"aggregate, or raise the limit with --memory-limit SIZE or {MEMORY_LIMIT_ENV}")
                batches.append(batch)
            return pa.Table.from_batches(batches, schema=reader.schema)
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            # Errors raised while the result streams in arrive as Arrow/OS errors with DuckDB's text.
            message = _first_line(exc)
            if state["timed_out"]:
                raise _time_limit_error(limits) from None
            if isinstance(exc, duckdb.OutOfMemoryException) or message.startswith("Out of Memory Error"):
                raise _memory_limit_error(limits, str(exc)) from None
            if isinstance(exc, duckdb.Error):
                raise _explain_duckdb_error(exc) from None
            raise QueryError(message) from None
        finally:
            with guard:
                state["finished"] = True
            if timer is not None:
                timer.cancel()
            if reader is not None:
                reader.close()  # a result stopped half-way must not hold the connection


def _lock_down(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """No file access outside the data directories, no extensions, no setting changes from now on."""
    allowed = ", ".join(f"'{_sql_literal_path(root / d)}/'" for d in (*DATA_TABLES, RUNS_DIR))
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _apply_limits(con: duckdb.DuckDBPyConnection, limits: QueryLimits, spill_dir: Path) -> None:
    """Set DuckDB's memory and spill limits on ``con``. DuckDB creates ``spill_dir`` when it first spills."""
    # The sizes passed _size_bytes: digits and a unit only, safe inside the quotes.
    con.execute(f"SET memory_limit = '{limits.memory.strip()}'")
    con.execute(f"SET max_temp_directory_size = '{limits.spill.strip()}'")
    con.execute(f"SET temp_directory = '{_sql_literal_path(spill_dir)}'")
    con.execute("SET parquet_metadata_cache = true")  # the views and the version check read the same footers


def open_store(store: str | Path, check_versions: bool = True, limits: QueryLimits | None = None) -> Store:
    """Open the store's views on a private read-only connection with limits, checked and guarded.

    The views come from the same ``.sql`` files as ``STORE/plmscreen.duckdb`` but are written to
    a private DuckDB file in a new directory under the system temp directory (with the spill
    space), which this Store alone opens and removes on close: no other process holding the
    store's file (readers, even a writer) can block or stale a query, and the store's directory
    may be read-only. ``STORE/plmscreen.duckdb`` is republished (:func:`refresh_views`) for other
    DuckDB clients when it is out of date and the store is writable. ``limits`` default to
    :meth:`QueryLimits.from_env`.

    Defence in depth: the connection is ``read_only``; DuckDB's external access is switched off
    except for the store's data directories (``allowed_directories``), extension
    auto-install/auto-load is off, and the configuration is locked (so the limits hold too); every
    user statement is also validated (:func:`validate_sql`)."""
    root = _store_dir(store)
    limits = QueryLimits.from_env() if limits is None else limits
    if os.access(root, os.W_OK):
        try:
            refresh_views(root)
        except StoreError as exc:  # the file is for other clients; this query does not need it
            print(f"plmscreen: warning: {exc}", file=sys.stderr)
    statements, fingerprint = _view_statements(root)
    try:
        private_dir = Path(tempfile.mkdtemp(prefix="plmscreen-query-"))
    except OSError as exc:
        raise StoreError(f"cannot create a working directory for the query in {tempfile.gettempdir()}: "
                         f"{exc.strerror or exc}; point TMPDIR to a writable directory") from None
    con = None
    try:
        views_db = private_dir / "views.duckdb"
        _write_views_database(views_db, statements, fingerprint, root)
        con = duckdb.connect(str(views_db), read_only=True, config=_CONFIG)
        _apply_limits(con, limits, private_dir / "spill")
        if check_versions:
            check_schema_versions(root, con=con)
        _lock_down(con, root)
    except (StoreError, duckdb.Error) as exc:
        if con is not None:
            con.close()
        shutil.rmtree(private_dir, ignore_errors=True)
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot set up the query connection: {_first_line(exc)}") from None
    return Store(root, con, limits, private_dir)


def query(store: str | Path, sql: str, params: Mapping[str, Any] | None = None,
          limits: QueryLimits | None = None) -> pa.Table:
    """One guarded SELECT on a store; QueryRefused / QueryError (QueryLimitExceeded) / SchemaVersionError on failure."""
    validate_sql(sql)  # refuse before touching the store
    with open_store(store, limits=limits) as st:
        return st.sql(sql, params)


def query_named(store: str | Path, name: str, params: Mapping[str, Any] | None = None,
                limits: QueryLimits | None = None) -> pa.Table:
    queries = named_queries()
    if name not in queries:
        raise QueryError(f"no named query {name!r}; known: {', '.join(queries)}")
    bind_params(queries[name], params or {})  # parameter errors before touching the store
    with open_store(store, limits=limits) as st:
        return st.named(name, **(params or {}))
