"""The store's query layer: DuckDB views over the Parquet files, named queries, a read-only guard.

Querying a store
----------------
A store (the ``--out`` directory of ``plmscreen screen``) holds Parquet files partitioned by model
and run, ``STORE/<table>/model=<model>/run=<run>/part-NNNNN.parquet``, and one
``STORE/runs/<run>/run.json`` per finished run. ``plmscreen query`` / ``plmscreen flagged`` /
``plmscreen report`` keep ``STORE/plmscreen.duckdb`` up to date: a DuckDB database holding only
views (no data) over those files:

=================  =================================================================================
``residues``       one row per residue: ``run, model, seq_id, pos, aa, logp_masked, logp_unmasked,
                   partner_pos, logp_ablated, windowed, inflation, partner_region, partner_identity``
``sequences``      one row per sequence: ``run, model, seq_id, length, pll, pppl, pppl_ablated,
                   repeat_fraction, inflation_factor, flagged, mean_inflation, ...``
``repeats``        the repeat detector's region pairs (1-based, inclusive)
``repeat_regions`` region pairs with identity and mean inflation over each copy's residues
``flagged``        flagged sequences with their regions (``regions`` list, ``regions_text``)
``runs``           run metadata from ``run.json`` (model, checkpoint and input sha256, parameters)
=================  =================================================================================

From the command line (read-only, a single SELECT per call)::

    plmscreen query STORE "SELECT model, count(*) FROM sequences GROUP BY model"
    plmscreen query STORE --name flagged --param run=<run-id> --format csv
    plmscreen query STORE --name top_inflated_residues --param k=50 --format parquet --out top.parquet
    plmscreen query STORE --list            # the named queries and their parameters
    plmscreen flagged STORE --run <run-id>  # short for --name flagged

With the ``duckdb`` CLI or from Python, read-only (the views refer to the store by absolute path,
so run any ``plmscreen query`` once after moving or copying a store to refresh them; plmscreen
replaces the file by renaming a new one over it, so open connections keep the views they started
with, and see new runs at once)::

    duckdb -readonly STORE/plmscreen.duckdb "SELECT * FROM flagged ORDER BY inflation_factor DESC"

    import duckdb
    con = duckdb.connect("STORE/plmscreen.duckdb", read_only=True)
    df = con.sql("SELECT * FROM sequences WHERE flagged").df()      # pandas
    pl_df = con.sql("SELECT * FROM residues").pl()                   # polars
    tbl = con.sql("SELECT * FROM repeat_regions").to_arrow_table()   # pyarrow

Without DuckDB, polars or pyarrow read the Parquet files directly, e.g.
``pl.scan_parquet("STORE/sequences/*/*/part-*.parquet", hive_partitioning=True)`` or
``pyarrow.dataset.dataset("STORE/sequences", partitioning="hive")``. Always glob
``part-*.parquet``: writers create ``.part-*.tmp`` files and rename them when complete.

Guarantees
----------
* Every Parquet file carries its schema version (``plmscreen`` key-value metadata); files of a
  version this plmscreen does not know make queries fail with a message naming the file.
* Queries through ``plmscreen`` (:func:`open_store`, :func:`query`) run on a read-only connection
  that refuses anything but one SELECT statement, cannot read files outside the store's data
  directories, cannot install or load extensions, attach databases or change settings.
* Queries run on a private connection (its own views file in the temp directory): other
  processes holding ``STORE/plmscreen.duckdb`` never block or stale them.
* Every query runs under :class:`QueryLimits` (memory, spill disk, time); one that reaches a
  limit raises :class:`QueryLimitExceeded` naming it, and leaves the store as it was.
* :func:`delete_run` removes a run's partitions and ``runs/<run>`` (and, given a catalog, its
  catalog rows); the run disappears from queries at once.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from plmscreen import schema
from plmscreen.schema.arrow import METADATA_KEY, REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA
from plmscreen.screening import errors

__all__ = [
    "DATABASE_NAME",
    "SUPPORTED_SCHEMA_VERSIONS",
    "StoreError",
    "SchemaVersionError",
    "QueryRefused",
    "QueryError",
    "QueryLimitExceeded",
    "QueryLimits",
    "default_memory_limit",
    "NamedQuery",
    "QueryParam",
    "Store",
    "open_store",
    "database_path",
    "data_files",
    "file_schema_version",
    "check_schema_versions",
    "refresh_views",
    "validate_sql",
    "named_queries",
    "bind_params",
    "query",
    "query_named",
    "format_result",
    "write_result",
    "store_runs",
    "delete_run",
]

DATABASE_NAME = "plmscreen.duckdb"
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
DATA_TABLES = ("residues", "sequences", "repeats")
# Only complete files: writers create ".part-NNNNN.parquet.<pid>.tmp" and rename them when done.
PART_GLOB = "*/*/part-*.parquet"
VIEWS_DIR = Path(schema.__file__).resolve().parent / "views"
QUERIES_DIR = Path(schema.__file__).resolve().parent / "queries"
_INFO_TABLE = "plmscreen_views_info"
_STORE_TOKEN = "@STORE@"
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class StoreError(errors.StoreError):
    """A store problem with a message meant for the user (missing store, locked database ...)."""


class SchemaVersionError(StoreError):
    """A Parquet file of the store was written with a schema version this plmscreen cannot read."""


class QueryRefused(StoreError):
    """The read-only guard refused a statement; the message says why."""


class QueryError(StoreError):
    """A query failed (syntax error, unknown column, bad parameter ...): one line, no traceback."""


# --------------------------------------------------------------------------------------------
# Files and schema versions


def _store_dir(store: str | Path, must_exist: bool = True) -> Path:
    path = Path(store).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise StoreError(f"{store}: no such store directory")
    return path


def database_path(store: str | Path) -> Path:
    return _store_dir(store, must_exist=False) / DATABASE_NAME


def data_files(store: str | Path, table: str | None = None) -> list[Path]:
    """The complete Parquet files of ``table`` (or of every data table), as the views see them."""
    root = _store_dir(store)
    tables = DATA_TABLES if table is None else (table,)
    return sorted(p for t in tables for p in (root / t).glob(PART_GLOB) if p.is_file())


def file_schema_version(path: str | Path) -> int:
    """The ``schema_version`` in a Parquet file's plmscreen metadata (a SchemaVersionError if absent)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    except (OSError, pa.ArrowException) as exc:
        raise SchemaVersionError(f"{path}: not a readable Parquet file ({exc})") from None
    if raw is None:
        raise SchemaVersionError(f"{path} has no plmscreen metadata: not written by plmscreen; move it out of the store")
    try:
        version = json.loads(raw)["schema_version"]
    except (ValueError, KeyError, TypeError):
        raise SchemaVersionError(f"{path}: plmscreen metadata without a schema_version") from None
    if not isinstance(version, int):
        raise SchemaVersionError(f"{path}: schema_version {version!r} is not an integer")
    return version


