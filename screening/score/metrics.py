"""Per-sequence summaries of per-residue scores, and the flag rule.

Definitions (docs/science.md):
- ``pll`` = Σ logp_masked; ``pppl`` = exp(-mean logp_masked) over real residues;
- ``pppl_ablated`` uses logp_ablated where a residue has partners and logp_masked elsewhere;
- ``inflation_i`` = logp_masked - logp_ablated; ``inflation_factor`` = pppl_ablated / pppl,
  which equals exp(Σ inflation_i / length), a sum over partnered residues only. That is why
  triage mode, which scores masked and ablated only at partnered residues of sequences that
  could be flagged, reaches the same verdict as exact mode (its pll/pppl stay unknown).

Flag rule (every threshold is a parameter): a sequence is flagged when
1. at least ``min_repeat_fraction`` of its residues have partners,
2. the repeats make its pseudo-perplexity look at least ``min_inflation_factor`` times better
   than with the partner copies masked (the effect size), and
3. the partners matter more than random positions: co-masking each partnered residue's partners
   lowers log P(x_i) by more than ``min_net_inflation`` nats beyond co-masking as many random
   non-partner positions holding the same letters (``null_draws`` seeded draws, averaged), by a
   one-sided Wilcoxon signed-rank test over the partnered residues (``partner_pvalue``), with a
   Benjamini-Hochberg q-value across the run at most ``max_qvalue``.
The test is run for every sequence that conditions 1 could let through (``needs_test``), in exact
and triage mode alike, so the BH family, and therefore the flags, do not depend on the mode or on
the effect-size threshold. Condition 3 is what keeps the flag's meaning across models: an extra
mask moves ESM-2's scores by itself (token dropout), and a model that cannot copy gains nothing
from the partner that it would not gain from any position.
The effect-size defaults come from ``bench/calibrate_flag.py`` (bench/results/calibration_*.md);
``plmscreen calibrate`` re-derives them for another model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlagRule:
    min_inflation_factor: float = 1.05
    min_repeat_fraction: float = 0.05
    max_qvalue: float = 0.05
    # The partner test's margin (nats per partnered residue): the partners must cost more than
    # this beyond letter-matched random co-masks. Weights that cannot copy still attend a little to
    # positions whose context resembles i's, and over a few hundred residues even that is
    # "significant": a random-weight 2 x 64 ESM-2 gave doubled proteins a mean net inflation of
    # 0.04 nats at p = 1e-8, a random 8M-architecture one up to 0.14 on a natural repeat (median
    # below 0.05); the bundled control gives doubled proteins 0.66-1.3 and a natural repeat 0.16
    # (tests/test_partner_test.py, bench/results/calibration_*).
    min_net_inflation: float = 0.05
    # Random co-mask draws per partnered residue for the partner test (seeded by the sequence).
    null_draws: int = 4

    # The rule itself, once: each condition is (sequences column, comparison, rule field). flags()
    # evaluates it in Python; sql() renders it for the `reflag` named query, so re-flagging a stored
    # run in SQL cannot drift from how the run was flagged. EFFECT is what a shard can decide on its
    # own; the q-value needs the whole run (Benjamini-Hochberg), so it is applied when the run ends.
    EFFECT = (("repeat_fraction", ">=", "min_repeat_fraction"), ("inflation_factor", ">=", "min_inflation_factor"))
    CONDITIONS = EFFECT + (("partner_qvalue", "<=", "max_qvalue"),)

    def __post_init__(self):
        if self.min_inflation_factor < 1.0:
            raise ValueError(f"min_inflation_factor must be >= 1, got {self.min_inflation_factor}")
        if not 0.0 <= self.min_repeat_fraction <= 1.0:
            raise ValueError(f"min_repeat_fraction must be in [0, 1], got {self.min_repeat_fraction}")
        if not 0.0 < self.max_qvalue <= 1.0:
            raise ValueError(f"max_qvalue must be in (0, 1], got {self.max_qvalue}")
        if self.null_draws < 1:
            raise ValueError(f"null_draws must be >= 1, got {self.null_draws}")
        if self.min_net_inflation < 0:
            raise ValueError(f"min_net_inflation must be >= 0, got {self.min_net_inflation}")

    def _holds(self, conditions, values: dict) -> bool:
        return all(values[column] is not None and _COMPARE[op](values[column], getattr(self, field))
                   for column, op, field in conditions)

    def effect_flags(self, inflation_factor: float | None, repeat_fraction: float | None) -> bool:
        """The effect-size conditions (what one shard can decide)."""
        return self._holds(self.EFFECT, {"inflation_factor": inflation_factor, "repeat_fraction": repeat_fraction})

    def flags(self, inflation_factor: float | None, repeat_fraction: float | None, partner_qvalue: float | None) -> bool:
        return self._holds(self.CONDITIONS, {"inflation_factor": inflation_factor, "repeat_fraction": repeat_fraction,
                                             "partner_qvalue": partner_qvalue})

    def flags_array(self, columns: "Mapping[str, np.ndarray]") -> np.ndarray:
        """``flags`` over arrays of the CONDITIONS' columns (NaN: the condition fails, as NULL does in SQL)."""
        out = None
        for column, op, field in self.CONDITIONS:
            values = np.asarray(columns[column], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                holds = _COMPARE[op](values, getattr(self, field)) & ~np.isnan(values)
            out = holds if out is None else out & holds
        return out

    def needs_test(self, repeat_fraction: float) -> bool:
        """Whether a sequence with this repeat fraction gets the partner test (and, in triage mode,
        masked and ablated scores at its partnered residues): the BH family of the run."""
        return could_flag(repeat_fraction, self)

    @classmethod
    def sql(cls, row: str, rule: str) -> str:
        """The rule as a SQL predicate over ``row``'s columns and ``rule``'s thresholds (NULL: not flagged)."""
        return " AND ".join(f"coalesce({row}.{column} {op} {rule}.{field}, false)" for column, op, field in cls.CONDITIONS)


_COMPARE = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}


