"""A run's plan: the input read and validated once, the run named, shards planned by cost and registered.

``prepare_run`` is the only code that reads the input and names a run; the CLI, the flow and the
progress bar all work from the RunPlan it returns. The input is streamed, never held: the plan
keeps each shard's byte span in the run's copy of the input (``STORE/runs/<run>/input.fasta``),
and a shard's task reads only its own records from there."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plmscreen import screening
from plmscreen.schema.arrow import SCHEMA_VERSION
from plmscreen.screening.errors import CatalogError
from plmscreen.screening.input import (
    FastaIndex,
    InvalidFastaError,
    ProteinRecord,
    RejectedRecord,
    read_span,
    scan_fasta,
    write_rejects,
)
from plmscreen.screening.model.backends.resolve import plan_checkpoint
from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES, CheckpointIdentity
from plmscreen.screening.run.calibrations import apply_calibration
from plmscreen.screening.run.catalog import Catalog
from plmscreen.screening.run.reuse import ReuseSource, find_sources, source_for_part
from plmscreen.screening.run.settings import MAX_SHARD_TOKENS, MAX_SHARDS, ScreenSettings
from plmscreen.screening.store.layout import input_scan_path, part_file, run_info_dir, run_input_path


def shard_cost(length: int, window: int = ESM2_MAX_RESIDUES) -> int:
    """Tokens a sequence costs to score exactly: L masked copies of min(L, window) tokens."""
    return length * min(length, window)


def plan_shards(records: Sequence[ProteinRecord], shard_tokens: int, window: int = ESM2_MAX_RESIDUES) -> list[tuple[int, int]]:
    """Consecutive record ranges (first, last; 0-based inclusive) of about ``shard_tokens`` cost each."""
    return plan_cost_ranges([shard_cost(len(record.sequence), window) for record in records], shard_tokens)


def plan_cost_ranges(costs: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive index ranges whose costs add up to at most ``budget`` (a single larger item alone)."""
    return cost_ranges(np.concatenate(([0], np.cumsum(np.asarray(costs, dtype=np.int64)))), budget)


