"""One shard's scores as Arrow tables (residues, sequences, repeats) and their Parquet part files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from plmscreen.schema.arrow import REPEATS_SCHEMA, RESIDUES_SCHEMA, SEQUENCES_SCHEMA
from plmscreen.screening.input import ProteinRecord
from plmscreen.screening.run.reuse import StoredSequence
from plmscreen.screening.score.diagnostics import copy_following, null_comask
from plmscreen.screening.score.metrics import FlagRule, partner_pvalue, summarize
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
    counts: ShardCounts | None = None

def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


NULL_COLUMNS = ("logp_random_comask", "net_inflation")  # the partner test's residue columns
FOLLOW_COLUMNS = ("copy_following", "planted_residue")  # the copy-following diagnostics'


def _residue_columns(record: ProteinRecord, scores: SequenceScores, details) -> dict:
    """A scored sequence's residue columns; the partner test's and diagnostics' are added later."""
    length = len(record.sequence)
    inflation = scores.logp_masked - scores.logp_ablated  # NaN without partners or where unscored
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
    }


def _mean_or_none(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


@dataclass
class _SequenceResult:
    """One distinct sequence's rows, scored here or copied, before they are written per record."""

    residues: dict  # residue columns (RESIDUES_SCHEMA names)
    row: dict  # its sequences row
    repeats: list[dict]  # its repeat region pairs
    partners: list[tuple[int, ...]]  # 0-based partner map (for diagnostics)
    effect_flagged: bool  # the effect-size conditions of this run's rule
    has_diagnostics: bool  # the residue columns already hold its copy-following diagnostics
    origin: str | None  # the run that scored it; None: this shard


@dataclass
class ShardCounts:
    """How a shard's records got their rows (sequences.reused_from_run says it per row)."""

    scored: int = 0  # records scored here (each distinct sequence once)
    reused: int = 0  # records copied from an earlier run
    duplicates: int = 0  # records copied from another record of this run with the same residues
    rediagnosed: int = 0  # copied sequences this run's rule flags whose diagnostics were computed here
    retested: int = 0  # copied sequences whose partner test was computed here (not tested where they were scored)


def score_shard(
    scorer: Scorer | Callable[[], Scorer],
    records: Sequence[ProteinRecord],
    repeat_params: RepeatParams,
    flag_rule: FlagRule,
    on_sequence_done: Callable[[ProteinRecord], None] | None = None,
    *,
    mode: str = "exact",
    diagnostics: bool = False,
    reuse: bool = False,
    stored: Mapping[str, StoredSequence] | None = None,
    run_id: str | None = None,
) -> ShardTables:
    """Detect repeats, score and summarise ``records``; no files written.

    ``mode="triage"`` masks only the partnered residues of sequences whose repeat fraction lets
    the flag rule fire (the verdict depends on nothing else); ``diagnostics`` adds the
    copy-following and null co-mask columns for flagged sequences. With ``reuse``, records with
    the same residues are scored once, and ``stored`` rows (by sequence sha256, from
    ``reuse.load_stored``) are copied instead of scored; ``run_id`` names this run in the
    provenance column. ``scorer`` may be a function that returns one: it is called only when
    something needs the model."""
    stored = stored or {}
    # The record whose result each record takes: the first with the same residues (with reuse).
    first_of: dict = {}
    owner = [first_of.setdefault(r.sha256 if reuse else k, k) for k, r in enumerate(records)]
    distinct = list(first_of.values())
    copied = {k: stored[records[k].sha256] for k in distinct if reuse and records[k].sha256 in stored}
    fresh = [k for k in distinct if k not in copied]
    followers: dict[int, list[int]] = {}
    for k, o in enumerate(owner):
        followers.setdefault(o, []).append(k)
    model: list[Scorer] = []

    def get_scorer() -> Scorer:
        if not model:
            model.append(scorer if isinstance(scorer, Scorer) else scorer())
        return model[0]

    results: dict[int, _SequenceResult] = {}
    for k, source in copied.items():
        row = source.row
        residues = source.residues.to_pydict()
        results[k] = _SequenceResult(
            residues, dict(row), source.repeats.to_pylist(), [tuple(p - 1 for p in ps) for ps in residues["partner_pos"]],
            flag_rule.effect_flags(row["inflation_factor"], row["repeat_fraction"]),
            source.has_diagnostics, source.origin)
        if on_sequence_done is not None:
            for f in followers[k]:
                on_sequence_done(records[f])

    fresh_records = [records[k] for k in fresh]
    regions = [find_repeats(r.sequence, repeat_params) for r in fresh_records]
    details = [partner_details(len(r.sequence), reg) for r, reg in zip(fresh_records, regions)]
    partners0 = [[tuple(p - 1 for p, _, _ in d) for d in det] for det in details]
    partnered = [np.array([bool(p) for p in ps], dtype=bool) for ps in partners0]
    positions = None
    if mode == "triage":
        positions = [np.flatnonzero(m).tolist() if flag_rule.needs_test(float(m.mean())) else [] for m in partnered]
    callback = None if on_sequence_done is None else \
        (lambda s, _scores: [on_sequence_done(records[f]) for f in followers[fresh[s]]])
    scores = get_scorer().score([r.sequence for r in fresh_records], partners0, callback, positions) if fresh else []
    for s, k in enumerate(fresh):
        record, seq_scores, summary = fresh_records[s], scores[s], \
            summarize(scores[s].logp_masked, scores[s].logp_unmasked, scores[s].logp_ablated, flag_rule, partnered[s])
        row = {"seq_id": record.seq_id, **dataclasses.asdict(summary), "n_repeat_regions": len(regions[s]),
               "windowed": seq_scores.windowed, "sequence_sha256": record.sha256, "mode": mode}
        results[k] = _SequenceResult(_residue_columns(record, seq_scores, details[s]), row,
                                     repeat_table([record], [regions[s]]).to_pylist(), partners0[s],
                                     summary.effect_flagged, False, None)

    # The partner test for every sequence the rule tests (the run's BH family), unless its rows,
    # copied from an earlier run, already hold the null co-masks; then copy-following diagnostics
    # for the effect-flagged sequences that do not carry them yet.
    counts = ShardCounts()
    tested = {k for k in distinct if results[k].row["inflation_factor"] is not None
              and flag_rule.needs_test(results[k].row["repeat_fraction"])}
    need_null = [k for k in sorted(tested) if not _has_null_comask(results[k])]
    nulls = dict(zip(need_null, null_comask(get_scorer(), [records[k].sequence for k in need_null],
                                            [results[k].partners for k in need_null], flag_rule.null_draws))) \
        if need_null else {}
    need_follow = [k for k in distinct if diagnostics and results[k].effect_flagged and not results[k].has_diagnostics]
    follows = dict(zip(need_follow, copy_following(get_scorer(), [records[k].sequence for k in need_follow],
                                                   [results[k].partners for k in need_follow]))) if need_follow else {}
    for k in distinct:
        result = results[k]
        ablated = _floats(result.residues["logp_ablated"])
        if k in nulls:
            result.residues["logp_random_comask"] = _nullable(nulls[k][0])
            result.residues["net_inflation"] = _nullable(nulls[k][0] - ablated)
            counts.retested += k in copied
        elif k not in tested:
            result.residues["logp_random_comask"] = result.residues["net_inflation"] = [None] * len(ablated)
        if k in tested:
            rand = _floats(result.residues["logp_random_comask"])
            partnered_res = ~np.isnan(ablated)
            result.row["partner_pvalue"] = partner_pvalue(rand[partnered_res], ablated[partnered_res],
                                                          flag_rule.min_net_inflation)
            result.row["mean_net_inflation"] = _mean_or_none(rand - ablated)
        else:
            result.row["partner_pvalue"] = result.row["mean_net_inflation"] = None
        if k in follows:
            result.residues["copy_following"] = _nullable(follows[k][0])
            result.residues["planted_residue"] = list(follows[k][1])
            result.row["mean_copy_following"] = _mean_or_none(follows[k][0])
            counts.rediagnosed += k in copied
        elif not (diagnostics and result.effect_flagged and result.has_diagnostics):
            result.residues["copy_following"] = result.residues["planted_residue"] = [None] * len(ablated)
            result.row["mean_copy_following"] = None
        result.row["effect_flagged"] = result.effect_flagged

    residue_cols = {name: [] for name in RESIDUES_SCHEMA.names}
    sequence_rows, repeat_rows = [], []
    for k, record in enumerate(records):
        result = results[owner[k]]
        origin = result.origin if result.origin is not None else (None if owner[k] == k else run_id)
        counts.scored += origin is None
        counts.reused += origin is not None and origin != run_id
        counts.duplicates += origin is not None and origin == run_id
        for name in RESIDUES_SCHEMA.names:
            residue_cols[name].extend(result.residues[name] if name != "seq_id" else [record.seq_id] * len(record.sequence))
        sequence_rows.append({**result.row, "seq_id": record.seq_id, "reused_from_run": origin})
        repeat_rows += [{**pair, "seq_id": record.seq_id} for pair in result.repeats]
    return ShardTables(
        residues=pa.table(residue_cols, schema=RESIDUES_SCHEMA),
        sequences=pa.Table.from_pylist(sequence_rows, schema=SEQUENCES_SCHEMA),
        repeats=pa.Table.from_pylist(repeat_rows, schema=REPEATS_SCHEMA),
        counts=counts,
    )


def _has_null_comask(result: _SequenceResult) -> bool:
    """Whether a (copied) sequence's residues hold ℓ^rand at every partnered residue."""
    rand = result.residues.get("logp_random_comask")
    if rand is None:
        return False
    return all(r is not None for r, a in zip(rand, result.residues["logp_ablated"]) if a is not None)


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
