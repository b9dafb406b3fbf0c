"""A screen: FASTA → validated records → shards → scores → Parquet, with the catalog keeping count.

- ``prepare_run`` validates the input, names the run (input, checkpoint and parameters decide its
  id), plans shards balanced by cost and registers run and shards in the catalog;
- ``process_shard`` scores one shard and writes its files atomically, then marks it done; a shard
  the catalog already has as done is skipped, so a rerun or a recomputed task never duplicates;
- ``finalize_run`` closes the run in the catalog and collects the flagged sequences.
``run_screen`` chains them in this process; ``flows/`` runs ``process_shard`` on Dask workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from plmscreen import screening
from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SCHEMA_VERSION, SEQUENCES_SCHEMA
from plmscreen.schema.catalog import Catalog, CatalogError
from plmscreen.screening.input import InvalidFastaError, ProteinRecord, RejectedRecord, read_fasta, write_rejects
from plmscreen.screening.score.diagnostics import ResidueDiagnostics, residue_diagnostics
from plmscreen.screening.score.metrics import FlagRule, could_flag, summarize
from plmscreen.screening.model.checkpoints import ESM2_MAX_RESIDUES, CheckpointIdentity, LoadedModel, file_sha256, load_model, resolve_checkpoint
from plmscreen.screening.store.parquet import with_metadata, write_parquet_atomic
from plmscreen.screening.score.repeats import RepeatParams, find_repeats, partner_details
from plmscreen.screening.score.scorer import Scorer, ScoringOptions, SequenceScores


TABLES = ("residues", "sequences", "repeats")
WORKER_LOG = logging.getLogger("plmscreen.worker")


MODES = ("exact", "triage")
# Triage runs about a ninth of exact mode's tokens (9.4x fewer on an E. coli sample,
# bench/results/triage_*): its shards hold 8x the exact cost so tasks stay long enough that
# Prefect and Dask overhead remains small.
TRIAGE_SHARD_SCALE = 8


def run_dir(store: Path, table: str, model_name: str, run_id: str) -> Path:
    """Hive partitions: STORE/<table>/model=<model>/run=<run_id>/part-NNNNN.parquet."""
    model_part = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return Path(store) / table / f"model={model_part}" / f"run={run_id}"


@dataclass(frozen=True)
class ScreenSettings:
    """Everything that decides a screen's numbers; validated once, recorded with every output."""

    model: str = "plmscreen-mini"
    weights_dir: str | None = None
    device: str = "auto"
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    repeats: RepeatParams = field(default_factory=RepeatParams)
    flag: FlagRule = field(default_factory=FlagRule)
    shard_tokens: int = 4_000_000  # shard cost budget: Σ L·min(L, window) over its sequences
    mode: str = "exact"  # "triage": masked/ablated scoring only where it can change the flag
    diagnostics: bool = True  # copy-following and null co-mask columns for flagged sequences

    def __post_init__(self):
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {self.shard_tokens}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")

    @property
    def shard_budget(self) -> int:
        """Exact-mode cost (Σ L·min(L, window)) one shard may hold in this mode."""
        return self.shard_tokens * (TRIAGE_SHARD_SCALE if self.mode == "triage" else 1)

    def identity(self) -> dict:
        """What names a run: the settings that change its numbers or flags. Batch size, engine and
        shard size only change how fast it goes, so a rerun with another ``--batch-tokens`` after
        an out-of-memory failure resumes the same run instead of throwing its shards away."""
        return {
            "scoring": {"precision": self.scoring.precision, "masks_per_copy": self.scoring.masks_per_copy},
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "mode": self.mode,
            "diagnostics": self.diagnostics,
        }

    def parameters(self) -> dict:
        return {
            "scoring": dataclasses.asdict(self.scoring),
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "shard_tokens": self.shard_tokens,
            "mode": self.mode,
            "diagnostics": self.diagnostics,
        }


@dataclass
class ShardTables:
    residues: pa.Table
    sequences: pa.Table
    repeats: pa.Table


