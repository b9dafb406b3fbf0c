"""A run's plan: the input read and validated once, the run named, shards planned by cost and registered.

``prepare_run`` is the only code that reads the input and names a run; the CLI, the flow and the
progress bar all work from the RunPlan it returns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plmscreen import screening
from plmscreen.schema.arrow import SCHEMA_VERSION
from plmscreen.screening.errors import CatalogError
from plmscreen.screening.input import InvalidFastaError, ProteinRecord, RejectedRecord, read_fasta, write_rejects
from plmscreen.screening.model.backends.resolve import plan_checkpoint
from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES, CheckpointIdentity
from plmscreen.screening.run.calibrations import apply_calibration
from plmscreen.screening.run.catalog import Catalog
from plmscreen.screening.run.reuse import ReuseSource, find_sources, source_for_part
from plmscreen.screening.run.settings import MAX_SHARD_TOKENS, ScreenSettings
from plmscreen.screening.store.layout import part_file, run_info_dir


def shard_cost(length: int, window: int = ESM2_MAX_RESIDUES) -> int:
    """Tokens a sequence costs to score exactly: L masked copies of min(L, window) tokens."""
    return length * min(length, window)


def plan_shards(records: Sequence[ProteinRecord], shard_tokens: int, window: int = ESM2_MAX_RESIDUES) -> list[tuple[int, int]]:
    """Consecutive record ranges (first, last; 0-based inclusive) of about ``shard_tokens`` cost each."""
    return plan_cost_ranges([shard_cost(len(record.sequence), window) for record in records], shard_tokens)


def plan_cost_ranges(costs: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive index ranges whose costs add up to at most ``budget`` (a single larger item alone)."""
    shards: list[tuple[int, int]] = []
    first, total = 0, 0
    for index, cost in enumerate(costs):
        if index > first and total + cost > budget:
            shards.append((first, index - 1))
            first, total = index, 0
        total += cost
    if costs:
        shards.append((first, len(costs) - 1))
    return shards


def run_id_for(input_sha256: str, checkpoint_sha256: str, settings: ScreenSettings, model: dict | None = None) -> str:
    """The same input, checkpoint and parameters always name the same run (reruns resume, never duplicate).
    ``model``: what else decides the numbers for families other than fair-esm (config, window,
    normalisation: ``PlannedCheckpoint.identity_key``); fair-esm run ids are unchanged."""
    identity = {"input": input_sha256, "checkpoint": checkpoint_sha256, "parameters": settings.identity()}
    if model is not None:
        identity["model"] = model
    key = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
    records: list[ProteinRecord]
    rejects: list[RejectedRecord]
    shards: dict[int, tuple[int, int]]  # shard index -> (first, last) record, 0-based inclusive
    metadata: dict
    rejects_file: Path | None = None
    records_offset: int = 0  # index of records[0] in the input (non-zero in a one-shard slice)
    checkpoint_identity: CheckpointIdentity | None = None  # the file version that was hashed
    # Sequences (by sha256) already scored in earlier runs of the store under this screen's reuse
    # key, and where (screening/run/reuse.py); empty with settings.reuse off.
    reuse_sources: dict[str, ReuseSource] = dataclasses.field(default_factory=dict)
    # Sequences that occur in more than one shard: the shard and id of their first record.
    first_copies: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)
    model_family: str = "fair-esm"  # the backend workers load (screening/model/backends)

    def shard_records(self, index: int) -> list[ProteinRecord]:
        first, last = self.shards[index]
        return self.records[first - self.records_offset : last - self.records_offset + 1]

    def for_shard(self, index: int) -> RunPlan:
        """The plan cut down to one shard's records: what a worker task needs, nothing more."""
        first, _ = self.shards[index]
        records = self.shard_records(index)
        shas = {r.sha256 for r in records}
        return dataclasses.replace(self, records=records, rejects=[], shards={index: self.shards[index]},
                                   records_offset=first,
                                   reuse_sources={h: s for h, s in self.reuse_sources.items() if h in shas},
                                   first_copies={h: c for h, c in self.first_copies.items() if h in shas and c[0] < index})

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

