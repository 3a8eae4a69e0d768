"""Effect sizes: Cohen's d (pooled SD), paired Cohen's d_z, Cliff's δ. Plain floats: 0 when nothing
differs, ±inf when the spread is 0 but the means differ (None in a report's JSON)."""

from __future__ import annotations

import math

import numpy as np

from polyray.eval.stats.base import as_pair, differences

__all__ = ["cliffs_delta", "cohens_d", "cohens_dz"]


def _var(x: np.ndarray) -> float:
    """Sample variance, exactly 0 without spread (the mean of equal values can be a float step off them)."""
    return float(x.var(ddof=1)) if x.size > 1 and np.ptp(x) > 0 else 0.0


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def cohens_d(a, b) -> float:
    """Cohen's d with the pooled SD: (mean a − mean b) / sqrt(((n_a−1)s_a² + (n_b−1)s_b²)/(n_a+n_b−2)).

    0.0 when both means and all values agree; ±inf when the pooled SD is 0 but means differ.
    """
    a, b = as_pair(a, b, paired=False)
    if a.size + b.size < 3:
        raise ValueError("Cohen's d needs n_a + n_b >= 3")
    ss = (a.size - 1) * _var(a) + (b.size - 1) * _var(b)
    pooled = math.sqrt(ss / (a.size + b.size - 2))
    return _ratio(float(a.mean() - b.mean()), pooled)


def cohens_dz(a, b) -> float:
    """Paired Cohen's d_z = mean(a − b) / sd(a − b) (ddof=1), on the differences rounded to 12 decimals
    (as the paired tests take them: float noise must not turn a constant difference into a huge d_z)."""
    d = differences(a, b)
    if d.size < 2:
        raise ValueError("Cohen's d_z needs at least 2 pairs")
    return _ratio(float(d.mean()), math.sqrt(_var(d)))


def cliffs_delta(a, b) -> float:
    """Cliff's δ = (#{a_i > b_j} − #{a_i < b_j}) / (n_a · n_b), in [−1, 1].

    Counted with sorted binary search, O((n_a + n_b) log n_b), equal to the double loop.
    """
    a, b = as_pair(a, b, paired=False)
    sb = np.sort(b)
    # b_j < a_i
    less = np.searchsorted(sb, a, side="left")
    # b_j > a_i
    greater = b.size - np.searchsorted(sb, a, side="right")
    return float((less.sum() - greater.sum()) / (a.size * b.size))