@dataclass
class ScreenSummary:
    out_dir: Path
    run_id: str
    n_input: int
    n_scored: int
    n_rejected: int
    n_residues: int
    flagged: list[dict]
    files: list[Path]
    rejects_file: Path | None
    seconds: float
    model: dict
    n_shards: int = 0
    n_shards_skipped: int = 0  # already done in the catalog (resumed run)
    failed_shards: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain values only: what a flow returns and the CLI prints."""
        return {
            "run_id": self.run_id,
            "store": str(self.out_dir),
            "n_input": self.n_input,
            "n_scored": self.n_scored,
            "n_rejected": self.n_rejected,
            "n_residues": self.n_residues,
            "n_shards": self.n_shards,
            "n_shards_skipped": self.n_shards_skipped,
            "failed_shards": list(self.failed_shards),
            "flagged": self.flagged,
            "rejects_file": str(self.rejects_file) if self.rejects_file else None,
            "seconds": self.seconds,
            "model": self.model,
        }


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _residue_columns(record: ProteinRecord, scores: SequenceScores, details, diag: ResidueDiagnostics | None) -> dict:
    length = len(record.sequence)
    inflation = scores.logp_masked - scores.logp_ablated  # NaN without partners or where unscored
    none = [None] * length
    return {
        "seq_id": [record.seq_id] * length,
        "pos": list(range(1, length + 1)),
        "aa": list(record.sequence),
        "logp_masked": _nullable(scores.logp_masked),
        "logp_unmasked": scores.logp_unmasked.tolist(),
        "partner_pos": [[p for p, _, _ in d] for d in details],
        "logp_ablated": _nullable(scores.logp_ablated),
        "windowed": [scores.windowed] * length,
        "inflation": _nullable(inflation),
        "partner_region": [[r for _, r, _ in d] for d in details],
        "partner_identity": [[ident for _, _, ident in d] for d in details],
        "logp_random_comask": none if diag is None else _nullable(diag.logp_random_comask),
        "net_inflation": none if diag is None else _nullable(diag.logp_random_comask - scores.logp_ablated),
        "copy_following": none if diag is None else _nullable(diag.copy_following),
        "planted_residue": none if diag is None else list(diag.substitute),
    }


def _mean_or_none(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def score_shard(
    scorer: Scorer,
    records: Sequence[ProteinRecord],
    repeat_params: RepeatParams,
    flag_rule: FlagRule,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
    *,
    mode: str = "exact",
    diagnostics: bool = False,
) -> ShardTables:
    """Detect repeats, score and summarise ``records``; pure computation, no files.

    ``mode="triage"`` masks only the partnered residues of sequences whose repeat fraction lets
    the flag rule fire (the verdict depends on nothing else); ``diagnostics`` adds the
    copy-following and null co-mask columns for flagged sequences."""
    regions = [find_repeats(r.sequence, repeat_params) for r in records]
    details = [partner_details(len(r.sequence), reg) for r, reg in zip(records, regions)]
    partners0 = [[tuple(p - 1 for p, _, _ in d) for d in det] for det in details]
    partnered = [np.array([bool(p) for p in ps], dtype=bool) for ps in partners0]
    positions = None
    if mode == "triage":
        positions = [np.flatnonzero(m).tolist() if could_flag(float(m.mean()), flag_rule) else [] for m in partnered]
    callback = None if on_sequence_done is None else (lambda s, _scores: on_sequence_done(records[s]))
    scores = scorer.score([r.sequence for r in records], partners0, callback, positions)
    summaries = [summarize(sc.logp_masked, sc.logp_unmasked, sc.logp_ablated, flag_rule, m)
                 for sc, m in zip(scores, partnered)]

    diags: list[ResidueDiagnostics | None] = [None] * len(records)
    flagged = [k for k, summary in enumerate(summaries) if summary.flagged]
    if diagnostics and flagged:
        computed = residue_diagnostics(scorer, [records[k].sequence for k in flagged], [partners0[k] for k in flagged])
        for k, diag in zip(flagged, computed):
            diags[k] = diag

    residue_cols = {name: [] for name in RESIDUES_SCHEMA.names}
    sequence_rows = []
    for record, seq_scores, det, reg, summary, diag in zip(records, scores, details, regions, summaries, diags):
        for name, values in _residue_columns(record, seq_scores, det, diag).items():
            residue_cols[name].extend(values)
        sequence_rows.append(
            {
                "seq_id": record.seq_id,
                **dataclasses.asdict(summary),
                "n_repeat_regions": len(reg),
                "windowed": seq_scores.windowed,
                "sequence_sha256": record.sha256,
                "mode": mode,
                "mean_net_inflation": None if diag is None else _mean_or_none(diag.logp_random_comask - seq_scores.logp_ablated),
                "mean_copy_following": None if diag is None else _mean_or_none(diag.copy_following),
            }
        )
    return ShardTables(
        residues=pa.table(residue_cols, schema=RESIDUES_SCHEMA),
        sequences=pa.Table.from_pylist(sequence_rows, schema=SEQUENCES_SCHEMA),
        repeats=repeat_table(records, regions),
    )


def repeat_table(records: Sequence[ProteinRecord], regions: Sequence[Sequence]) -> pa.Table:
    rows = [
        {
            "seq_id": record.seq_id,
            "region_id": pair.region_id,
            "start": pair.start,
            "end": pair.end,
            "partner_start": pair.partner_start,
            "partner_end": pair.partner_end,
            "identity": pair.identity,
            "score": pair.score,
            "pvalue": pair.pvalue,
        }
        for record, pairs in zip(records, regions)
        for pair in pairs
    ]
    return pa.Table.from_pylist(rows, schema=REPEATS_SCHEMA)


def shard_cost(length: int, window: int = ESM2_MAX_RESIDUES) -> int:
    """Tokens a sequence costs to score exactly: L masked copies of min(L, window) tokens."""
    return length * min(length, window)


def plan_shards(records: Sequence[ProteinRecord], shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive record ranges (first, last; 0-based inclusive) of about ``shard_tokens`` cost each."""
    return plan_cost_ranges([shard_cost(len(record.sequence)) for record in records], shard_tokens)


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


