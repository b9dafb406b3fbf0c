"""Calibrate the flag rule for one model on the user's own proteins (``plmscreen calibrate``).

From each usable protein x of the FASTA (standard residues, at least ``min_length``; a central
crop of at most ``max_length``) it builds, seeded:

- repeat-free nulls: residue permutations of x (``shuffled``) and composition-matched decoys
  that keep x's short words (``block_shuffled``: its 5-residue pieces in a random order);
- repeat carriers: the doubled protein x‖x (x cut to ``doubled_length``) and x with a copy of one
  of its ``unit_length``-residue segments, mutated to each identity (100 … 30%), inserted at
  least ``gap`` residues after the segment (``insert_copy``);
- the crop x itself (``natural``): reported, never used to choose (it may carry real repeats).

The constructs are screened through the library's normal path (``run_screen``, in a store under
the output directory) in triage mode with a rule that can always fire (min_repeat_fraction 0), so
every partnered residue is scored and each sequence's inflation factor is exact whatever
threshold is evaluated afterwards; any model family the screen path loads, and any column the
flag rule reads, come with it. Flags under candidate rules are evaluated with ``FlagRule.sql``
over the stored ``sequences`` rows, the rule's one SQL rendering.

Source proteins (with all their constructs) are split, seeded, into a calibration half and a
held-out half. On the calibration half, ``min_inflation_factor`` is the smallest value of the grid
(the most sensitive threshold) whose flag rate on the nulls has a one-sided Clopper-Pearson upper
bound (``confidence``, default 95%) at most ``max_null_rate`` (default 0.01); the other fields of
the rule keep the base rule's values. The held-out half is then scored under that rule: the
false-flag rate on its nulls and the sensitivity on its carriers (overall, doubled, and inserted
copies by identity), each with a two-sided exact Clopper-Pearson interval. Nulls of one protein
share its composition, so they are not independent draws: treat the intervals as optimistic
when few proteins make many nulls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plmscreen import screening
from plmscreen.screening.errors import CalibrationError
from plmscreen.screening.experiments.constructs import block_shuffled, central_segment, insert_copy, shuffled
from plmscreen.screening.input import standard_proteins
from plmscreen.screening.run import calibrations
from plmscreen.screening.score.metrics import FlagRule

SPLITS = ("calibration", "held_out")
CONSTRUCTS_FASTA = "constructs.fasta"
STORE_DIR = "store"


@dataclass(frozen=True)
class CalibrationSettings:
    """Everything a calibration depends on besides the model, the proteins and the base rule; recorded with it."""

    seed: int = 0
    max_null_rate: float = 0.01
    confidence: float = 0.95
    calibration_fraction: float = 0.5  # of the source proteins
    n_proteins: int | None = None  # the first N usable proteins (None: all)
    min_length: int = 80  # room for a unit, the gap and flanks
    max_length: int = 300  # central crop
    residue_shuffles: int = 2  # nulls per protein
    block_shuffles: int = 2
    block_length: int = 5
    doubled_length: int = 100
    unit_length: int = 40
    gap: int = 30
    identities: tuple[float, ...] = (1.0, 0.9, 0.7, 0.5, 0.4, 0.3)
    natural: bool = True

    def __post_init__(self):
        problems = []
        if not 0 < self.max_null_rate < 1 or not 0.5 < self.confidence < 1:
            problems.append("max_null_rate must be in (0, 1) and confidence in (0.5, 1)")
        if not 0 < self.calibration_fraction < 1:
            problems.append(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
        if self.residue_shuffles + self.block_shuffles < 1 or min(self.residue_shuffles, self.block_shuffles) < 0:
            problems.append("at least one null per protein is needed (residue_shuffles + block_shuffles)")
        if self.min_length < self.unit_length + self.gap:
            problems.append(f"min_length {self.min_length} leaves no room for a {self.unit_length}-residue unit "
                            f"and a {self.gap}-residue gap")
        if self.max_length < self.min_length or self.doubled_length < 2 or self.block_length < 2:
            problems.append("max_length >= min_length, doubled_length >= 2 and block_length >= 2 are required")
        if not self.identities or not all(0 < v <= 1 for v in self.identities):
            problems.append(f"identities must be in (0, 1], got {self.identities}")
        if self.n_proteins is not None and self.n_proteins < 2:
            problems.append("n_proteins must be >= 2 (one per half at least)")
        if problems:
            raise CalibrationError("; ".join(problems))

    def min_nulls(self) -> int:
        """Null sequences the calibration half needs for zero flags to meet the target at all."""
        return math.ceil(math.log(1 - self.confidence) / math.log(1 - self.max_null_rate))


@dataclass(frozen=True)
class Construct:
    seq_id: str
    sequence: str
    source: str  # the protein it was made from: the unit of the split
    role: str  # null, carrier or natural
    kind: str  # residue_shuffle, block_shuffle, doubled, inserted, natural
    identity: float | None = None  # of an inserted copy (1.0 for doubled)


def _rng(settings: CalibrationSettings, *key: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((settings.seed, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def usable_proteins(fasta: str | Path, settings: CalibrationSettings) -> tuple[list[tuple[str, str]], dict]:
    """(proteins of standard residues and at least min_length, facts about the FASTA)."""
    usable, contents = standard_proteins(fasta, settings.min_length, CalibrationError)
    if settings.n_proteins is not None:
        usable = usable[: settings.n_proteins]
    if len(usable) < 2:
        raise CalibrationError(f"{fasta}: {len(usable)} protein(s) of at least {settings.min_length} standard residues; "
                               f"a calibration needs at least 2 (one per half), and hundreds for a 1% target")
    facts = {"path": str(Path(fasta).resolve()), "sha256": contents.sha256, "n_records": len(contents.records),
             "n_used": len(usable)}
    return usable, facts


def build_constructs(proteins: list[tuple[str, str]], settings: CalibrationSettings) -> list[Construct]:
    """Every construct of every protein, each from its own seeded stream (reproducible, order-free)."""
    out: list[Construct] = []
    for source, sequence in proteins:
        x = central_segment(sequence, min(len(sequence), settings.max_length))
        if settings.natural:
            out.append(Construct(f"natural|{source}", x, source, "natural", "natural"))
        for r in range(settings.residue_shuffles):
            out.append(Construct(f"shuffle{r}|{source}", shuffled(x, _rng(settings, "shuffle", source, r)),
                                 source, "null", "residue_shuffle"))
        for b in range(settings.block_shuffles):
            out.append(Construct(f"blocks{b}|{source}",
                                 block_shuffled(x, settings.block_length, _rng(settings, "blocks", source, b)),
                                 source, "null", "block_shuffle"))
        unit = x[: settings.doubled_length]
        out.append(Construct(f"doubled|{source}", unit + unit, source, "carrier", "doubled", 1.0))
        for identity in settings.identities:
            construct, _, _ = insert_copy(x, settings.unit_length, identity, settings.gap,
                                          _rng(settings, "insert", source, identity))
            out.append(Construct(f"insert{round(identity * 100)}|{source}", construct, source, "carrier",
                                 "inserted", identity))
    return out


def split_sources(sources: list[str], settings: CalibrationSettings) -> dict[str, str]:
    """source -> "calibration" or "held_out": a seeded permutation, the first fraction calibrates."""
    order = _rng(settings, "split").permutation(len(sources))
    n_cal = min(len(sources) - 1, max(1, round(settings.calibration_fraction * len(sources))))
    return {sources[i]: SPLITS[0] if rank < n_cal else SPLITS[1] for rank, i in enumerate(order)}


def threshold_grid() -> list[float]:
    """Candidate min_inflation_factor values, ascending: fine near 1, where models differ most."""
    fine = np.round(np.arange(1.0, 2.0, 0.005), 3)
    coarse = np.round(np.arange(2.0, 5.0, 0.05), 2)
    tail = np.round(np.arange(5.0, 20.01, 0.5), 1)
    return sorted({float(v) for v in np.concatenate([fine, coarse, tail])})


# -- statistics ---------------------------------------------------------------------------


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound of a rate seen k times in n."""
    from scipy.stats import binomtest

    return float(binomtest(k, n, alternative="less").proportion_ci(confidence_level=confidence, method="exact").high)


