"""Statistics over proteins: a claim is shown when its mean clears the minimum effect, the bootstrap CI
excludes zero and a one-sided sign test gives p < alpha."""


from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from plmscreen.screening.experiments.settings import MIN_PROTEINS, ValidationSettings


@dataclass
class Check:
    """One directional claim tested on per-protein values."""

    claim: str  # the expectation, as a testable statement
    statistic: str  # what each per-protein value is
    values: list[float] = field(repr=False)
    mean: float
    ci_low: float
    ci_high: float
    n_expected_direction: int
    sign_p: float | None  # one-sided sign test; None for a non-inferiority check
    shown: bool
    rule: str
    decisive: bool = True  # counts towards the experiment's verdict

    @property
    def n(self) -> int:
        return len(self.values)

    def summary(self) -> str:
        sign = f", {self.n_expected_direction}/{self.n} proteins, sign test p = {self.sign_p:.2g}" if self.sign_p is not None else ""
        return f"{self.mean:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]{sign}"


def bootstrap_ci(values: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling proteins."""
    rng = np.random.default_rng([seed, 4242])
    means = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def sign_test_greater(values: np.ndarray) -> tuple[int, float]:
    """(number > 0, exact one-sided binomial p of at least that many under p = 1/2); ties dropped."""
    nonzero = values[values != 0]
    n, k = len(nonzero), int((nonzero > 0).sum())
    if n == 0:
        return 0, 1.0
    return k, sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def check_greater(claim: str, statistic: str, values: Sequence[float], min_effect: float,
                 settings: ValidationSettings, decisive: bool = True) -> Check:
    """Shown: mean >= min_effect, bootstrap CI above 0 and one-sided sign test p < alpha."""
    array = np.asarray(values, dtype=float)
    if len(array) < MIN_PROTEINS:
        return Check(claim, statistic, array.tolist(), float(np.mean(array)) if len(array) else math.nan,
                     math.nan, math.nan, int((array > 0).sum()), None, False,
                     f"not tested: fewer than {MIN_PROTEINS} proteins", decisive)
    low, high = bootstrap_ci(array, settings.n_bootstrap, settings.seed)
    k, p = sign_test_greater(array)
    mean = float(array.mean())
    shown = mean >= min_effect and low > 0 and p < settings.alpha
    rule = f"mean >= {min_effect:g}, 95% CI above 0, sign test p < {settings.alpha:g}"
    return Check(claim, statistic, array.tolist(), mean, low, high, k, p, shown, rule, decisive)


def check_not_below(claim: str, statistic: str, values: Sequence[float], margin: float,
                   settings: ValidationSettings, decisive: bool = True) -> Check:
    """Non-inferiority: shown when the bootstrap CI of the mean lies above -margin."""
    array = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(array, settings.n_bootstrap, settings.seed)
    shown = len(array) >= MIN_PROTEINS and low > -margin
    return Check(claim, statistic, array.tolist(), float(array.mean()), low, high,
                 int((array > -margin).sum()), None, shown, f"95% CI above -{margin:g}", decisive)