def cost_ranges(cumulative: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """``plan_cost_ranges`` from the costs' cumulative sums (``cumulative[i]``: the first i costs):
    one binary search per shard, so the shard planner can try many budgets on millions of sequences."""
    n_items, first, ranges = len(cumulative) - 1, 0, []
    while first < n_items:
        # The shard takes every next item while its cost stays within the budget, and at least one.
        end = max(first + 1, int(np.searchsorted(cumulative, cumulative[first] + budget, side="right")) - 1)
        ranges.append((first, end - 1))
        first = end
    return ranges


def run_id_for(input_sha256: str, checkpoint_sha256: str, settings: ScreenSettings, model: dict | None = None) -> str:
    """The same input, checkpoint and parameters always name the same run (reruns resume, never duplicate).
    ``model``: what else decides the numbers for families other than fair-esm (config, window,
    normalisation: ``PlannedCheckpoint.identity_key``); fair-esm run ids are unchanged."""
    identity = {"input": input_sha256, "checkpoint": checkpoint_sha256, "parameters": settings.identity()}
    if model is not None:
        identity["model"] = model
    key = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def min_shard_tokens(total_cost: int, budget_scale: int = 1) -> int:
    """The smallest shard budget that keeps a run within about ``MAX_SHARDS`` shards: each shard is
    a Prefect task run, a catalog row and three part files, so tens of millions of sequences get
    larger shards, not millions of tasks."""
    return max(1, math.ceil(total_cost / (MAX_SHARDS * max(1, budget_scale))))


@dataclass(frozen=True)
class ShardSpan:
    """Where a shard's records are in the run's input copy: bytes ``start``..``end``, the record
    number of its first record, the rejected records inside it (skipped), and its residues."""

    start: int
    end: int
    first_number: int
    n_residues: int
    skip: tuple[int, ...] = ()


@dataclass
class RunPlan:
    """A registered run: what every shard task needs to know, small enough to ship to workers."""

    run_id: str
    store: Path
    catalog_url: str | None
    settings: ScreenSettings
    model_name: str
    checkpoint_sha256: str
    input_path: Path
    input_sha256: str
    n_records: int  # valid records of the input
    rejects: list[RejectedRecord]
    shards: dict[int, tuple[int, int]]  # shard index -> (first, last) record, 0-based inclusive
    metadata: dict
    source: Path  # the plain-text copy of the input the spans point into
    spans: dict[int, ShardSpan] = dataclasses.field(default_factory=dict)
    rejects_file: Path | None = None
    checkpoint_identity: CheckpointIdentity | None = None  # the file version that was hashed
    # Sequences (by sha256) already scored in earlier runs of the store under this screen's reuse
    # key, and where (screening/run/reuse.py); empty with settings.reuse off.
    reuse_sources: dict[str, ReuseSource] = dataclasses.field(default_factory=dict)
    # Sequences that occur in more than one shard: the shard and id of their first record.
    first_copies: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    model_family: str = "fair-esm"  # the backend workers load (screening/model/backends)

    def shard_records(self, index: int) -> list[ProteinRecord]:
        """Shard ``index``'s records, read from the run's input copy (only its own bytes)."""
        first, last = self.shards[index]
        span = self.spans[index]
        return read_span(self.source, span.start, span.end, span.first_number, span.skip, expected=last - first + 1)

    def shard_residues(self, index: int) -> int:
        return self.spans[index].n_residues

    def iter_records(self) -> Iterator[ProteinRecord]:
        """Every valid record, shard by shard (one shard in memory at a time)."""
        for index in sorted(self.shards):
            yield from self.shard_records(index)

    def for_shard(self, index: int) -> RunPlan:
        """The plan cut down to one shard: what a worker task needs, nothing more (its records are
        read by the task itself)."""
        first, last = self.shards[index]
        sources = self.reuse_sources
        if sources:  # a rescreen: only this shard's sources travel (the task filters copies itself)
            shas = {r.sha256 for r in self.shard_records(index)}
            sources = {h: s for h, s in sources.items() if h in shas}
        return dataclasses.replace(self, rejects=[], shards={index: (first, last)}, spans={index: self.spans[index]},
                                   reuse_sources=sources,
                                   first_copies={h: c for h, c in self.first_copies.items() if c[0] < index})

    def reuse_sources_for(self, index: int, catalog: Catalog) -> dict[str, ReuseSource]:
        """Where shard ``index`` finds rows to copy: earlier runs, then the done shard of this run
        that holds a sequence's first copy."""
        if not self.settings.reuse:
            return {}
        shas = {r.sha256 for r in self.shard_records(index)}
        sources = {h: s for h, s in self.reuse_sources.items() if h in shas}
        done: dict[int, bool] = {}
        for sha in sorted(shas - set(sources)):
            if sha not in self.first_copies or self.first_copies[sha][0] >= index:
                continue
            shard, seq_id = self.first_copies[sha]
            if shard not in done:
                done[shard] = catalog.shard(self.run_id, shard).status == "done"
            if done[shard]:
                sources[sha] = source_for_part(self.store, self.model_name, self.run_id, part_file(self.store, "sequences", self.model_name, self.run_id, shard).name,
                                               seq_id, self.settings.diagnostics)
        return sources

    def open_catalog(self) -> Catalog:
        return Catalog.open(self.catalog_url, self.store)

def first_copies(index: FastaIndex, shards: dict[int, tuple[int, int]]) -> dict[str, tuple[int, str]]:
    """For each sequence found in more than one shard: the shard and id of its first record.

    Candidates come from the index's 64-bit sequence keys (no sequence is held); only they are read
    back and compared by their full sha256."""
    if len(index) < 2 or len(shards) < 2:
        return {}
    firsts = np.array(sorted(first for first, _ in shards.values()))
    shard_at = np.array([i for i, _ in sorted(shards.items(), key=lambda item: item[1][0])])
    shard_of = shard_at[np.searchsorted(firsts, np.arange(len(index)), side="right") - 1]
    order = np.lexsort((np.arange(len(index)), index.keys))
    keys, owners = index.keys[order], shard_of[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    spread = np.minimum.reduceat(owners, starts) != np.maximum.reduceat(owners, starts)
    first: dict[str, tuple[int, str]] = {}
    multi: set[str] = set()
    for group in np.flatnonzero(spread).tolist():
        end = starts[group + 1] if group + 1 < len(starts) else len(order)
        for k in order[starts[group]:end].tolist():  # in file order
            record = index.read(k, k)[0]
            shard = int(shard_of[k])
            if record.sha256 not in first:
                first[record.sha256] = (shard, record.seq_id)
            elif first[record.sha256][0] != shard:
                multi.add(record.sha256)
    return {sha: first[sha] for sha in multi}

def register_shards(catalog: Catalog, run_id: str, index: FastaIndex, planned: dict[int, tuple[int, int]],
                    seen_sha256s: set[str] | None = None) -> dict[int, tuple[int, int]]:
    """Register ``planned`` shards unless the run already has some; return the run's shards.

    A run keeps the shards it was first planned with: a resumed run (or a second flow of it)
    started with another shard size or worker count works on the registered shards, so finished
    shards stay finished and no record is in two shards. The shards' ``(seq_id, sha256)`` are read
    back shard by shard from the input copy into one transaction (``seen_sha256s`` collects the
    sha256s on the way)."""
    def registered() -> dict[int, tuple[int, int]]:
        return {s.index: (s.first, s.last) for s in catalog.shards(run_id)}

    def sequences_of(shard: int) -> Iterator[tuple[str, str]]:
        for record in index.read(*planned[shard]):
            sha = record.sha256
            if seen_sha256s is not None:
                seen_sha256s.add(sha)
            yield record.seq_id, sha

    stored = registered()
    if stored:
        return stored
    try:
        catalog.add_shards(run_id, [(shard, first, last) for shard, (first, last) in planned.items()], sequences_of)
    except CatalogError:
        if not registered():
            raise
        if seen_sha256s is not None:  # a concurrent flow registered first: its rows name the same sequences
            seen_sha256s.update(sha for _, _, sha in catalog.input_sequences(run_id))
    return registered()  # a concurrent flow of this run may have registered its plan first


def shard_spans(index: FastaIndex, shards: dict[int, tuple[int, int]]) -> dict[int, ShardSpan]:
    """Each shard's byte span in the input copy (what its task reads), from the index alone."""
    residues = np.concatenate([[0], np.cumsum(index.lengths)])
    spans = {}
    for shard, (first, last) in shards.items():
        lo, hi = int(index.numbers[first]), int(index.numbers[last])
        spans[shard] = ShardSpan(int(index.starts[first]), int(index.ends[last]), lo,
                                 int(residues[last + 1] - residues[first]), index.rejected_between(lo, hi))
    return spans


def prepare_run(
    input_path: str | Path,
    store: str | Path,
    settings: ScreenSettings = ScreenSettings(),
    skip_invalid: bool = False,
    overwrite: bool = False,
    catalog_url: str | None = None,
    shard_tokens_for: Callable[[list[int]], int] | None = None,
) -> RunPlan:
    """Validate the input, name the run, plan its shards and register them (idempotent).

    ``shard_tokens_for`` (the records' scoring costs → a shard budget) replaces
    ``settings.shard_tokens`` when the shard size depends on the input, as when a flow sizes
    shards for the cluster it runs on: the input is read here only. Automatic sizes are raised so
    that a run has at most about ``MAX_SHARDS`` shards (``min_shard_tokens``).

    The input is streamed once into ``STORE/runs/<run>/input.fasta`` (decompressed) while it is
    validated and hashed; only byte spans and lengths stay in memory, and the catalog registration
    reads the copy back shard by shard."""
    input_path, store = Path(input_path), Path(store)
    if not input_path.is_file():
        raise FileNotFoundError(f"FASTA input not found: {input_path}")
    scan_copy = input_scan_path(store)
    created = [d for d in (store, scan_copy.parent) if not d.exists()]
    scan_copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        index = scan_fasta(input_path, scan_copy)
        if index.rejects and not skip_invalid:
            raise InvalidFastaError(input_path, index.rejects)
        return _plan_and_register(index, input_path, store, settings, overwrite, catalog_url, shard_tokens_for, scan_copy)
    except BaseException:
        scan_copy.unlink(missing_ok=True)
        for directory in reversed(created):  # an input refused leaves no store behind
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _plan_and_register(index: FastaIndex, input_path: Path, store: Path, settings: ScreenSettings, overwrite: bool,
                       catalog_url: str | None, shard_tokens_for: Callable[[list[int]], int] | None,
                       scan_copy: Path) -> RunPlan:
    # The model's family, files, digests and window, from config and files only (no weights built).
    planned = plan_checkpoint(settings.model, settings.weights_dir, settings.hub_download)
    model_name, checkpoint, checkpoint_sha256 = planned.name, planned.path, planned.sha256
    costs = (index.lengths * np.minimum(index.lengths, planned.window)).tolist()
    automatic = settings.shard_tokens is None
    if shard_tokens_for is not None:
        settings = dataclasses.replace(settings, shard_tokens=shard_tokens_for(costs))
    elif automatic:  # no cluster to size shards for: the fixed default
        settings = dataclasses.replace(settings, shard_tokens=MAX_SHARD_TOKENS)
    if automatic:
        floor = min_shard_tokens(sum(costs), settings.shard_budget // settings.shard_tokens)
        settings = dataclasses.replace(settings, shard_tokens=max(settings.shard_tokens, floor))
    # A calibration of this checkpoint sets the flag rule unless the thresholds were set explicitly.
    settings, calibration = apply_calibration(settings, checkpoint_sha256, store, catalog_url)
    run_id = run_id_for(index.sha256, checkpoint_sha256, settings, planned.identity_key())
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "plmscreen_version": screening.__version__,
        "run_id": run_id,
        "model_name": model_name,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_path": str(checkpoint),
        # Backend, model id as given and each weight file's sha256 (PlannedCheckpoint.record).
        "model_family": planned.family,
        "model_id": planned.model,
        "weight_sha256": planned.weight_sha256,
        "input_path": str(input_path),
        "input_sha256": index.sha256,
        "parameters": settings.parameters(),
        "calibration": calibration,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),  # microseconds: runs made within one second still order
    }
    shard_ranges = dict(enumerate(plan_cost_ranges(costs, settings.shard_budget)))
    del costs
    source = run_input_path(store, run_id)
    plan = RunPlan(run_id, store, catalog_url, settings, model_name, checkpoint_sha256, input_path, index.sha256,
                   len(index), index.rejects, shard_ranges, metadata, source, checkpoint_identity=planned.identity,
                   model_family=planned.family)
    shas: set[str] | None = set() if settings.reuse else None
    with plan.open_catalog() as catalog:
        if overwrite:
            from plmscreen.screening.store.runs import delete_run  # the one way a run is deleted (also `runs delete`)

            delete_run(store, run_id, catalog)
        info_dir = run_info_dir(store, run_id)
        info_dir.mkdir(parents=True, exist_ok=True)
        # Same input sha256, same bytes: replacing a copy a concurrent flow's tasks read is harmless.
        os.replace(scan_copy, source)
        index.path = source
        if index.rejects:
            plan.rejects_file = info_dir / "rejects.tsv"
            write_rejects(index.rejects, plan.rejects_file)
        catalog.register_run(run_id, input_path=input_path, input_sha256=index.sha256, model_name=model_name,
                             checkpoint_sha256=checkpoint_sha256, parameters=settings.parameters(),
                             model_family=planned.family, weight_sha256=planned.weight_sha256,
                             plmscreen_version=screening.__version__, store_path=store, calibration=calibration)
        registered_before = bool(catalog.shards(run_id))
        plan.shards = register_shards(catalog, run_id, index, shard_ranges, shas)
        if shas is not None and registered_before:  # a resumed run: its sequences are in the catalog
            shas.update(sha for _, _, sha in catalog.input_sequences(run_id))
    plan.spans = shard_spans(index, plan.shards)
    if settings.reuse:
        plan.reuse_sources = find_sources(store, checkpoint_sha256, settings, shas, exclude_run=run_id)
        plan.first_copies = first_copies(index, plan.shards)
        # Claims left "running" stay: their holder may be alive (another flow of this run). A dead
        # holder's claim is taken over by the shard's task (claim_or_wait).
    return plan
