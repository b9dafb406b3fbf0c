"""A screen on one machine: FASTA → validated records → shards → scores → Parquet.

``score_shard`` is the unit later orchestration distributes: records in, three Arrow tables out
(residues, sequences, repeat region pairs), no I/O. ``run_screen`` reads the input, scores it
shard by shard with one loaded model and writes each shard's files atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

import screening
from schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SCHEMA_VERSION, SEQUENCES_SCHEMA
from screening.fasta import InvalidFastaError, ProteinRecord, read_fasta, write_rejects
from screening.metrics import FlagRule, summarize
from screening.model import LoadedModel, load_model
from screening.output import with_metadata, write_parquet_atomic
from screening.repeats import RepeatParams, find_repeats, partner_details
from screening.scoring import Scorer, ScoringOptions, SequenceScores


TABLES = ("residues", "sequences", "repeats")


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
    shard_residues: int = 50_000  # residues per output shard

    def __post_init__(self):
        if self.shard_residues < 1:
            raise ValueError(f"shard_residues must be positive, got {self.shard_residues}")

    def parameters(self) -> dict:
        return {
            "scoring": dataclasses.asdict(self.scoring),
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "shard_residues": self.shard_residues,
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


def _residue_columns(record: ProteinRecord, scores: SequenceScores, details) -> dict:
    length = len(record.sequence)
    partnered = ~np.isnan(scores.logp_ablated)
    ablated = [None if np.isnan(v) else float(v) for v in scores.logp_ablated]
    inflation = [None if not p else float(m - a) for p, m, a in zip(partnered, scores.logp_masked, scores.logp_ablated)]
    return {
        "seq_id": [record.seq_id] * length,
        "pos": list(range(1, length + 1)),
        "aa": list(record.sequence),
        "logp_masked": scores.logp_masked.tolist(),
        "logp_unmasked": scores.logp_unmasked.tolist(),
        "partner_pos": [[p for p, _, _ in d] for d in details],
        "logp_ablated": ablated,
        "windowed": [scores.windowed] * length,
        "inflation": inflation,
        "partner_region": [[r for _, r, _ in d] for d in details],
        "partner_identity": [[ident for _, _, ident in d] for d in details],
    }


def score_shard(
    scorer: Scorer,
    records: Sequence[ProteinRecord],
    repeat_params: RepeatParams,
    flag_rule: FlagRule,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
) -> ShardTables:
    """Detect repeats, score and summarise ``records``; pure computation, no files."""
    regions = [find_repeats(r.sequence, repeat_params) for r in records]
    details = [partner_details(len(r.sequence), reg) for r, reg in zip(records, regions)]
    partners0 = [[tuple(p - 1 for p, _, _ in d) for d in det] for det in details]
    callback = None if on_sequence_done is None else (lambda s, _scores: on_sequence_done(records[s]))
    scores = scorer.score([r.sequence for r in records], partners0, callback)

    residue_cols = {name: [] for name in RESIDUES_SCHEMA.names}
    sequence_rows = []
    for record, seq_scores, det, reg in zip(records, scores, details, regions):
        for name, values in _residue_columns(record, seq_scores, det).items():
            residue_cols[name].extend(values)
        summary = summarize(seq_scores.logp_masked, seq_scores.logp_unmasked, seq_scores.logp_ablated, flag_rule)
        sequence_rows.append(
            {
                "seq_id": record.seq_id,
                **dataclasses.asdict(summary),
                "n_repeat_regions": len(reg),
                "windowed": seq_scores.windowed,
                "sequence_sha256": record.sha256,
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


def shard_records(records: Sequence[ProteinRecord], max_residues: int) -> list[list[ProteinRecord]]:
    """Consecutive records grouped to about ``max_residues`` residues each (at least one record)."""
    shards: list[list[ProteinRecord]] = []
    current: list[ProteinRecord] = []
    size = 0
    for record in records:
        if current and size + len(record.sequence) > max_residues:
            shards.append(current)
            current, size = [], 0
        current.append(record)
        size += len(record.sequence)
    if current:
        shards.append(current)
    return shards


def run_id_for(input_sha256: str, checkpoint_sha256: str, settings: ScreenSettings) -> str:
    """The same input, checkpoint and parameters always name the same run (reruns resume, never duplicate)."""
    key = json.dumps({"input": input_sha256, "checkpoint": checkpoint_sha256, "parameters": settings.parameters()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_metadata(settings: ScreenSettings, loaded: LoadedModel, input_path: Path | None, input_sha256: str | None, run_id: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "plmscreen_version": screening.__version__,
        "run_id": run_id,
        "model_name": loaded.name,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "model": loaded.describe(),
        "input_path": str(input_path) if input_path else None,
        "input_sha256": input_sha256,
        "parameters": settings.parameters(),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_shard(tables: ShardTables, store: Path, model_name: str, run_id: str, shard: int, metadata: dict) -> list[Path]:
    name = f"part-{shard:05d}.parquet"
    return [
        write_parquet_atomic(with_metadata(table, metadata), run_dir(store, kind, model_name, run_id) / name)
        for kind, table in (("residues", tables.residues), ("sequences", tables.sequences), ("repeats", tables.repeats))
    ]


class OutputExistsError(FileExistsError):
    pass


def _check_run_absent(store: Path, model_name: str, run_id: str, overwrite: bool) -> None:
    existing = [p for kind in TABLES for p in run_dir(store, kind, model_name, run_id).glob("*.parquet")]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{store} already holds run {run_id} (same input, model and parameters: {len(existing)} files); "
            "pass --overwrite to redo it"
        )
    for path in existing:
        path.unlink()


def run_screen(
    input_path: str | Path,
    out_dir: str | Path,
    settings: ScreenSettings = ScreenSettings(),
    skip_invalid: bool = False,
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
    on_start: Callable[[list[ProteinRecord]], None] | None = None,
) -> ScreenSummary:
    """Screen a FASTA file into ``out_dir``; invalid records abort it unless ``skip_invalid``."""
    started = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    contents = read_fasta(input_path)
    if contents.rejects and not skip_invalid:
        raise InvalidFastaError(input_path, contents.rejects)
    if loaded is None:
        loaded = load_model(settings.model, settings.weights_dir, settings.device)
    run_id = run_id_for(contents.sha256, loaded.checkpoint_sha256, settings)
    _check_run_absent(out_dir, loaded.name, run_id, overwrite)
    info_dir = out_dir / "runs" / run_id
    info_dir.mkdir(parents=True, exist_ok=True)
    rejects_file = None
    if contents.rejects:
        rejects_file = info_dir / "rejects.tsv"
        write_rejects(contents.rejects, rejects_file)
    scorer = Scorer(loaded, settings.scoring)
    metadata = run_metadata(settings, loaded, input_path, contents.sha256, run_id)
    if on_start is not None:
        on_start(contents.records)
    files: list[Path] = []
    flagged: list[dict] = []
    for shard, records in enumerate(shard_records(contents.records, settings.shard_residues)):
        tables = score_shard(scorer, records, settings.repeats, settings.flag, on_sequence_done)
        files += write_shard(tables, out_dir, loaded.name, run_id, shard, metadata)
        flagged += [row for row in tables.sequences.to_pylist() if row["flagged"]]
    summary = ScreenSummary(
        out_dir=out_dir,
        run_id=run_id,
        n_input=len(contents.records) + sum(1 for r in contents.rejects if r.record_number > 0),
        n_scored=len(contents.records),
        n_rejected=len(contents.rejects),
        n_residues=sum(len(r.sequence) for r in contents.records),
        flagged=sorted(flagged, key=lambda row: -row["inflation_factor"]),
        files=files,
        rejects_file=rejects_file,
        seconds=time.perf_counter() - started,
        model=loaded.describe(),
    )
    (info_dir / "run.json").write_text(json.dumps({**metadata, "n_scored": summary.n_scored, "n_rejected": summary.n_rejected}, indent=2))
    return summary
