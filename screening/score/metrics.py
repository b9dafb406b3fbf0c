"""Per-sequence summaries of per-residue scores, and the flag rule.

Definitions (docs/science.md):
- ``pll`` = Σ logp_masked; ``pppl`` = exp(-mean logp_masked) over real residues;
- ``pppl_ablated`` uses logp_ablated where a residue has partners and logp_masked elsewhere;
- ``inflation_i`` = logp_masked - logp_ablated; ``inflation_factor`` = pppl_ablated / pppl,
  which equals exp(Σ inflation_i / length), a sum over partnered residues only. That is why
  triage mode, which scores masked and ablated only at partnered residues of sequences that
  could be flagged, reaches the same verdict as exact mode (its pll/pppl stay unknown).

Default flag rule (both thresholds are parameters): a sequence is flagged when at least
``min_repeat_fraction`` of its residues have partners and the repeats make its pseudo-perplexity
look at least ``min_inflation_factor`` times better than with the partner copies masked.
The defaults come from ``bench/calibrate_flag.py`` (bench/results/calibration_plmscreen-mini.md):
1.05 is the most sensitive factor with no flag on 500 repeat-free proteins (shuffles, decoys) and
above the 99th percentile of the factor where the detector finds spurious partners; 0.05 binds on
none of the calibration sets and keeps triage cheap. Inflation is model-specific: recalibrate
with the model a screen uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlagRule:
    min_inflation_factor: float = 1.05
    min_repeat_fraction: float = 0.05

    # The rule itself, once: each condition is "sequences column >= rule field". flags() evaluates
    # it in Python while scoring; sql() renders it for the `reflag` named query, so re-flagging a
    # stored run in SQL cannot drift from how the run was flagged.
    CONDITIONS = (("repeat_fraction", "min_repeat_fraction"), ("inflation_factor", "min_inflation_factor"))

    def __post_init__(self):
        if self.min_inflation_factor < 1.0:
            raise ValueError(f"min_inflation_factor must be >= 1, got {self.min_inflation_factor}")
        if not 0.0 <= self.min_repeat_fraction <= 1.0:
            raise ValueError(f"min_repeat_fraction must be in [0, 1], got {self.min_repeat_fraction}")

    def flags(self, inflation_factor: float | None, repeat_fraction: float | None) -> bool:
        values = {"inflation_factor": inflation_factor, "repeat_fraction": repeat_fraction}
        return all(values[column] is not None and values[column] >= getattr(self, field)
                   for column, field in self.CONDITIONS)

    @classmethod
    def sql(cls, row: str, rule: str) -> str:
        """The rule as a SQL predicate over ``row``'s columns and ``rule``'s thresholds (NULL: not flagged)."""
        return " AND ".join(f"coalesce({row}.{column} >= {rule}.{field}, false)" for column, field in cls.CONDITIONS)


@dataclass(frozen=True)
class SequenceSummary:
    length: int
    pll: float | None  # None where masked scoring skipped residues (triage mode)
    pppl: float | None
    pppl_ablated: float | None
    pppl_unmasked: float
    repeat_fraction: float
    inflation_factor: float | None  # None only where partnered residues were left unscored
    mean_inflation: float | None
    max_inflation: float | None
    flagged: bool


def summarize(
    logp_masked: np.ndarray,
    logp_unmasked: np.ndarray,
    logp_ablated: np.ndarray,
    rule: FlagRule = FlagRule(),
    partnered: np.ndarray | None = None,
) -> SequenceSummary:
    """Summarise one sequence. ``partnered`` marks residues with repeat partners (default: where
    ``logp_ablated`` is not NaN); NaN in ``logp_masked`` marks residues triage mode did not score."""
    length = len(logp_masked)
    if partnered is None:
        partnered = ~np.isnan(logp_ablated)
    scored = ~np.isnan(logp_masked)
    repeat_fraction = float(partnered.mean())
    inflation = (logp_masked - logp_ablated)[partnered]
    inflation_known = bool(np.all(scored[partnered]) and not np.isnan(inflation).any())
    inflation_factor = math.exp(float(inflation.sum()) / length) if inflation_known else None
    pll = pppl = pppl_ablated = None
    if scored.all():
        pll = float(np.sum(logp_masked))
        pppl = math.exp(-pll / length)
        ablated_or_masked = np.where(partnered, logp_ablated, logp_masked)
        pppl_ablated = math.exp(-float(np.mean(ablated_or_masked)))
    return SequenceSummary(
        length=length,
        pll=pll,
        pppl=pppl,
        pppl_ablated=pppl_ablated,
        pppl_unmasked=math.exp(-float(np.mean(logp_unmasked))),
        repeat_fraction=repeat_fraction,
        inflation_factor=inflation_factor,
        mean_inflation=float(inflation.mean()) if inflation.size and inflation_known else None,
        max_inflation=float(inflation.max()) if inflation.size and inflation_known else None,
        flagged=inflation_factor is not None and rule.flags(inflation_factor, repeat_fraction),
    )


def could_flag(repeat_fraction: float, rule: FlagRule) -> bool:
    """Whether any scores could make ``rule`` flag a sequence with this repeat fraction: triage
    mode scores masked and ablated likelihoods only for these."""
    return repeat_fraction > 0 and repeat_fraction >= rule.min_repeat_fraction
