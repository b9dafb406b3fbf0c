"""A screen: FASTA → validated records → shards → scores → Parquet, with the catalog keeping count.

- ``prepare_run`` validates the input, names the run (input, checkpoint and parameters decide its
  id), plans shards balanced by cost and registers run and shards in the catalog;
- ``process_shard`` scores one shard and writes its files atomically, then marks it done; a shard
  the catalog already has as done is skipped, so a rerun or a recomputed task never duplicates;
- ``finalize_run`` closes the run in the catalog, applies the flag rule's run-wide q-value
  (Benjamini-Hochberg over the run's partner tests) and writes the run's verdicts.
``run_screen`` chains them in this process; ``flows/`` runs ``process_shard`` on Dask workers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plmscreen.screening.input import ProteinRecord
from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.fair_esm import FairEsmBackend
from plmscreen.screening.model.backends.scorer import scorer_for
from plmscreen.screening.model.checkpoints import LoadedModel, ModelLoadError
from plmscreen.screening.run.catalog import Catalog
from plmscreen.screening.run.claims import claim_lease_seconds, claim_or_wait, lease_heartbeat
from plmscreen.screening.run.plan import RunPlan, prepare_run
from plmscreen.screening.run.reuse import load_stored
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.run.tables import score_shard, write_shard
from plmscreen.screening.run.workers import load_planned_backend
from plmscreen.screening.score.scorer import Scorer
from plmscreen.screening.store.layout import run_json_path, run_parts


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
    # Of the n_scored sequences written: copied from an earlier run, and copied from another
    # record of this run with the same residues (sequences.reused_from_run); the rest were scored.
    n_reused: int = 0
    n_duplicates: int = 0
    n_rediagnosed: int = 0  # copied, flagged by this run's rule, diagnostics computed (this invocation)
    # Where the flag rule came from: the calibration applied (id, date, held-out rates) or why none
    # (screening/run/calibrations.py); its "note" is the sentence the summary prints.
    calibration: dict | None = None

    @property
    def n_model_scored(self) -> int:
        """Sequences of the run that the model scored for their own record."""
        return self.n_scored - self.n_reused - self.n_duplicates

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
            "n_model_scored": self.n_model_scored,
            "n_reused": self.n_reused,
            "n_duplicates": self.n_duplicates,
            "n_rediagnosed": self.n_rediagnosed,
            "flagged": self.flagged,
            "rejects_file": str(self.rejects_file) if self.rejects_file else None,
            "seconds": self.seconds,
            "model": self.model,
            "calibration": self.calibration,
        }

@dataclass(frozen=True)
class ShardManifest:
    """What a shard task returns: small, never arrays."""

    shard: int
    n_sequences: int
    n_residues: int
    n_flagged: int  # effect-flagged; the flag itself needs the run-wide q-value (finalize_run)
    files: tuple[str, ...]
    seconds: float
    skipped: bool  # already done in the catalog
    n_scored: int = 0  # records scored here; the others were copied (ShardCounts)
    n_reused: int = 0
    n_duplicates: int = 0
    n_rediagnosed: int = 0


def process_shard(
    scorer: Scorer | Callable[[], Scorer],
    plan: RunPlan,
    shard: int,
    catalog: Catalog,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
) -> ShardManifest:
    """Score one shard and write its files, unless it is done (or gets done by the holder of its
    claim while this waits: see ``claim_or_wait``). Rows already in the store are copied instead
    of scored (``settings.reuse``, screening/run/reuse.py); ``scorer`` may be a function that
    loads the model, called only if something is left to score."""
    records = plan.shard_records(shard)
    n_residues = sum(len(r.sequence) for r in records)
    lease = claim_lease_seconds()
    if not claim_or_wait(catalog, plan.run_id, shard, lease):
        state = catalog.shard(plan.run_id, shard)
        return ShardManifest(shard, len(records), n_residues, -1, tuple(state.output_files), 0.0, True)
    started = time.perf_counter()
    try:
        with lease_heartbeat(catalog, plan.run_id, shard, lease):
            stored = load_stored(plan.reuse_sources_for(shard, catalog)) if plan.settings.reuse else {}
            tables = score_shard(scorer, records, plan.settings.repeats, plan.settings.flag, on_sequence_done,
                                 mode=plan.settings.mode, diagnostics=plan.settings.diagnostics,
                                 reuse=plan.settings.reuse, stored=stored, run_id=plan.run_id)
            files = write_shard(tables, plan.store, plan.model_name, plan.run_id, shard, plan.metadata)
    except Exception as exc:
        catalog.mark_shard_failed(plan.run_id, shard, f"{type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - started
    catalog.mark_shard_done(plan.run_id, shard, [str(f) for f in files], seconds)
    n_flagged = sum(tables.sequences.column("effect_flagged").to_pylist())  # before the run-wide q-value
    counts = tables.counts
    return ShardManifest(shard, len(records), n_residues, n_flagged, tuple(str(f) for f in files), seconds, False,
                         counts.scored, counts.reused, counts.duplicates, counts.rediagnosed)


def finalize_run(plan: RunPlan, manifests: Sequence[ShardManifest], failed: Sequence[int], seconds: float, model: dict) -> ScreenSummary:
    """Close the run in the catalog and gather its flagged sequences from the written shards."""
    import pyarrow.parquet as pq

    with plan.open_catalog() as catalog:
        catalog.finish_run(plan.run_id, "failed" if failed else "done")
    # What the planner recorded (family, model id, every weight file's digest) under what the
    # loaded model describes; a flow's workers load the model, so the flow passes only its name.
    model = {**{k: plan.metadata[k] for k in PLANNED_MODEL_FIELDS if k in plan.metadata}, **model}
    # The run-wide verdicts need five columns of every sequence, not whole rows (a UniRef-sized run
    # has tens of millions of sequences), and are computed over Arrow/numpy arrays; full rows are
    # read only for the flagged sequences, one part file at a time.
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = list(run_parts(plan.store, "sequences", plan.model_name, plan.run_id))
    columns = pa.concat_tables([pq.read_table(path, columns=list(VERDICT_INPUTS)) for path in parts]) if parts else \
        pa.table({name: pa.array([], VERDICT_INPUT_TYPES[name]) for name in VERDICT_INPUTS})
    verdicts = write_verdicts(plan, columns)
    origins = columns.column("reused_from_run")
    n_duplicates = pc.sum(pc.equal(origins, plan.run_id)).as_py() or 0
    n_reused = (pc.sum(pc.is_valid(origins)).as_py() or 0) - n_duplicates
    flagged = []
    offset = 0
    for path in parts:
        part = pq.ParquetFile(path)
        n = part.metadata.num_rows
        picked = np.flatnonzero(verdicts.flagged[offset:offset + n])
        if picked.size:
            rows = part.read().take(pa.array(picked)).to_pylist()
            for row, k in zip(rows, picked):
                row["partner_qvalue"], row["flagged"] = float(verdicts.qvalues[offset + k]), True
            flagged += rows
        offset += n
    summary = ScreenSummary(
        out_dir=plan.store,
        run_id=plan.run_id,
        n_input=plan.n_records + sum(1 for r in plan.rejects if r.record_number > 0),
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
        n_reused=n_reused,
        n_duplicates=n_duplicates,
        n_rediagnosed=sum(m.n_rediagnosed for m in manifests),
        calibration=plan.metadata.get("calibration"),
    )
    run_json = {**plan.metadata, "model": model, "n_scored": summary.n_scored, "n_rejected": summary.n_rejected,
                "n_shards": summary.n_shards, "failed_shards": summary.failed_shards,
                "n_reused": summary.n_reused, "n_duplicates": summary.n_duplicates}
    run_json_path(plan.store, plan.run_id).write_text(json.dumps(run_json, indent=2))
    # Users may open STORE/plmscreen.duckdb directly; plmscreen's own commands refresh it anyway.
    from plmscreen.screening.errors import StoreError
    from plmscreen.screening.store.views import refresh_views

    try:
        refresh_views(plan.store)
    except StoreError:
        pass
    return summary


# The sequence columns the run-wide verdicts are computed from (finalize_run reads only these).
VERDICT_INPUTS = ("seq_id", "partner_pvalue", "inflation_factor", "repeat_fraction", "reused_from_run")
VERDICT_INPUT_TYPES = {"seq_id": "string", "partner_pvalue": "float64", "inflation_factor": "float64",
                       "repeat_fraction": "float64", "reused_from_run": "string"}


@dataclass(frozen=True)
class Verdicts:
    flagged: "np.ndarray"  # bool per sequence, in the order of the run's part files
    qvalues: "np.ndarray"  # BH q-value per sequence, NaN where not tested


def write_verdicts(plan: RunPlan, columns) -> Verdicts:
    """The run-wide part of the flag: BH q-values over the partner p-values of the run's sequences
    (its family: every tested sequence, whatever the mode), then the whole rule. ``columns``: an
    Arrow table of ``VERDICT_INPUTS`` over the run's sequences. Writes the verdicts, atomically,
    to STORE/runs/<run>/verdicts.parquet, which the ``sequences`` view joins."""
    import numpy as np
    import pyarrow as pa

    from plmscreen.schema.arrow import VERDICTS_SCHEMA
    from plmscreen.screening.score.metrics import bh_qvalue_array
    from plmscreen.screening.store.layout import verdicts_path
    from plmscreen.screening.store.parquet import with_metadata, write_parquet_atomic

    def floats(name: str) -> np.ndarray:  # nulls become NaN, which no condition of the rule holds for
        return columns.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    qvalues = bh_qvalue_array(floats("partner_pvalue"))
    flagged = plan.settings.flag.flags_array({"inflation_factor": floats("inflation_factor"),
                                              "repeat_fraction": floats("repeat_fraction"), "partner_qvalue": qvalues})
    n = columns.num_rows
    table = pa.table({"run": pa.array([plan.run_id], pa.string()).take(pa.array(np.zeros(n, np.int64))),
                      "seq_id": columns.column("seq_id"),
                      "partner_qvalue": pa.array(qvalues, pa.float64(), from_pandas=True),  # NaN -> null
                      "flagged": pa.array(flagged, pa.bool_())}, schema=VERDICTS_SCHEMA)
    path = verdicts_path(plan.store, plan.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(with_metadata(table, plan.metadata), path)
    return Verdicts(flagged, qvalues)


PLANNED_MODEL_FIELDS = ("model_name", "model_family", "model_id", "checkpoint_path", "checkpoint_sha256",
                        "weight_sha256")


def run_screen(
    input_path: str | Path,
    out_dir: str | Path,
    settings: ScreenSettings = ScreenSettings(),
    skip_invalid: bool = False,
    overwrite: bool = False,
    loaded: LoadedModel | Backend | None = None,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
    on_start: Callable[[list[ProteinRecord]], None] | None = None,
    catalog_url: str | None = None,
) -> ScreenSummary:
    """Screen a FASTA file into the store ``out_dir`` in this process; a rerun resumes the same run.
    ``loaded``: a model already loaded (any backend), checked against the plan's checkpoint digest."""
    started = time.perf_counter()
    plan = prepare_run(input_path, out_dir, settings, skip_invalid, overwrite, catalog_url)
    scorers: list[Scorer] = []

    def scorer() -> Scorer:
        """The model, loaded the first time a shard has something to score (a rescreen that copies
        every sequence never loads it)."""
        nonlocal loaded
        if not scorers:
            if loaded is None:
                loaded = load_planned_backend(plan)
            elif isinstance(loaded, LoadedModel):
                loaded = FairEsmBackend(loaded)
            if loaded.checkpoint_sha256 != plan.checkpoint_sha256:
                raise ModelLoadError(f"the model given has sha256 {loaded.checkpoint_sha256}, but run {plan.run_id} "
                                     f"was planned with {plan.checkpoint_sha256}")
            scorers.append(scorer_for(loaded, settings.scoring))
        return scorers[0]

    with plan.open_catalog() as catalog:
        pending = {s.index for s in catalog.unfinished_shards(plan.run_id)}
        if on_start is not None:
            on_start([r for i in sorted(pending) for r in plan.shard_records(i)])
        manifests = [process_shard(scorer, plan, shard, catalog, on_sequence_done) for shard in plan.shards]
    model = loaded.describe() if loaded is not None else {"model_name": plan.model_name, "checkpoint_sha256": plan.checkpoint_sha256}
    return finalize_run(plan, manifests, [], time.perf_counter() - started, model)