def _version_problem(path: Path, version: int) -> str:
    from plmscreen import screening

    known = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
    if version > max(SUPPORTED_SCHEMA_VERSIONS):
        return (f"{path} has Parquet schema version {version}, newer than this plmscreen "
                f"{screening.__version__} reads (version {known}): upgrade plmscreen to query this store")
    return (f"{path} has Parquet schema version {version}, older than this plmscreen "
            f"{screening.__version__} reads (version {known}): re-run that screen, or delete the run")


def check_schema_versions(store: str | Path, files: Sequence[Path] | None = None,
                          con: duckdb.DuckDBPyConnection | None = None) -> dict[int, int]:
    """Number of files per schema version; a SchemaVersionError naming the files of unknown versions.

    The file footers are read by DuckDB in parallel (cheap: no data pages), on ``con`` if given
    (it must still allow file access) or on a new in-memory connection."""
    files = data_files(store) if files is None else list(files)
    if not files:
        return {}
    own = con is None
    con = duckdb.connect() if own else con
    try:
        rows = con.execute(
            "SELECT file_name, decode(value) FROM parquet_kv_metadata($files) WHERE decode(key) = $key",
            {"files": [str(f) for f in files], "key": METADATA_KEY.decode()},
        ).fetchall()
    except duckdb.Error:
        rows = None  # some file is not even Parquet: let pyarrow say which
    finally:
        if own:
            con.close()
    counts: dict[int, int] = {}
    problems: list[str] = []
    if rows is None:
        versions = {}
        for f in files:
            try:
                versions[str(f)] = file_schema_version(f)
            except SchemaVersionError as exc:
                problems.append(str(exc))
    else:
        versions = {}
        for name, value in rows:
            try:
                versions[name] = int(json.loads(value)["schema_version"])
            except (ValueError, KeyError, TypeError):
                problems.append(f"{name}: plmscreen metadata without a valid schema_version")
        for f in files:
            if str(f) not in versions and not any(p.startswith(f"{f}:") for p in problems):
                problems.append(f"{f} has no plmscreen metadata: not written by plmscreen; move it out of the store")
    for name, version in versions.items():
        counts[version] = counts.get(version, 0) + 1
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            problems.append(_version_problem(Path(name), version))
    if problems:
        more = f" (and {len(problems) - 3} more files)" if len(problems) > 3 else ""
        raise SchemaVersionError("; ".join(problems[:3]) + more)
    return counts


