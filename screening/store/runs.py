"""Runs in a store: list them, delete one, and what changed between two runs of one screen."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmscreen.screening.errors import StoreError
from plmscreen.screening.store.connection import Store, open_store
from plmscreen.screening.store.guard import QueryLimits
from plmscreen.screening.store.layout import _RUN_ID, DATA_TABLES, DATABASE_NAME, RUNS_DIR, _store_dir, run_info_dir
from plmscreen.screening.store.views import refresh_views

# Runs


def store_runs(store: str | Path) -> list[str]:
    """Run ids with files (any table) or a runs/<run> directory in the store, sorted."""
    root = _store_dir(store)
    runs = {p.name[len("run="):] for t in DATA_TABLES for p in (root / t).glob("model=*/run=*") if p.is_dir()}
    runs |= {p.name for p in (root / RUNS_DIR).glob("*") if p.is_dir()}
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
    info = run_info_dir(root, run_id)
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