def run_id_for(input_sha256: str, checkpoint_sha256: str, settings: ScreenSettings) -> str:
    """The same input, checkpoint and parameters always name the same run (reruns resume, never duplicate)."""
    key = json.dumps({"input": input_sha256, "checkpoint": checkpoint_sha256, "parameters": settings.identity()}, sort_keys=True)
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

    def shard_records(self, index: int) -> list[ProteinRecord]:
        first, last = self.shards[index]
        return self.records[first - self.records_offset : last - self.records_offset + 1]

    def for_shard(self, index: int) -> RunPlan:
        """The plan cut down to one shard's records: what a worker task needs, nothing more."""
        first, _ = self.shards[index]
        return dataclasses.replace(self, records=self.shard_records(index), rejects=[],
                                   shards={index: self.shards[index]}, records_offset=first)

    def open_catalog(self) -> Catalog:
        return Catalog.open(self.catalog_url, self.store)


def write_shard(tables: ShardTables, store: Path, model_name: str, run_id: str, shard: int, metadata: dict) -> list[Path]:
    name = f"part-{shard:05d}.parquet"
    return [
        write_parquet_atomic(with_metadata(table, metadata), run_dir(store, kind, model_name, run_id) / name)
        for kind, table in (("residues", tables.residues), ("sequences", tables.sequences), ("repeats", tables.repeats))
    ]


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
    if shard_tokens_for is not None:
        costs = [shard_cost(len(r.sequence)) for r in contents.records]
        settings = dataclasses.replace(settings, shard_tokens=shard_tokens_for(costs))
    model_name, checkpoint = resolve_checkpoint(settings.model, settings.weights_dir)
    checkpoint_identity = CheckpointIdentity.of(checkpoint)
    checkpoint_sha256 = file_sha256(checkpoint)
    run_id = run_id_for(contents.sha256, checkpoint_sha256, settings)
    store.mkdir(parents=True, exist_ok=True)
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "plmscreen_version": screening.__version__,
        "run_id": run_id,
        "model_name": model_name,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_path": str(checkpoint),
        "input_path": str(input_path),
        "input_sha256": contents.sha256,
        "parameters": settings.parameters(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(),  # microseconds: runs made within one second still order
    }
    plan = RunPlan(run_id, store, catalog_url, settings, model_name, checkpoint_sha256, input_path, contents.sha256,
                   contents.records, contents.rejects, dict(enumerate(plan_shards(contents.records, settings.shard_budget))), metadata,
                   checkpoint_identity=checkpoint_identity)
    with plan.open_catalog() as catalog:
        if overwrite:
            from plmscreen.screening.store.runs import delete_run  # the one way a run is deleted (also `runs delete`)

            delete_run(store, run_id, catalog)
        info_dir = store / "runs" / run_id
        info_dir.mkdir(parents=True, exist_ok=True)
        if contents.rejects:
            plan.rejects_file = info_dir / "rejects.tsv"
            write_rejects(contents.rejects, plan.rejects_file)
        catalog.register_run(run_id, input_path=input_path, input_sha256=contents.sha256, model_name=model_name,
                             checkpoint_sha256=checkpoint_sha256, parameters=settings.parameters(),
                             plmscreen_version=screening.__version__, store_path=store)
        plan.shards = register_shards(catalog, run_id, contents.records, plan.shards)
        # Claims left "running" stay: their holder may be alive (another flow of this run). A dead
        # holder's claim is taken over by the shard's task (claim_or_wait).
    return plan