# --------------------------------------------------------------------------------------------
# Views


def _sql_literal_path(path: Path) -> str:
    return str(path).replace("'", "''")


_TABLE_SCHEMAS = {"residues": RESIDUES_SCHEMA, "sequences": SEQUENCES_SCHEMA, "repeats": REPEATS_SCHEMA}


@functools.lru_cache(maxsize=None)
def _empty_view_sql(view: str) -> str:
    """The view of a table with no file yet: no rows, the partition columns and the columns of its
    Arrow schema (the data contract, schema.arrow), typed as DuckDB reads them from Parquet."""
    con = duckdb.connect()
    try:
        empty = _TABLE_SCHEMAS[view].empty_table()  # noqa: F841 - read by name below
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


# --------------------------------------------------------------------------------------------
# The read-only guard

# Table functions and scalar functions that touch files, other databases or the SQL engine itself.
# (Pointer-taking scans such as arrow_scan would even crash the process.)
_BLOCKED_FUNCTIONS = frozenset({
    "glob", "sniff_csv", "query", "query_table", "json_execute_serialized_sql", "getenv", "seq_scan",
    "duckdb_secrets", "which_secret", "load_extension", "install_extension", "checkpoint", "force_checkpoint",
    "truncate_duckdb_logs",
})
_BLOCKED_PREFIXES = ("read_", "parquet_", "sqlite_", "postgres_", "mysql_", "iceberg_", "delta_", "ducklake_",
                     "json_execute", "arrow_", "pandas_", "python_", "enable_", "disable_", "register_",
                     "deregister_", "destroy_", "create_", "add_grammar", "remove_grammar")
_KIND_NAMES = {
    "INSERT": "INSERT (writes rows)", "UPDATE": "UPDATE (writes rows)", "DELETE": "DELETE (writes rows)",
    "CREATE": "CREATE", "DROP": "DROP", "ALTER": "ALTER", "ATTACH": "ATTACH (opens another database)",
    "DETACH": "DETACH", "COPY": "COPY (reads or writes files)", "EXPORT": "EXPORT (writes files)",
    "LOAD": "INSTALL/LOAD (extensions)", "SET": "SET/PRAGMA/USE (changes settings)",
    "VARIABLE_SET": "SET VARIABLE", "PRAGMA": "PRAGMA", "CALL": "CALL", "TRANSACTION": "a transaction statement",
    "EXPLAIN": "EXPLAIN", "PREPARE": "PREPARE", "EXECUTE": "EXECUTE", "VACUUM": "VACUUM", "ANALYZE": "ANALYZE",
    "UPDATE_EXTENSIONS": "UPDATE EXTENSIONS", "MULTI": "a multi-statement",
}
_VIEW_HINT = "query the views (residues, sequences, repeats, repeat_regions, flagged, runs)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validate_sql(sql: str) -> str:
    """Accept exactly one SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE ... included) that calls no
    file-reading function and scans no file by name; a QueryRefused saying why otherwise."""
    if not sql or not sql.strip():
        raise QueryRefused("empty query")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    if not statements:
        raise QueryRefused("empty query")
    if len(statements) > 1:
        kinds = ", ".join(s.type.name for s in statements)
        raise QueryRefused(f"only one statement per query is allowed, got {len(statements)} ({kinds})")
    kind = statements[0].type.name
    if kind != "SELECT":
        raise QueryRefused(f"only read-only SELECT queries are allowed, this is {_KIND_NAMES.get(kind, kind)}")
    tokens = duckdb.tokenize(sql)
    texts = [sql[start:end].strip() for (start, _), (end, _) in zip(tokens, tokens[1:] + [(len(sql), None)])]
    kinds = [t for _, t in tokens]
    significant = [i for i, t in enumerate(kinds) if t != duckdb.token_type.comment]
    for n, i in enumerate(significant):
        nxt = texts[significant[n + 1]] if n + 1 < len(significant) else ""
        prev = texts[significant[n - 1]].lower() if n > 0 else ""
        if kinds[i] in (duckdb.token_type.identifier, duckdb.token_type.keyword) and nxt.startswith("("):
            name = texts[i].strip('"').lower()
            if name in _BLOCKED_FUNCTIONS or name.startswith(_BLOCKED_PREFIXES):
                raise QueryRefused(f"function {name}() is not allowed: it reads files or runs SQL; {_VIEW_HINT}")
        if kinds[i] == duckdb.token_type.string_const and prev in ("from", "join") and re.search(r"[/\\.*~:]", texts[i]):
            raise QueryRefused(f"reading files by name ({texts[i]}) is not allowed; {_VIEW_HINT}")
    return statements[0].query