def partner_pvalue(logp_random_comask: np.ndarray, logp_ablated: np.ndarray, margin: float = 0.0) -> float | None:
    """P-value for "co-masking the partners lowers log P(x_i) by more than ``margin`` nats beyond
    co-masking as many random positions": one-sided Wilcoxon signed-rank test of
    ℓ_i^rand − ℓ_i^abl − margin > 0 over the partnered residues (the arrays hold only those; NaN
    entries are ignored). None without any residue.

    A signed-rank test, not a t-test: per-residue differences are heavy-tailed (a few residues of a
    copy carry most of the look-up). Residues with no difference carry no evidence either way and
    are dropped (scipy's zero_method="wilcox"); a sequence with no nonzero difference gets p = 1."""
    from scipy.stats import wilcoxon

    diff = np.asarray(logp_random_comask, dtype=np.float64) - np.asarray(logp_ablated, dtype=np.float64) - margin
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return None
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(diff, alternative="greater", zero_method="wilcox").pvalue)


def bh_qvalues(pvalues: "Sequence[float | None]") -> list[float | None]:
    """Benjamini-Hochberg q-values over the non-null p-values (None stays None): the run's family."""
    q = bh_qvalue_array(np.array([np.nan if p is None else p for p in pvalues], dtype=np.float64))
    return [None if np.isnan(value) else float(value) for value in q]


def bh_qvalue_array(pvalues: np.ndarray) -> np.ndarray:
    """``bh_qvalues`` over an array: NaN marks a sequence not tested (not in the family) and stays NaN."""
    out = np.full(len(pvalues), np.nan)
    known = ~np.isnan(pvalues)
    if known.any():  # scipy.stats costs ~0.7 s to import: not for a run with nothing tested
        from scipy.stats import false_discovery_control

        out[known] = false_discovery_control(pvalues[known], method="bh")
    return out


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
    effect_flagged: bool  # the rule's effect-size conditions hold; the flag also needs the run's q-value


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
        effect_flagged=inflation_factor is not None and rule.effect_flags(inflation_factor, repeat_fraction),
    )


def could_flag(repeat_fraction: float, rule: FlagRule) -> bool:
    """Whether any scores could make ``rule`` flag a sequence with this repeat fraction: triage
    mode scores masked and ablated likelihoods only for these."""
    return repeat_fraction > 0 and repeat_fraction >= rule.min_repeat_fraction