class ScorerCache:
    """The models one worker process holds, keyed by checkpoint sha256, device and scoring options.

    Long-lived workers (``--scheduler``) serve many runs: at most ``capacity`` models stay loaded
    (the least recently used is dropped first), and a model is looked up by the digest the run was
    planned with, so a replaced checkpoint file is never scored under its old digest (loading
    verifies the file against the plan, see ``load_model``)."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._scorers: dict[tuple, Scorer] = {}

    def __len__(self) -> int:
        return len(self._scorers)

    def for_plan(self, plan: RunPlan) -> Scorer:
        settings = plan.settings
        key = (plan.checkpoint_sha256, settings.device, settings.scoring)
        scorer = self._scorers.pop(key, None)
        if scorer is None:
            while len(self._scorers) >= self.capacity:
                self._scorers.pop(next(iter(self._scorers)))  # least recently used
            loaded = load_model(settings.model, settings.weights_dir, settings.device,
                                expected_sha256=plan.checkpoint_sha256, planned_identity=plan.checkpoint_identity)
            scorer = Scorer(loaded, settings.scoring)
            # One line per load: an operator (and the cluster tests) can see each worker loads once.
            WORKER_LOG.info("worker %s loaded %s (sha256 %s, verified) on %s", this_worker(), loaded.name,
                            loaded.checkpoint_sha256, loaded.device)
        self._scorers[key] = scorer  # most recently used last
        return scorer


# A shard claim is a lease: its holder renews it every third of this, and a claim not renewed for
# this long is taken over (its holder died on another node; on this host a dead holder is seen at
# once). Long enough to ride out a stalled disk or a busy catalog, short enough that a lost node
# delays its shards by about a minute.
CLAIM_LEASE_SECONDS = 60.0
CLAIM_LEASE_ENV = "PLMSCREEN_CLAIM_LEASE_SECONDS"


def claim_lease_seconds() -> float:
    value = os.environ.get(CLAIM_LEASE_ENV)
    if value is None:
        return CLAIM_LEASE_SECONDS
    try:
        lease = float(value)
    except ValueError:
        raise ValueError(f"${CLAIM_LEASE_ENV} must be a number of seconds, got {value!r}") from None
    if lease <= 0:
        raise ValueError(f"${CLAIM_LEASE_ENV} must be positive, got {value!r}")
    return lease


def this_worker() -> str:
    """How a claim names its holder: "host:pid" (plmscreen status shows it; an operator can find it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str | None) -> bool:
    """Only a process on this host can be known dead; a holder elsewhere is judged by its lease."""
    import psutil

    host, _, pid = (holder or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def claim_or_wait(catalog: Catalog, run_id: str, shard: int, lease: float, poll: float | None = None) -> bool:
    """Claim ``shard`` for this process: True once claimed, False if it is (or becomes) done.

    A shard held by a live holder (another flow of the same run, a worker still scoring it) is
    not computed twice: this waits, reading the catalog every ``poll`` seconds, until the holder
    finishes it or its lease runs out. The catalog, not Prefect or Dask, is the only thing every
    flow of a run shares, so the lease lives there."""
    poll = min(5.0, lease / 4) if poll is None else poll
    me = this_worker()
    while True:
        state = catalog.shard(run_id, shard)
        if state.status == "done":
            return False
        if catalog.claim_shard(run_id, shard, stale_after=lease, worker=me):
            return True
        if state.status == "running" and holder_is_dead(state.worker) \
                and catalog.take_over_claim(run_id, shard, state.worker, worker=me):
            return True
        time.sleep(poll)


@contextlib.contextmanager
def lease_heartbeat(catalog: Catalog, run_id: str, shard: int, lease: float):
    """Renew this process's claim on ``shard`` every third of the lease while the block runs."""
    stop = threading.Event()
    me = this_worker()

    def beat() -> None:
        while not stop.wait(lease / 3):
            try:
                catalog.renew_claim(run_id, shard, me)
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover, never wrong data
                pass

    thread = threading.Thread(target=beat, name=f"lease-{run_id}-{shard}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class ShardManifest:
    """What a shard task returns: small, never arrays."""

    shard: int
    n_sequences: int
    n_residues: int
    n_flagged: int
    files: tuple[str, ...]
    seconds: float
    skipped: bool  # already done in the catalog


def process_shard(
    scorer: Scorer,
    plan: RunPlan,
    shard: int,
    catalog: Catalog,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
) -> ShardManifest:
    """Score one shard and write its files, unless it is done (or gets done by the holder of its
    claim while this waits: see ``claim_or_wait``)."""
    records = plan.shard_records(shard)
    n_residues = sum(len(r.sequence) for r in records)
    lease = claim_lease_seconds()
    if not claim_or_wait(catalog, plan.run_id, shard, lease):
        state = catalog.shard(plan.run_id, shard)
        return ShardManifest(shard, len(records), n_residues, -1, tuple(state.output_files), 0.0, True)
    started = time.perf_counter()
    try:
        with lease_heartbeat(catalog, plan.run_id, shard, lease):
            tables = score_shard(scorer, records, plan.settings.repeats, plan.settings.flag, on_sequence_done,
                                 mode=plan.settings.mode, diagnostics=plan.settings.diagnostics)
            files = write_shard(tables, plan.store, plan.model_name, plan.run_id, shard, plan.metadata)
    except Exception as exc:
        catalog.mark_shard_failed(plan.run_id, shard, f"{type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - started
    catalog.mark_shard_done(plan.run_id, shard, [str(f) for f in files], seconds)
    n_flagged = sum(tables.sequences.column("flagged").to_pylist())
    return ShardManifest(shard, len(records), n_residues, n_flagged, tuple(str(f) for f in files), seconds, False)


def finalize_run(plan: RunPlan, manifests: Sequence[ShardManifest], failed: Sequence[int], seconds: float, model: dict) -> ScreenSummary:
    """Close the run in the catalog and gather its flagged sequences from the written shards."""
    import pyarrow.parquet as pq

    with plan.open_catalog() as catalog:
        catalog.finish_run(plan.run_id, "failed" if failed else "done")
    flagged: list[dict] = []
    files = sorted(run_dir(plan.store, "sequences", plan.model_name, plan.run_id).glob("part-*.parquet"))
    for path in files:
        flagged += [row for row in pq.read_table(path).to_pylist() if row["flagged"]]
    summary = ScreenSummary(
        out_dir=plan.store,
        run_id=plan.run_id,
        n_input=len(plan.records) + sum(1 for r in plan.rejects if r.record_number > 0),
        n_scored=sum(m.n_sequences for m in manifests),
        n_rejected=len(plan.rejects),
        n_residues=sum(m.n_residues for m in manifests),
        flagged=sorted(flagged, key=lambda row: -row["inflation_factor"]),
        files=[Path(f) for m in manifests for f in m.files],
        rejects_file=plan.rejects_file,
        seconds=seconds,
        model=model,
        n_shards=len(plan.shards),
        n_shards_skipped=sum(m.skipped for m in manifests),
        failed_shards=list(failed),
    )
    run_json = {**plan.metadata, "model": model, "n_scored": summary.n_scored, "n_rejected": summary.n_rejected,
                "n_shards": summary.n_shards, "failed_shards": summary.failed_shards}
    (plan.store / "runs" / plan.run_id / "run.json").write_text(json.dumps(run_json, indent=2))
    # Users may open STORE/plmscreen.duckdb directly; plmscreen's own commands refresh it anyway.
    from plmscreen.screening.errors import StoreError
    from plmscreen.screening.store.views import refresh_views

    try:
        refresh_views(plan.store)
    except StoreError:
        pass
    return summary


def run_screen(
    input_path: str | Path,
    out_dir: str | Path,
    settings: ScreenSettings = ScreenSettings(),
    skip_invalid: bool = False,
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
    on_start: Callable[[list[ProteinRecord]], None] | None = None,
    catalog_url: str | None = None,
) -> ScreenSummary:
    """Screen a FASTA file into the store ``out_dir`` in this process; a rerun resumes the same run."""
    started = time.perf_counter()
    plan = prepare_run(input_path, out_dir, settings, skip_invalid, overwrite, catalog_url)
    with plan.open_catalog() as catalog:
        pending = {s.index for s in catalog.unfinished_shards(plan.run_id)}
        if pending and loaded is None:
            loaded = load_model(settings.model, settings.weights_dir, settings.device,
                                expected_sha256=plan.checkpoint_sha256, planned_identity=plan.checkpoint_identity)
        model = loaded.describe() if loaded is not None else {"model_name": plan.model_name, "checkpoint_sha256": plan.checkpoint_sha256}
        if on_start is not None:
            on_start([r for i in sorted(pending) for r in plan.shard_records(i)])
        scorer = Scorer(loaded, settings.scoring) if loaded is not None else None
        manifests = [process_shard(scorer, plan, shard, catalog, on_sequence_done) for shard in plan.shards]
    return finalize_run(plan, manifests, [], time.perf_counter() - started, model)
