"""The DuckDB views over a store's Parquet files, published atomically as STORE/plmscreen.duckdb."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA, VERDICTS_SCHEMA
from plmscreen.screening.errors import StoreError
from plmscreen.screening.store.guard import _first_line
from plmscreen.screening.store.layout import (
    _INFO_TABLE,
    _STORE_TOKEN,
    DATABASE_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    VIEWS_DIR,
    _store_dir,
)

# Views


def _sql_literal_path(path: Path) -> str:
    return str(path).replace("'", "''")


_TABLE_SCHEMAS = {"residues": RESIDUES_SCHEMA, "sequences": SEQUENCES_SCHEMA, "repeats": REPEATS_SCHEMA}
# Columns a view adds after its table's own: sequences joins the run's verdicts (02_sequences.sql).
_JOINED = {"sequences": pa.schema([f for f in VERDICTS_SCHEMA if f.name not in ("run", "seq_id")])}


@functools.lru_cache(maxsize=None)
def _empty_view_sql(view: str) -> str:
    """The view of a table with no file yet: no rows, the partition columns and the columns of its
    Arrow schema (the data contract, schema.arrow), typed as DuckDB reads them from Parquet."""
    con = duckdb.connect()
    try:
        schema = _TABLE_SCHEMAS[view]
        for joined in _JOINED.get(view, []):
            schema = schema.append(joined)
        empty = schema.empty_table()  # noqa: F841 - read by name below
        columns = con.execute("DESCRIBE SELECT * FROM empty").fetchall()
    finally:
        con.close()
    typed = ", ".join(["NULL::VARCHAR AS run", "NULL::VARCHAR AS model",
                       *(f'NULL::{type_} AS "{name}"' for name, type_, *_ in columns)])
    return (f"-- {view} while the store holds no {view} file yet: generated from schema.arrow.\n"
            f"CREATE OR REPLACE VIEW {view} AS\nSELECT * FROM (SELECT {typed}) WHERE false;\n")


def _view_statements(store: Path) -> tuple[list[tuple[str, str]], str]:
    """(file name, SQL) per view, with the store path substituted, and a fingerprint of the set.

    A view whose source glob matches no file yet has no rows and the same columns: generated from
    the table's Arrow schema (residues, sequences, repeats) or read from its ``.empty.sql`` twin
    (runs), so queries work on a store without runs."""
    statements = []
    for path in sorted(VIEWS_DIR.glob("*.sql")):
        if path.name.endswith(".empty.sql"):
            continue
        sql = path.read_text()
        globs = re.findall(rf"'{_STORE_TOKEN}/([^']*)'", sql)
        if any(next(iter(store.glob(g)), None) is None for g in globs):
            view = re.search(r"CREATE OR REPLACE VIEW (\w+)", sql)[1]
            empty = path.with_name(path.name[: -len(".sql")] + ".empty.sql")
            if view in _TABLE_SCHEMAS:
                path, sql = empty, _empty_view_sql(view)
            elif empty.exists():
                path, sql = empty, empty.read_text()
        statements.append((path.name, sql.replace(_STORE_TOKEN, _sql_literal_path(store))))
    digest = hashlib.sha256()
    digest.update(f"{duckdb.__version__}\n{sorted(SUPPORTED_SCHEMA_VERSIONS)}\n".encode())
    for name, sql in statements:
        digest.update(f"{name}\n{sql}\n".encode())
    return statements, digest.hexdigest()


_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def _fingerprint_of(con: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = con.execute(f"SELECT fingerprint FROM {_INFO_TABLE}").fetchone()
        return row[0] if row else None
    except duckdb.Error:
        return None


def _published_fingerprint(db: Path) -> str | None:
    """The fingerprint of the views in ``db``; None if it is missing, unreadable or cannot be opened."""
    if not db.exists():
        return None
    try:
        con = duckdb.connect(str(db), read_only=True, config=_CONFIG)
    except duckdb.Error:
        return None  # damaged, another storage version, or open here with another configuration
    try:
        return _fingerprint_of(con)
    finally:
        con.close()


def _create_views(con: duckdb.DuckDBPyConnection, statements: list[tuple[str, str]]) -> None:
    for name, sql in statements:
        try:
            con.execute(sql)
        except duckdb.Error as exc:
            raise StoreError(f"view {name}: {_first_line(exc)}") from None


def _write_views_database(path: Path, statements: list[tuple[str, str]], fingerprint: str, root: Path) -> None:
    """A new DuckDB file at ``path`` holding the views and their fingerprint (nothing else)."""
    try:
        con = duckdb.connect(str(path), config=_CONFIG)
        try:
            _create_views(con, statements)
            con.execute(f"CREATE TABLE {_INFO_TABLE} (fingerprint VARCHAR, store VARCHAR, updated_utc TIMESTAMPTZ)")
            con.execute(f"INSERT INTO {_INFO_TABLE} VALUES (?, ?, now())", [fingerprint, str(root)])
        finally:
            con.close()  # checkpoints: everything is in the file itself, no WAL
    except duckdb.Error as exc:
        raise StoreError(f"cannot write the views to {path}: {_first_line(exc)}") from None


def refresh_views(store: str | Path, force: bool = False) -> Path:
    """Publish ``STORE/plmscreen.duckdb`` with views that match the store; returns its path.

    The file is for other DuckDB clients (plmscreen's own queries use a private copy of the views).
    Cheap when nothing changed (one read-only open). Call it after writing or deleting runs
    (``run_screen`` does): a view over a table that had no file yet is a placeholder until then.
    A new file is written under a temporary name and renamed over the old one, so readers that
    hold the old file open never block this (DuckDB allows no writer while a reader holds a
    file) and keep their connection; new connections get the new views. The file holds nothing
    but the views and a fingerprint of them: an unreadable one is simply replaced."""
    root = _store_dir(store)
    db = root / DATABASE_NAME
    statements, fingerprint = _view_statements(root)
    if not force and _published_fingerprint(db) == fingerprint:
        return db
    # Outside every view's glob; unique per writer, so concurrent refreshes never share a file.
    tmp = root / f".{DATABASE_NAME}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_views_database(tmp, statements, fingerprint, root)
        # A WAL next to the old file (left by a writer that crashed) would be replayed onto the new one.
        db.with_name(db.name + ".wal").unlink(missing_ok=True)
        os.replace(tmp, db)
    except OSError as exc:
        raise StoreError(f"cannot update {db}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            leftover.unlink(missing_ok=True)
    return db
