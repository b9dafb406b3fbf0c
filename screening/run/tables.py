"""One shard's scores as Arrow tables (residues, sequences, repeats) and their Parquet part files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA
from plmscreen.screening.input import ProteinRecord
from plmscreen.screening.score.diagnostics import ResidueDiagnostics, residue_diagnostics
from plmscreen.screening.score.metrics import FlagRule, could_flag, summarize
from plmscreen.screening.score.repeats import RepeatParams, find_repeats, partner_details
from plmscreen.screening.score.scorer import Scorer, SequenceScores
from plmscreen.screening.store.layout import part_file
from plmscreen.screening.store.parquet import with_metadata, write_parquet_atomic

TABLES = ("residues", "sequences", "repeats")
@dataclass
class ShardTables:
    residues: pa.Table
    sequences: pa.Table
    repeats: pa.Table

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

def write_shard(tables: ShardTables, store: Path, model_name: str, run_id: str, shard: int, metadata: dict) -> list[Path]:
    return [
        write_parquet_atomic(with_metadata(table, metadata), part_file(store, kind, model_name, run_id, shard))
        for kind, table in (("residues", tables.residues), ("sequences", tables.sequences), ("repeats", tables.repeats))
    ]