def rate(k: int, n: int, confidence: float = 0.95) -> dict:
    """k of n with the two-sided exact (Clopper-Pearson) interval; rate and bounds None when n is 0."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None}
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return {"k": int(k), "n": int(n), "rate": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high)}


# -- flags under candidate rules ----------------------------------------------------------


def flag_matrix(rows: list[dict], rules: list[FlagRule]) -> np.ndarray:
    """flags[r, s]: whether rules[r] flags rows[s], by ``FlagRule.sql`` over the stored columns."""
    import duckdb
    import pyarrow as pa

    columns = sorted({column for column, *_ in FlagRule.CONDITIONS})
    seqs = pa.table({"row_index": pa.array(range(len(rows)), pa.int64()),
                     **{c: pa.array([row.get(c) for row in rows], pa.float64()) for c in columns}})
    fields = [f.name for f in dataclasses.fields(FlagRule)]
    rule_rows = [dataclasses.asdict(rule) for rule in rules]
    candidates = pa.table({"rule_index": pa.array(range(len(rules)), pa.int64()),
                           **{f: _arrow_column([r[f] for r in rule_rows]) for f in fields}})
    con = duckdb.connect()
    try:
        con.register("seqs", seqs)
        con.register("candidates", candidates)
        hits = con.execute(f"SELECT c.rule_index, s.row_index FROM seqs AS s CROSS JOIN candidates AS c "
                           f"WHERE {FlagRule.sql('s', 'c')}").fetchall()
    finally:
        con.close()
    flags = np.zeros((len(rules), len(rows)), dtype=bool)
    for r, s in hits:
        flags[r, s] = True
    return flags


def _arrow_column(values: list):
    import pyarrow as pa

    array = pa.array(values)
    return array.cast(pa.float64()) if pa.types.is_null(array.type) or pa.types.is_integer(array.type) else array


# -- the calibration ----------------------------------------------------------------------


def choose_threshold(rows: list[dict], flags: np.ndarray, grid: list[float], settings: CalibrationSettings) -> dict:
    """The smallest grid threshold whose calibration-half null flag rate has a one-sided upper
    bound <= max_null_rate; a CalibrationError when none does."""
    nulls = np.array([r["split"] == "calibration" and r["role"] == "null" for r in rows])
    n = int(nulls.sum())
    checked = []
    for index, threshold in enumerate(grid):
        k = int(flags[index, nulls].sum())
        bound = upper_bound(k, n, settings.confidence)
        checked.append({"min_inflation_factor": threshold, "null_flags": k, "upper_bound": bound})
        if bound <= settings.max_null_rate:
            return {"index": index, "min_inflation_factor": threshold, "n_null": n, "null_flags": k,
                    "null_upper_bound": bound, "checked": checked}
    need = settings.min_nulls()
    hint = (f"even with no flag, {n} null sequences bound the rate at {upper_bound(0, n, settings.confidence):.4f}: "
            f"the calibration half needs at least {need} (more proteins, more --nulls-per-protein, or a larger "
            f"--max-null-rate)" if n < need else
            f"the nulls are flagged up to inflation factor {grid[-1]}: the model or the detector misbehaves on them")
    raise CalibrationError(f"no min_inflation_factor meets the target (one-sided {settings.confidence:.0%} upper bound "
                           f"<= {settings.max_null_rate}) on the calibration half: {hint}")


def rates_at(rows: list[dict], flagged: np.ndarray, split: str, settings: CalibrationSettings) -> dict:
    """Flag rates of one half at one rule: nulls (overall, by kind), carriers (overall, by construct), natural."""
    def pick(predicate) -> dict:
        chosen = [i for i, r in enumerate(rows) if r["split"] == split and predicate(r)]
        return rate(int(flagged[chosen].sum()) if chosen else 0, len(chosen), settings.confidence)

    by_construct = {"doubled": pick(lambda r: r["kind"] == "doubled")}
    for identity in settings.identities:
        by_construct[f"inserted_{round(identity * 100)}"] = pick(
            lambda r, i=identity: r["kind"] == "inserted" and r["identity"] == i)
    return {
        "null": pick(lambda r: r["role"] == "null"),
        "null_by_kind": {kind: pick(lambda r, k=kind: r["kind"] == k) for kind in ("residue_shuffle", "block_shuffle")},
        "carriers": pick(lambda r: r["role"] == "carrier"),
        "carriers_by_construct": by_construct,
        "natural": pick(lambda r: r["role"] == "natural"),
    }


def calibration_id(checkpoint_sha256: str, fasta_sha256: str, settings: CalibrationSettings, base_rule: FlagRule) -> str:
    """The same model, proteins, settings and plmscreen version always name the same calibration."""
    key = json.dumps({"checkpoint": checkpoint_sha256, "fasta": fasta_sha256, "settings": dataclasses.asdict(settings),
                      "base_rule": dataclasses.asdict(base_rule), "plmscreen": screening.__version__}, sort_keys=True)
    return "cal-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def run_calibration(
    model: str,
    fasta: str | Path,
    out_dir: str | Path,
    settings: CalibrationSettings = CalibrationSettings(),
    base_rule: FlagRule = FlagRule(),
    *,
    weights_dir: str | None = None,
    device: str = "auto",
    scoring=None,
    catalog_url: str | None = None,
    install: bool = True,
    loaded=None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Build, screen and evaluate the constructs; write ``out_dir/calibration.json``, register it in
    the store's catalog (``out_dir/store`` or ``catalog_url``) and, if ``install``, in the user's
    calibration directory. Returns the record."""
    import pyarrow.parquet as pq

    from plmscreen.screening.run.catalog import Catalog
    from plmscreen.screening.run.lifecycle import run_screen
    from plmscreen.screening.run.settings import ScreenSettings
    from plmscreen.screening.score.scorer import ScoringOptions
    from plmscreen.screening.store.layout import calibration_path, run_parts, verdicts_path

    progress = progress or (lambda message: None)
    out_dir = Path(out_dir)
    proteins, fasta_facts = usable_proteins(fasta, settings)  # input errors before any model loads
    constructs = build_constructs(proteins, settings)
    split = split_sources([source for source, _ in proteins], settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    constructs_fasta = out_dir / CONSTRUCTS_FASTA
    constructs_fasta.write_text("".join(f">{c.seq_id}\n{c.sequence}\n" for c in constructs))
    # Triage with a rule that can always fire: every partnered residue is scored, so the inflation
    # factor is exact for any threshold evaluated afterwards.
    always = dataclasses.replace(base_rule, min_inflation_factor=1.0, min_repeat_fraction=0.0)
    screen_settings = ScreenSettings(model=model, weights_dir=weights_dir, device=device,
                                     scoring=scoring or ScoringOptions(), flag=always, mode="triage",
                                     diagnostics=False, calibration="none")
    store = out_dir / STORE_DIR
    progress(f"{len(proteins)} proteins, {len(constructs)} constructs: screening them into {store}")
    started = dt.datetime.now(dt.timezone.utc)
    summary = run_screen(constructs_fasta, store, screen_settings, loaded=loaded, catalog_url=catalog_url)
    files = run_parts(store, "sequences", summary.model["model_name"], summary.run_id)
    stored = {row["seq_id"]: row for f in files for row in pq.read_table(f).to_pylist()}
    # The partner test's q-values, taken across this run of constructs (its verdicts file).
    qvalues = {v["seq_id"]: v["partner_qvalue"] for v in pq.read_table(verdicts_path(store, summary.run_id)).to_pylist()}
    for seq_id, row in stored.items():
        row["partner_qvalue"] = qvalues.get(seq_id)
    missing = [c.seq_id for c in constructs if c.seq_id not in stored]
    if missing:
        raise CalibrationError(f"the screen of the constructs lacks {len(missing)} of them (first: {missing[0]})")
    condition_columns = sorted({column for column, *_ in FlagRule.CONDITIONS})
    rows = [{"seq_id": c.seq_id, "source": c.source, "split": split[c.source], "role": c.role, "kind": c.kind,
             "identity": c.identity, "length": len(c.sequence),
             **{column: stored[c.seq_id][column] for column in condition_columns}}
            for c in constructs]

    grid = threshold_grid()
    flags = flag_matrix(rows, [dataclasses.replace(base_rule, min_inflation_factor=t) for t in grid])
    chosen = choose_threshold(rows, flags, grid, settings)
    rule = dataclasses.replace(base_rule, min_inflation_factor=chosen["min_inflation_factor"])
    flagged = flags[chosen["index"]]
    for row, flag in zip(rows, flagged):
        row["flagged_at_rule"] = bool(flag)
    checkpoint_sha256 = summary.model["checkpoint_sha256"]
    partnered_nulls = sum(1 for r in rows if r["split"] == "calibration" and r["role"] == "null"
                          and (r["repeat_fraction"] or 0) >= max(base_rule.min_repeat_fraction, 1e-12))
    warnings = []
    if not partnered_nulls:
        warnings.append(f"no null of the calibration half has enough repeat partners to be flagged, so the nulls "
                        f"did not constrain min_inflation_factor ({rule.min_inflation_factor:g} is the grid's lowest "
                        f"value): the false-flag rate is the repeat detector's, and any inflation of a detected repeat "
                        f"flags it. Look at the held-out rates and at your proteins flagged before relying on it.")
    record = {
        "format": calibrations.RECORD_FORMAT,
        "id": calibration_id(checkpoint_sha256, fasta_facts["sha256"], settings, base_rule),
        "created_utc": started.isoformat(),
        "plmscreen_version": screening.__version__,
        "checkpoint_sha256": checkpoint_sha256,
        "model": summary.model,
        "fasta": fasta_facts,
        "seed": settings.seed,
        "settings": dataclasses.asdict(settings),
        "base_rule": dataclasses.asdict(base_rule),
        "flag_rule": dataclasses.asdict(rule),
        "criterion": {
            "rule": (f"smallest min_inflation_factor on the grid whose flag rate on the calibration half's null "
                     f"sequences has a one-sided {settings.confidence:.0%} Clopper-Pearson upper bound "
                     f"<= {settings.max_null_rate}"),
            "max_null_rate": settings.max_null_rate,
            "confidence": settings.confidence,
            "n_null": chosen["n_null"],
            "null_flags": chosen["null_flags"],
            "null_upper_bound": chosen["null_upper_bound"],
            "n_null_with_partners": partnered_nulls,
            "grid": {"first": grid[0], "last": grid[-1], "n": len(grid)},
            "checked": chosen["checked"],
        },
        "split": {name: sorted(s for s, side in split.items() if side == name) for name in SPLITS},
        "held_out": rates_at(rows, flagged, "held_out", settings),
        "calibration_half": rates_at(rows, flagged, "calibration", settings),
        "store": str(store.resolve()),
        "catalog_url": catalog_url,
        "run_id": summary.run_id,
        "warnings": warnings,
        "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
        "sequences": rows,
    }
    record = json.loads(json.dumps(record, default=float))  # what is returned is what is read back
    record_path = calibrations.save_record(record, out_dir / calibrations.RECORD_FILENAME)
    calibrations.save_record(record, calibration_path(store, record["id"]))
    with Catalog.open(catalog_url, store) as catalog:
        calibrations.register_record(record, catalog, record_path)
    if install:
        record["installed"] = str(calibrations.install_record(record))
    progress(f"calibration {record['id']}: min_inflation_factor {rule.min_inflation_factor:g}; "
             f"{calibrations.held_out_line(record)}")
    return record
