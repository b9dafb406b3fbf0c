"""The read-only guard: which SQL a query may run, DuckDB errors in one line, and memory/spill/time limits."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
from plmscreen.screening import errors
from plmscreen.screening.errors import QueryError, QueryRefused, StoreError

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