def _explain_duckdb_error(exc: duckdb.Error) -> StoreError:
    message = _first_line(exc)
    low = message.lower()
    if isinstance(exc, duckdb.PermissionException) or "disabled by configuration" in low:
        return QueryRefused(f"the query tried to reach files outside the store or an extension ({message})")
    if "configuration has been locked" in low or "read-only mode" in low:
        return QueryRefused(f"the store is read-only here ({message})")
    if "extension" in low and ("install" in low or "autoload" in low or "not in the catalog" in low):
        return QueryRefused(f"extensions are not available to queries ({message})")
    if isinstance(exc, duckdb.CatalogException) and re.search(r"Table with name \S*[/\\.]\S* does not exist", message):
        return QueryRefused(f"reading files by name is not allowed; {_VIEW_HINT} ({message})")
    return QueryError(message)


# --------------------------------------------------------------------------------------------
# Named queries


_PARAM_LINE = re.compile(r"^--\s*param:\s*(\w+)\s+(\w+)(?:\s*=\s*(\S+))?\s*(?:--\s*(.*))?$")
_PARAM_TYPES = {"VARCHAR": str, "INTEGER": int, "BIGINT": int, "DOUBLE": float, "BOOLEAN": bool}


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: str  # VARCHAR, INTEGER, BIGINT, DOUBLE or BOOLEAN
    default: Any
    required: bool
    help: str


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[QueryParam, ...]
    sql: str
    path: Path

    def usage(self) -> str:
        params = " ".join(f"{p.name}=<{p.type.lower()}>" if p.required else f"[{p.name}={p.default}]" for p in self.params)
        return f"{self.name} {params}".strip()


def _convert(value: Any, param: QueryParam, query_name: str) -> Any:
    if value is None:
        return None
    target = _PARAM_TYPES[param.type]
    if isinstance(value, str) and target is not str:
        text = value.strip()
        if text.lower() in ("null", "none", ""):
            return None
        try:
            if target is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return target(text)
        except ValueError:
            raise QueryError(f"query {query_name}: parameter {param.name} must be {param.type}, got {value!r}") from None
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise QueryError(f"query {query_name}: parameter {param.name} must be {param.type}, got {value!r}")
    return value


def _parse_named_query(path: Path) -> NamedQuery:
    from plmscreen.screening.score.metrics import FlagRule

    # @FLAG_RULE(row, rule)@ is the flag rule's one definition (FlagRule.sql), rendered in place.
    text = re.sub(r"@FLAG_RULE\((\w+), *(\w+)\)@", lambda m: FlagRule.sql(m[1], m[2]), path.read_text())
    description, params = [], []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM_LINE.match(line)
        if match:
            name, type_, default, help_ = match.groups()
            type_ = type_.upper()
            if type_ not in _PARAM_TYPES:
                raise ValueError(f"{path}: parameter {name} has unknown type {type_}")
            param = QueryParam(name, type_, None, default is None, (help_ or "").strip())
            if default is not None and default.upper() != "NULL":
                param = QueryParam(name, type_, _convert(default, param, path.stem), False, param.help)
            params.append(param)
        else:
            description.append(line.lstrip("-").strip())
    used = set(re.findall(r"\$([A-Za-z_]\w*)", text))
    declared = {p.name for p in params}
    if used != declared:
        raise ValueError(f"{path}: parameters used {sorted(used)} but declared {sorted(declared)}")
    return NamedQuery(path.stem, " ".join(d for d in description if d), tuple(params), text, path)


