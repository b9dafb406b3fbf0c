"""plmscreen's errors: one base class, one subclass per stage of FASTA → shards → scores → store,
and the exit code of each, in one place. The library raises them; the CLI prints one line and
exits with ``exc.exit_code``.

Exit codes: 0 success; 1 anything unexpected; 2 bad input (FASTA, option, model, store or catalog);
3 a query limit (memory, spill or time) stopped a query; 4 some shards failed (the others are
written; a rerun retries them); 5 the Dask cluster was lost (finished shards are kept; a rerun
resumes).
"""

from __future__ import annotations

EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_QUERY_LIMIT = 3
EXIT_SHARDS_FAILED = 4
EXIT_CLUSTER_LOST = 5


class PlmscreenError(Exception):
    """Base of every error plmscreen raises on purpose; its message says what to do."""

    exit_code = EXIT_UNEXPECTED


class InputError(PlmscreenError, ValueError):
    """The input (FASTA records, sequences, option values) cannot be used as given."""

    exit_code = EXIT_BAD_INPUT


class ModelError(PlmscreenError, RuntimeError):
    """The model could not be found, read, or trusted."""

    exit_code = EXIT_BAD_INPUT


class StoreError(PlmscreenError):
    """The store cannot be read or queried as asked."""

    exit_code = EXIT_BAD_INPUT


class SchemaVersionError(StoreError):
    """A Parquet file of the store was written with a schema version this plmscreen cannot read."""


class QueryRefused(StoreError):
    """The read-only guard refused a statement; the message says why."""


class QueryError(StoreError):
    """A query failed (syntax error, unknown column, bad parameter ...): one line, no traceback."""


class QueryLimitError(StoreError):
    """A query ran into its memory, spill or time limit."""

    exit_code = EXIT_QUERY_LIMIT


class CatalogError(PlmscreenError):
    """The run catalog cannot be opened, migrated or updated as asked."""

    exit_code = EXIT_BAD_INPUT


class ClusterError(PlmscreenError, RuntimeError):
    """The Dask cluster went away under a screen."""

    exit_code = EXIT_CLUSTER_LOST


class CalibrationError(InputError):
    """A flag calibration cannot be made (too few proteins or null sequences for the target) or
    used (not found, unreadable, made for another checkpoint); the message says why."""
