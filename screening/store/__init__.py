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

# The store's public API, one import away (``from plmscreen.screening import store``); each name
# lives in the module that says what it is.
from plmscreen.screening.errors import QueryError, QueryRefused, SchemaVersionError, StoreError  # noqa: F401
from plmscreen.screening.render.results import format_result, write_result  # noqa: F401
from plmscreen.screening.store.connection import Store, open_store, query, query_named  # noqa: F401
from plmscreen.screening.store.guard import QueryLimitExceeded, QueryLimits, default_memory_limit, validate_sql  # noqa: F401
from plmscreen.screening.store.layout import (  # noqa: F401
    DATABASE_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    check_schema_versions,
    data_files,
    database_path,
    file_schema_version,
)
from plmscreen.screening.store.queries import NamedQuery, QueryParam, bind_params, named_queries  # noqa: F401
from plmscreen.screening.store.runs import DeletedRun, RunChanges, delete_run, previous_run, run_changes, store_runs  # noqa: F401
from plmscreen.screening.store.views import refresh_views  # noqa: F401