def named_queries() -> dict[str, NamedQuery]:
    """The named queries under ``schema/queries/*.sql`` by name (the file's stem)."""
    return {q.name: q for q in (_parse_named_query(p) for p in sorted(QUERIES_DIR.glob("*.sql")))}


def bind_params(named: NamedQuery, values: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values (strings from the CLI, or Python values) checked and typed for ``named``."""
    known = {p.name: p for p in named.params}
    unknown = sorted(set(values) - set(known))
    if unknown:
        takes = ", ".join(known) or "no parameters"
        raise QueryError(f"query {named.name}: unknown parameter {', '.join(unknown)} (it takes: {takes})")
    bound = {}
    for name, param in known.items():
        if name in values:
            bound[name] = _convert(values[name], param, named.name)
        elif param.required:
            raise QueryError(f"query {named.name}: parameter {name} is required ({param.help or param.type})")
        else:
            bound[name] = param.default
        if bound[name] is None and param.required:
            raise QueryError(f"query {named.name}: parameter {name} is required ({param.help or param.type})")
    return bound


# --------------------------------------------------------------------------------------------
# Connections


# Limits on every query (``plmscreen query --memory-limit/--spill-limit/--timeout`` or these variables).
MEMORY_LIMIT_ENV = "PLMSCREEN_QUERY_MEMORY_LIMIT"
SPILL_LIMIT_ENV = "PLMSCREEN_QUERY_SPILL_LIMIT"
TIMEOUT_ENV = "PLMSCREEN_QUERY_TIMEOUT"
DEFAULT_SPILL_LIMIT = "10GB"
DEFAULT_TIMEOUT_S = 300.0
_MEMORY_CAP = 4 * 1000**3  # the default memory limit is 4GB, or half the machine's memory if that is less
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*", re.I)
_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
               "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
_BATCH_ROWS = 65_536  # rows per Arrow batch while a result streams in


def _size_bytes(text: str, what: str) -> int:
    """Bytes in a size such as ``4GB``, ``512MiB`` (DuckDB's units: KB = 1000, KiB = 1024)."""
    match = _SIZE.fullmatch(str(text))
    if not match or float(match.group(1)) <= 0:
        raise StoreError(f"{what} {text!r} is not a size: give a positive number and a unit, e.g. 4GB or 512MiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def default_memory_limit() -> str:
    """4GB, or half the machine's physical memory if that is less."""
    try:
        half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        half = _MEMORY_CAP
    return "4GB" if half >= _MEMORY_CAP else f"{half // 1024**2}MiB"


@dataclass(frozen=True)
class QueryLimits:
    """What one query may use. ``memory``: DuckDB's working memory and also the largest result a
    query may return; ``spill``: disk DuckDB may use in the system temp directory (``TMPDIR``)
    when working memory runs out; ``timeout_s``: wall-clock seconds per query (0: no limit)."""

    memory: str = ""  # empty: default_memory_limit()
    spill: str = DEFAULT_SPILL_LIMIT
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.memory:
            object.__setattr__(self, "memory", default_memory_limit())
        _size_bytes(self.memory, "memory limit")
        _size_bytes(self.spill, "spill limit")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s >= 0):
            raise StoreError(f"time limit {self.timeout_s!r} is not a number of seconds ≥ 0 (0: no limit)")

    @property
    def memory_bytes(self) -> int:
        return _size_bytes(self.memory, "memory limit")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> QueryLimits:
        """Defaults, then the PLMSCREEN_QUERY_* variables, then ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if environ.get(MEMORY_LIMIT_ENV):
            values["memory"] = environ[MEMORY_LIMIT_ENV]
        if environ.get(SPILL_LIMIT_ENV):
            values["spill"] = environ[SPILL_LIMIT_ENV]
        if environ.get(TIMEOUT_ENV):
            try:
                values["timeout_s"] = float(environ[TIMEOUT_ENV])
            except ValueError:
                raise StoreError(f"{TIMEOUT_ENV}={environ[TIMEOUT_ENV]!r} is not a number of seconds (0: no limit)") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class QueryLimitExceeded(QueryError, errors.QueryLimitError):
    """A query was stopped by a limit of :class:`QueryLimits`; the message names it and how to raise it."""


def _time_limit_error(limits: QueryLimits) -> QueryLimitExceeded:
    return QueryLimitExceeded(f"query stopped by the time limit of {limits.timeout_s:g} s; raise it with "
                              f"--timeout SECONDS or {TIMEOUT_ENV} (0: no limit), or narrow the query")


def _memory_limit_error(limits: QueryLimits, message: str) -> QueryLimitExceeded:
    if "max_temp_directory_size" in message:
        return QueryLimitExceeded(f"query stopped: it needs more than the memory limit of {limits.memory} plus the "
                                  f"spill limit of {limits.spill} on disk; raise them with --memory-limit SIZE "
                                  f"({MEMORY_LIMIT_ENV}) or --spill-limit SIZE ({SPILL_LIMIT_ENV}), or narrow the query")
    return QueryLimitExceeded(f"query stopped by the memory limit of {limits.memory}; raise it with --memory-limit SIZE "
                              f"or {MEMORY_LIMIT_ENV}, or narrow the query")


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
    allowed = ", ".join(f"'{_sql_literal_path(root / d)}/'" for d in (*DATA_TABLES, "runs"))
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


# --------------------------------------------------------------------------------------------
# Output


def _plain(value: Any) -> Any:
    """JSON-ready Python value (NaN/inf become null, timestamps ISO strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value: Any, width: int = 60) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict)):
        text = json.dumps(_plain(value))
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(_plain(value))
    return str(_plain(value))


