"""Store commands (query, flagged, report, runs): registered on the main CLI by ``register``.

Exit codes as in ``plmscreen.cli.main``: 0 success; 2 a refused or failing query, a missing store or
run, a bad option; 3 a query stopped by its memory, spill or time limit; 1 anything unexpected.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from plmscreen.cli.errors import fail
from plmscreen.screening.errors import EXIT_QUERY_LIMIT


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


StoreArg = Annotated[Path, typer.Argument(help="Store directory (the --out of plmscreen screen).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, csv, json or parquet (parquet needs --out).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the result to this file instead of stdout.")]
CatalogOpt = Annotated[Optional[str], typer.Option(
    "--catalog", envvar="PLMSCREEN_CATALOG",
    help="Catalog URL (postgresql://...); default STORE/catalog.sqlite when it exists.")]


MemoryLimitOpt = Annotated[Optional[str], typer.Option(
    "--memory-limit",
    help="Memory for each query (DuckDB's working memory, and the largest result it may return), e.g. 8GB. "
         "Default: 4GB, or half the machine's memory if less; env PLMSCREEN_QUERY_MEMORY_LIMIT.")]
SpillLimitOpt = Annotated[Optional[str], typer.Option(
    "--spill-limit",
    help="Disk each query may spill to (under TMPDIR) once its memory is full, e.g. 50GB. "
         "Default: 10GB; env PLMSCREEN_QUERY_SPILL_LIMIT.")]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="Seconds each query may run; 0: no limit. Default: 300; env PLMSCREEN_QUERY_TIMEOUT.")]


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            fail(f"--param needs NAME=VALUE, got {pair!r}")
        params[name.strip()] = value
    return params


def _limits(memory: str | None, spill: str | None, timeout: float | None):
    """The query limits: defaults, then the PLMSCREEN_QUERY_* variables, then these options."""
    from plmscreen.screening import store as st

    try:
        return st.QueryLimits.from_env(memory=memory, spill=spill, timeout_s=timeout)
    except st.StoreError as exc:
        fail(str(exc))


def _run_query(store: Path, sql: str | None, name: str | None, params: dict[str, str],
               fmt: OutputFormat, out: Path | None, limits) -> None:
    from plmscreen.screening import store as st

    try:
        if name is not None:
            table = st.query_named(store, name, params, limits=limits)
        else:
            table = st.query(store, sql, limits=limits)
        st.write_result(table, fmt.value, out)
    except st.QueryRefused as exc:
        fail(f"refused: {exc}")
    except st.QueryLimitExceeded as exc:
        fail(str(exc), EXIT_QUERY_LIMIT)
    except st.QueryError as exc:
        fail(f"query failed: {exc}")
    except st.StoreError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")


def _open_catalog(store: Path, url: str | None):
    """The catalog named by ``url``, or STORE/catalog.sqlite if it exists, else None."""
    from plmscreen.schema.catalog import CATALOG_FILENAME
    from plmscreen.screening.errors import CatalogError
    from plmscreen.screening.run.catalog import Catalog

    if url is None and not (store / CATALOG_FILENAME).exists():
        return None
    try:
        return Catalog.open(url, store)
    except CatalogError as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add the store commands to ``app``."""

    @app.command("query")
    def query_cmd(
        store: StoreArg,
        sql: Annotated[Optional[str], typer.Argument(help="One SELECT over the views (residues, sequences, repeats, repeat_regions, flagged, runs).")] = None,
        name: Annotated[Optional[str], typer.Option("--name", "-n", help="Run a named query instead (see --list).")] = None,
        param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="NAME=VALUE for the named query; repeatable.")] = None,
        fmt: FormatOpt = OutputFormat.table,
        out: OutOpt = None,
        list_queries: Annotated[bool, typer.Option("--list", help="List the named queries and their parameters.")] = False,
        memory_limit: MemoryLimitOpt = None,
        spill_limit: SpillLimitOpt = None,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Query a store read-only with SQL (DuckDB dialect) or a named query."""
        from plmscreen.screening import store as st

        if list_queries:
            for q in st.named_queries().values():
                typer.echo(f"{q.usage()}\n    {q.description}")
                for p in q.params:
                    default = "required" if p.required else f"default {p.default}"
                    typer.echo(f"    {p.name} ({p.type.lower()}, {default}): {p.help}")
            return
        if (sql is None) == (name is None):
            fail("give either SQL or --name NAME (see --list)")
        if param and name is None:
            fail("--param goes with --name; put values into the SQL itself")
        limits = _limits(memory_limit, spill_limit, timeout)
        _run_query(store, sql, name, _parse_params(param or []), fmt, out, limits)

    @app.command("flagged")
    def flagged_cmd(
        store: StoreArg,
        run: Annotated[Optional[str], typer.Option("--run", help="Only this run (default: every run).")] = None,
        fmt: FormatOpt = OutputFormat.table,
        out: OutOpt = None,
        memory_limit: MemoryLimitOpt = None,
        spill_limit: SpillLimitOpt = None,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Flagged sequences, most inflated first, with their repeat regions (query --name flagged)."""
        limits = _limits(memory_limit, spill_limit, timeout)
        _run_query(store, None, "flagged", {} if run is None else {"run": run}, fmt, out, limits)

    @app.command("report")
    def report_cmd(
        store: StoreArg,
        out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")],
        run: Annotated[Optional[str], typer.Option("--run", help="Run to report (default: the most recent).")] = None,
        max_sequences: Annotated[int, typer.Option(help="Per-residue tracks for at most this many flagged sequences.")] = 25,
        memory_limit: MemoryLimitOpt = None,
        spill_limit: SpillLimitOpt = None,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Write a self-contained HTML report: run summary, flagged table, histogram, residue tracks."""
        from plmscreen.screening import store as st
        from plmscreen.screening.render.report import write_report

        limits = _limits(memory_limit, spill_limit, timeout)
        try:
            info = write_report(store, out, run=run, max_sequences=max_sequences, limits=limits)
        except st.QueryLimitExceeded as exc:
            fail(str(exc), EXIT_QUERY_LIMIT)
        except st.StoreError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror or exc}")
        typer.echo(f"Report on run {info['run']} ({info['n_flagged']} flagged of {info['n_sequences']} sequences): {out}")

    @app.command("changes")
    def changes_cmd(
        store: StoreArg,
        run: Annotated[Optional[str], typer.Option("--run", help="The newer run (default: the most recent).")] = None,
        since: Annotated[Optional[str], typer.Option("--since", help="The older run (default: the previous run of the same deployment or input name).")] = None,
        tolerance: Annotated[float, typer.Option(help="Relative change of pppl or inflation factor that counts as changed.")] = 0.01,
        fmt: FormatOpt = OutputFormat.table,
        out: OutOpt = None,
        memory_limit: MemoryLimitOpt = None,
        spill_limit: SpillLimitOpt = None,
        timeout: TimeoutOpt = None,
    ) -> None:
        """Sequences newly flagged, no longer flagged, added, removed or changed since the previous screen."""
        import pyarrow as pa
        from plmscreen.screening import store as st

        try:
            changes = st.run_changes(store, run, since, tolerance, limits=_limits(memory_limit, spill_limit, timeout))
        except st.QueryLimitExceeded as exc:
            fail(str(exc), EXIT_QUERY_LIMIT)
        except st.StoreError as exc:
            fail(str(exc))
        if changes.since is None:
            typer.echo(f"Run {changes.run}: no earlier run of the same screen in {store}; pass --since RUN to compare.")
            return
        counts = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in changes.counts().items())
        typer.echo(f"Run {changes.run} since {changes.since}: {counts}.", err=out is not None or fmt != OutputFormat.table)
        if changes.rows:
            st.write_result(pa.Table.from_pylist(changes.rows), fmt.value, out)

    runs_app = typer.Typer(help="List, compact or delete the runs of a store.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def runs_list(store: StoreArg, catalog: CatalogOpt = None, fmt: FormatOpt = OutputFormat.table) -> None:
        """Runs in the store (from run.json and the Parquet files) with their catalog status."""
        import pyarrow as pa
        from plmscreen.screening import store as st

        try:
            ids = st.store_runs(store)
            summary = {r["run"]: r for r in st.query_named(store, "run_summary").to_pylist()}
        except st.StoreError as exc:
            fail(str(exc))
        cat = _open_catalog(store, catalog)
        statuses = {}
        if cat is not None:
            with cat:
                statuses = {r.run_id: r for r in cat.list_runs()}
        rows = []
        for run_id in sorted(set(ids) | set(statuses)):
            s, c = summary.get(run_id, {}), statuses.get(run_id)
            rows.append({
                "run": run_id, "model": s.get("model") or (c.model_name if c else None),
                "created_utc": s.get("created_utc"), "n_sequences": s.get("n_sequences"),
                "n_flagged": s.get("n_flagged"), "catalog_status": c.status if c else None,
                "shards_done": f"{c.shards['done']}/{c.n_shards}" if c else None,
            })
        schema = pa.schema([("run", pa.string()), ("model", pa.string()), ("created_utc", pa.timestamp("us", "UTC")),
                            ("n_sequences", pa.int64()), ("n_flagged", pa.int64()), ("catalog_status", pa.string()),
                            ("shards_done", pa.string())])
        st.write_result(pa.Table.from_pylist(rows, schema=schema), fmt.value if fmt.value != "parquet" else "table")

    @app.command("status")
    def status_cmd(
        store: StoreArg,
        catalog: CatalogOpt = None,
        run: Annotated[Optional[str], typer.Option("--run", help="Show this run's shards one by one.")] = None,
    ) -> None:
        """Runs and their shard states from the catalog (what a rerun would redo)."""
        cat = _open_catalog(store, catalog)
        if cat is None:
            fail(f"{store} has no catalog (no screen has run there)")
        with cat:
            runs = cat.list_runs() if run is None else [r for r in [cat.run_status(run)] if r is not None]
            if run is not None and not runs:
                fail(f"no run {run} in the catalog of {store}")
            header = f"{'run':<18} {'status':<9} {'model':<24} {'sequences':>9} {'done':>6} {'running':>7} {'pending':>7} {'failed':>6}  started"
            typer.echo(header)
            for r in runs:
                typer.echo(f"{r.run_id:<18} {r.status:<9} {(r.model_name or '')[:24]:<24} {r.n_sequences:>9} "
                           f"{r.shards['done']:>6} {r.shards['running']:>7} {r.shards['pending']:>7} {r.shards['failed']:>6}  "
                           f"{r.started_at:%Y-%m-%d %H:%M:%S}")
            for r in runs:
                shards = cat.shards(r.run_id)
                # Without --run: what needs attention, i.e. failed shards and who holds the running ones.
                shown = shards if run is not None else [s for s in shards if s.status in ("failed", "running")]
                for s in shown:
                    took = f"{s.seconds:.1f} s" if s.seconds is not None else "-"
                    error = f"  {s.error.splitlines()[0][:120]}" if s.error else ""
                    where = f" on {s.worker}" if s.worker and s.status == "running" else ""
                    typer.echo(f"  {r.run_id} shard {s.index:>5}: records {s.first}..{s.last} {s.status:<8} "
                               f"attempts {s.attempts} {took}{where}{error}")

    @runs_app.command("compact")
    def runs_compact(
        store: StoreArg,
        runs: Annotated[Optional[list[str]], typer.Argument(help="Run ids to compact (default: every finished run).")] = None,
    ) -> None:
        """Merge each finished run's per-shard part files into one file per table (atomic: queries
        running meanwhile see the old files or the new one, never both)."""
        from plmscreen.screening import store as st
        from plmscreen.screening.store.compact import compact_run
        from plmscreen.screening.store.layout import run_json_path

        try:
            chosen = runs or [r for r in st.store_runs(store) if run_json_path(Path(store), r).is_file()]
            for run in chosen:
                done = compact_run(store, run)
                typer.echo(f"{run}: {done.files_before} part files -> {done.files_after} "
                           f"({done.partitions} partitions rewritten, {done.rows} rows)")
        except st.StoreError as exc:
            fail(str(exc))

    @runs_app.command("delete")
    def runs_delete(
        store: StoreArg,
        run: Annotated[str, typer.Argument(help="Run id to delete.")],
        catalog: CatalogOpt = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Delete a run: its Parquet partitions, runs/<run>/ and its catalog rows, together."""
        from plmscreen.screening import store as st

        try:
            present = run in st.store_runs(store)
        except st.StoreError as exc:
            fail(str(exc))
        cat = _open_catalog(store, catalog)
        in_catalog = cat is not None and cat.run_status(run) is not None
        if not present and not in_catalog:
            if cat is not None:
                cat.close()
            fail(f"no run {run} in {store}")
        if not yes and not typer.confirm(f"Delete run {run} from {store}?", default=False):
            if cat is not None:
                cat.close()
            fail("not deleted", 1)
        try:
            deleted = st.delete_run(store, run, catalog=cat)
        except st.StoreError as exc:
            fail(str(exc))
        finally:
            if cat is not None:
                cat.close()
        where = f"{len(deleted.paths)} directories" + (", catalog rows" if deleted.catalog_rows else "")
        typer.echo(f"Deleted run {run}: {where}.")
        if not deleted.views_refreshed:
            typer.echo(f"note: {st.DATABASE_NAME} could not be rewritten; the next plmscreen query retries", err=True)
