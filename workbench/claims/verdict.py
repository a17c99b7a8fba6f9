"""The verdict of a claim from its per-seed numbers: pure functions, no training.

The effect is the paired difference d_s = x_a(s) − x_b(s) over the seeds s (the same seed trains both arms), or
d_s = x_a(s) − threshold for a one-arm claim; a two-arm non-inferiority claim adds its signed margin to every
difference (d_s = x_a(s) − x_b(s) + m for "greater", − m for "less", ``Claim.margin``), so the effect tested and
reported is the margin-shifted one. With claimed direction "greater" (resp. "less"), the one-sided test of
H0: E[d] ≤ 0 (resp. ≥ 0) at level α decides:

* **reproduces**: the one-sided (1 − α) confidence bound lies on the claimed side of 0 (p < α);
* **does not reproduce**: the bound on the other side lies on the other side of 0 (significant in the opposite
  direction, or entirely short of the threshold);
* **inconclusive**: otherwise, the (1 − 2α) two-sided interval contains 0.

The interval reported is that two-sided (1 − 2α) interval of E[d], whose ends are the two one-sided (1 − α)
bounds, so "the interval lies on the claimed side" and "p < α one-sided" are the same statement.

Two tests, chosen by the declaration:

* ``"paired-t"``: Student's t on the differences, ``scipy.stats.ttest_rel`` (= ``ttest_1samp`` of d) with
  ``alternative=...``; the interval is :func:`workbench.study.interval` of d (``scipy.stats.t.interval``);
* ``"bootstrap"``: ``scipy.stats.bootstrap`` of the mean of d (percentile interval, 9999 resamples, a numpy
  generator seeded through :func:`workbench.rng.derive`), the one-sided p the share of resampled means on the
  wrong side of 0. With few seeds the percentile interval is narrower than t's (it ignores small-sample error).

Constant differences (every seed the same) have no spread: the sign of their mean decides (p = 0 or 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from .. import rng
from ..errors import ConfigError
from ..study import interval
from .claim import DIRECTIONS, TESTS

__all__ = ["Verdict", "decide", "differences", "REPRODUCES", "DOES_NOT_REPRODUCE", "INCONCLUSIVE", "VERDICTS"]

REPRODUCES, DOES_NOT_REPRODUCE, INCONCLUSIVE = "reproduces", "does not reproduce", "inconclusive"
VERDICTS = (REPRODUCES, DOES_NOT_REPRODUCE, INCONCLUSIVE)
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class Verdict:
    """What :func:`decide` concludes: the verdict, the mean effect with its (1 − 2α) interval, the one-sided
    p-values for the claimed and the opposite direction, the test used and the differences it saw."""

    verdict: str
    effect: float
    low: float
    high: float
    p: float
    p_opposite: float
    test: str
    alpha: float
    n: int
    diffs: tuple[float, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "effect": self.effect, "ci_low": self.low, "ci_high": self.high,
                "confidence": 1 - 2 * self.alpha, "p": self.p, "p_opposite": self.p_opposite, "test": self.test,
                "alpha": self.alpha, "n": self.n, "diffs": list(self.diffs)}


def differences(a: Sequence[float], b: Sequence[float] | None = None, threshold: float | None = None) -> np.ndarray:
    """d_s = a_s − b_s (paired by position: seed s), or a_s − threshold; a pair with a missing or non-finite value
    (a diverged run) is dropped."""
    a = np.asarray(a, dtype=float)
    if b is None:
        if threshold is None:
            raise ConfigError("claim: a one-arm effect needs a threshold")
        d = a - float(threshold)
    else:
        b = np.asarray(b, dtype=float)
        if a.shape != b.shape:
            raise ConfigError(f"claim: paired arms need one value per seed each, got {len(a)} and {len(b)}")
        d = a - b
    return d[np.isfinite(d)]


def _paired_t(d: np.ndarray, direction: str, alpha: float) -> tuple[float, float, float, float, float]:
    mean, _, low, high = interval(d, confidence=1 - 2 * alpha)
    opposite = "less" if direction == "greater" else "greater"
    p = float(scipy.stats.ttest_1samp(d, 0.0, alternative=direction).pvalue)
    q = float(scipy.stats.ttest_1samp(d, 0.0, alternative=opposite).pvalue)
    return mean, low, high, p, q


def _bootstrap(d: np.ndarray, direction: str, alpha: float, seed: int) -> tuple[float, float, float, float, float]:
    res = scipy.stats.bootstrap((d,), np.mean, confidence_level=1 - 2 * alpha, n_resamples=BOOTSTRAP_RESAMPLES,
                                method="percentile", rng=np.random.default_rng(rng.derive(seed, "claims-bootstrap")))
    means = res.bootstrap_distribution
    above, below = float(np.mean(means <= 0)), float(np.mean(means >= 0))  # share on the wrong side of 0
    p, q = (above, below) if direction == "greater" else (below, above)
    return float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high), p, q


def decide(a: Sequence[float], b: Sequence[float] | None = None, *, direction: str, test: str = "paired-t",
           alpha: float = 0.05, threshold: float | None = None, margin: float = 0.0, seed: int = 0) -> Verdict:
    """The verdict on the per-seed values ``a`` (and ``b``), see the module docstring; ``margin`` ≥ 0 (two arms
    only) shifts every difference towards the claimed side. Fewer than two usable pairs (too many diverged runs)
    is *inconclusive*: nothing can be tested."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"claim: direction={direction!r} is invalid; direction must be one of "
                          f"{', '.join(map(repr, DIRECTIONS))}")
    if test not in TESTS:
        raise ConfigError(f"claim: test={test!r} is invalid; test must be one of {', '.join(map(repr, TESTS))}")
    if not (0 < alpha <= 0.5):
        raise ConfigError(f"claim: alpha={alpha!r} is invalid; alpha must be a number in (0, 0.5]")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ConfigError(f"claim: margin={margin!r} is invalid; margin must be a finite number ≥ 0")
    if margin and b is None:
        raise ConfigError(f"claim: margin={margin!r} is invalid; a margin needs two arms")
    d = differences(a, b, threshold) + (margin if direction == "greater" else -margin)
    nan = math.nan
    if len(d) < 2:
        return Verdict(INCONCLUSIVE, float(d.mean()) if len(d) else nan, nan, nan, nan, nan, test, alpha, len(d),
                       tuple(map(float, d)))
    if float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # no spread (to rounding): the sign decides
        m = float(d.mean())
        on_side = m > 0 if direction == "greater" else m < 0
        against = m < 0 if direction == "greater" else m > 0
        mean, low, high, p, q = m, m, m, 0.0 if on_side else 1.0, 0.0 if against else 1.0
    elif test == "paired-t":
        mean, low, high, p, q = _paired_t(d, direction, alpha)
    else:
        mean, low, high, p, q = _bootstrap(d, direction, alpha, seed)
    verdict = REPRODUCES if p < alpha else DOES_NOT_REPRODUCE if q < alpha else INCONCLUSIVE
    return Verdict(verdict, mean, low, high, p, q, test, alpha, len(d), tuple(map(float, d)))