def format_result(table: pa.Table, fmt: str = "table", max_rows: int | None = None) -> str:
    """Rows as text: ``table`` (aligned columns), ``csv`` or ``json`` (a list of objects)."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps([_plain(r) for r in rows], indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row.values()])
        return buf.getvalue()
    if fmt != "table":
        raise QueryError(f"unknown format {fmt!r}: table, csv, json or parquet")
    shown = rows if max_rows is None else rows[:max_rows]
    cells = [[_cell(v) for v in row.values()] for row in shown]
    names = table.column_names
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]
    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()
    out = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    if len(shown) < len(rows):
        out.append(f"... {len(rows) - len(shown)} more rows (use --format csv or json for all)")
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


_TABLE_ROWS = 1000  # rows a table printed on the terminal shows


def write_result(table: pa.Table, fmt: str = "table", out: str | Path | None = None) -> None:
    """Print or write a result; ``parquet`` needs ``out``."""
    if fmt == "parquet":
        if out is None:
            raise QueryError("--format parquet needs --out FILE")
        from plmscreen.screening.store.parquet import write_parquet_atomic

        write_parquet_atomic(table, Path(out))
        return
    text = format_result(table, fmt, max_rows=_TABLE_ROWS if fmt == "table" and out is None else None)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).write_text(text)


# --------------------------------------------------------------------------------------------
# Runs


def store_runs(store: str | Path) -> list[str]:
    """Run ids with files (any table) or a runs/<run> directory in the store, sorted."""
    root = _store_dir(store)
    runs = {p.name[len("run="):] for t in DATA_TABLES for p in (root / t).glob("model=*/run=*") if p.is_dir()}
    runs |= {p.name for p in (root / "runs").glob("*") if p.is_dir()}
    return sorted(runs)


@dataclass
class DeletedRun:
    run_id: str
    paths: list[Path]  # where the removed directories were
    catalog_rows: bool  # the catalog had the run (and no longer has it)
    views_refreshed: bool = True  # False: plmscreen.duckdb could not be rewritten; the next query retries


def delete_run(store: str | Path, run_id: str, catalog=None) -> DeletedRun:
    """Remove a run's partition directories and ``runs/<run_id>``, then its catalog rows.

    The directories are first moved into ``STORE/.trash`` (one rename each, outside every view's
    glob), so queries stop seeing the run at once, then removed. Idempotent: deleting an absent
    run removes nothing. ``catalog`` is a :class:`schema.catalog.Catalog` (optional)."""
    root = _store_dir(store)
    if not _RUN_ID.fullmatch(run_id):
        raise StoreError(f"invalid run id {run_id!r}")
    targets = [p for t in DATA_TABLES for p in sorted((root / t).glob(f"model=*/run={run_id}")) if p.is_dir()]
    info = root / "runs" / run_id
    if info.is_dir():
        targets.append(info)
    trash = root / ".trash" / f"{run_id}.{uuid.uuid4().hex[:8]}"
    if targets:
        trash.mkdir(parents=True)
        for n, path in enumerate(targets):
            os.replace(path, trash / f"{n}-{path.parent.name}")
        shutil.rmtree(trash)
        for t in DATA_TABLES:
            for model_dir in (root / t).glob("model=*"):
                if model_dir.is_dir() and not any(model_dir.iterdir()):
                    model_dir.rmdir()
        try:
            (root / ".trash").rmdir()
        except OSError:
            pass
    catalog_rows = bool(catalog.delete_run(run_id)) if catalog is not None else False
    refreshed = True
    if (root / DATABASE_NAME).exists():
        try:
            refresh_views(root)  # a table may have no file left: its view becomes the placeholder
        except StoreError:
            refreshed = False
    return DeletedRun(run_id, targets, catalog_rows, refreshed)


# --------------------------------------------------------------------------------------------
# Changes between runs of one screen


@dataclass
class RunChanges:
    run: str
    since: str | None  # None: no earlier run of the same screen
    rows: list[dict]  # the `changes` named query's rows

    CATEGORIES = ("newly_flagged", "no_longer_flagged", "added", "removed", "sequence_changed", "scores_changed")

    def counts(self) -> dict[str, int]:
        return {c: sum(r["change"] == c for r in self.rows) for c in self.CATEGORIES}

    def markdown(self) -> str:
        """What a flow run publishes as its changes artifact."""
        if self.since is None:
            return f"# Changes of run `{self.run}`\n\nNo earlier run of this screen in the store: nothing to compare."
        counts = self.counts()
        lines = [f"# Changes of run `{self.run}` since run `{self.since}`", "",
                 ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in counts.items()) + ".", ""]
        if self.rows:
            lines += ["| seq_id | change | flagged before → now | inflation factor before → now |", "|---|---|---|---|"]
            for row in self.rows[:100]:
                lines.append(f"| {row['seq_id']} | {row['change'].replace('_', ' ')} | {_md_cell(row['flagged_before'])} → "
                             f"{_md_cell(row['flagged'])} | {_md_cell(row['inflation_factor_before'])} → "
                             f"{_md_cell(row['inflation_factor'])} |")
            if len(self.rows) > 100:
                lines.append(f"\n… and {len(self.rows) - 100} more: `plmscreen changes STORE --run {self.run}`")
        return "\n".join(lines)


def _md_cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def previous_run(st: Store, run: str) -> str | None:
    """The run of the same screen made just before ``run``: the same model, and the same deployment
    when the runs were made by one, else the same input file name (a new release of a proteome
    keeps its name). Another model on the same input is another screen: compare it with
    ``compare_runs`` or ``changes --since``."""
    runs = st.sql("SELECT run, model, deployment, input_path, created_utc FROM runs").to_pylist()
    this = next((r for r in runs if r["run"] == run), None)
    if this is None:
        raise StoreError(f"no run {run} in {st.root} (runs/<run>/run.json is missing)")

    def same_screen(other: dict) -> bool:
        if other["model"] != this["model"]:
            return False
        if this["deployment"] or other["deployment"]:
            return this["deployment"] == other["deployment"]
        return Path(this["input_path"] or "").name == Path(other["input_path"] or "").name

    earlier = [r for r in runs if r["run"] != run and same_screen(r) and r["created_utc"] is not None
               and this["created_utc"] is not None and r["created_utc"] < this["created_utc"]]
    return max(earlier, key=lambda r: r["created_utc"])["run"] if earlier else None


def run_changes(store: str | Path, run: str | None = None, since: str | None = None, tolerance: float = 0.01,
                limits: QueryLimits | None = None) -> RunChanges:
    """What changed in ``run`` (default: the newest) since ``since`` (default: the previous run of
    the same screen, :func:`previous_run`)."""
    with open_store(store, limits=limits) as st:
        if run is None:
            newest = st.sql("SELECT run FROM runs ORDER BY created_utc DESC NULLS LAST LIMIT 1").to_pylist()
            if not newest:
                raise StoreError(f"{store}: no runs")
            run = newest[0]["run"]
        if since is None:
            since = previous_run(st, run)
        if since is None:
            return RunChanges(run, None, [])
        rows = st.named("changes", run=run, since=since, tolerance=tolerance).to_pylist()
    return RunChanges(run, since, rows)