def first_copies(records: Sequence[ProteinRecord], shards: dict[int, tuple[int, int]]) -> dict[str, tuple[int, str]]:
    """For each sequence found in more than one shard: the shard and id of its first record."""
    first: dict[str, tuple[int, str]] = {}
    spread: set[str] = set()
    for index, (lo, hi) in sorted(shards.items()):
        for record in records[lo : hi + 1]:
            sha = record.sha256
            if sha not in first:
                first[sha] = (index, record.seq_id)
            elif first[sha][0] != index:
                spread.add(sha)
    return {sha: first[sha] for sha in spread}


def register_shards(catalog: Catalog, run_id: str, records: Sequence[ProteinRecord],
                    planned: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Register ``planned`` shards unless the run already has some; return the run's shards.

    A run keeps the shards it was first planned with: a resumed run (or a second flow of it)
    started with another shard size or worker count works on the registered shards, so finished
    shards stay finished and no record is in two shards."""
    def registered() -> dict[int, tuple[int, int]]:
        return {s.index: (s.first, s.last) for s in catalog.shards(run_id)}

    stored = registered()
    if stored:
        return stored
    try:
        catalog.add_shards(run_id, [(index, first, last, [(r.seq_id, r.sha256) for r in records[first : last + 1]])
                                    for index, (first, last) in planned.items()])
    except CatalogError:
        if not registered():
            raise
    return registered()  # a concurrent flow of this run may have registered its plan first


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
    shards for the cluster it runs on: the input is read here only."""
    input_path, store = Path(input_path), Path(store)
    contents = read_fasta(input_path)
    if contents.rejects and not skip_invalid:
        raise InvalidFastaError(input_path, contents.rejects)
    # The model's family, files, digests and window, from config and files only (no weights built).
    planned = plan_checkpoint(settings.model, settings.weights_dir, settings.hub_download)
    model_name, checkpoint, checkpoint_sha256 = planned.name, planned.path, planned.sha256
    if shard_tokens_for is not None:
        costs = [shard_cost(len(r.sequence), planned.window) for r in contents.records]
        settings = dataclasses.replace(settings, shard_tokens=shard_tokens_for(costs))
    elif settings.shard_tokens is None:  # no cluster to size shards for: the fixed default
        settings = dataclasses.replace(settings, shard_tokens=MAX_SHARD_TOKENS)
    # A calibration of this checkpoint sets the flag rule unless the thresholds were set explicitly.
    settings, calibration = apply_calibration(settings, checkpoint_sha256, store, catalog_url)
    run_id = run_id_for(contents.sha256, checkpoint_sha256, settings, planned.identity_key())
    store.mkdir(parents=True, exist_ok=True)
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
        "input_sha256": contents.sha256,
        "parameters": settings.parameters(),
        "calibration": calibration,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),  # microseconds: runs made within one second still order
    }
    plan = RunPlan(run_id, store, catalog_url, settings, model_name, checkpoint_sha256, input_path, contents.sha256,
                   contents.records, contents.rejects,
                   dict(enumerate(plan_shards(contents.records, settings.shard_budget, planned.window))), metadata,
                   checkpoint_identity=planned.identity, model_family=planned.family)
    with plan.open_catalog() as catalog:
        if overwrite:
            from plmscreen.screening.store.runs import delete_run  # the one way a run is deleted (also `runs delete`)

            delete_run(store, run_id, catalog)
        info_dir = run_info_dir(store, run_id)
        info_dir.mkdir(parents=True, exist_ok=True)
        if contents.rejects:
            plan.rejects_file = info_dir / "rejects.tsv"
            write_rejects(contents.rejects, plan.rejects_file)
        catalog.register_run(run_id, input_path=input_path, input_sha256=contents.sha256, model_name=model_name,
                             checkpoint_sha256=checkpoint_sha256, parameters=settings.parameters(),
                             model_family=planned.family, weight_sha256=planned.weight_sha256,
                             plmscreen_version=screening.__version__, store_path=store, calibration=calibration)
        plan.shards = register_shards(catalog, run_id, contents.records, plan.shards)
    if settings.reuse:
        plan.reuse_sources = find_sources(store, checkpoint_sha256, settings, {r.sha256 for r in contents.records},
                                          exclude_run=run_id)
        plan.first_copies = first_copies(contents.records, plan.shards)
        # Claims left "running" stay: their holder may be alive (another flow of this run). A dead
        # holder's claim is taken over by the shard's task (claim_or_wait).
    return plan
