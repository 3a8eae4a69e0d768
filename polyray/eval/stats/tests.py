"""The tests: paired t, Welch's t, Wilcoxon signed-rank, Mann–Whitney U, TOST equivalence, paired
non-inferiority. One function per test, over prompts and over seeds alike, one answer on degenerate data.

Degenerate data: every paired difference zero (or every value equal) gives p = 1, there is no evidence
of a difference; a test undefined on the data (one value, a constant non-zero paired difference, no
spread for a t-test) gives pvalue None with a ``note``: a t-test on a constant non-zero difference of
3 values claims a certainty it does not have. TOST and non-inferiority are undefined without spread
even when every difference is zero (their null is a difference, which no spread can rule out).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

from polyray.eval.stats.base import (
    ALPHA,
    CONFIDENCE,
    EQUIVALENCE_MARGIN,
    EXACT_SPLITS,
    as_pair,
    differences,
    permutation_batch,
)
from polyray.eval.stats.results import Equivalence, NonInferiority, TestResult, TTestResult

__all__ = ["equivalence_tost", "mann_whitney", "noninferiority_paired", "paired_t", "welch_t", "wilcoxon"]


def _exact_permutation(n_values: int) -> st.PermutationMethod:
    """scipy's permutation test, every arrangement enumerated (callers check there are at most ``EXACT_SPLITS``)."""
    return st.PermutationMethod(n_resamples=EXACT_SPLITS, batch=permutation_batch(n_values))


def paired_t(a, b, confidence: float = CONFIDENCE) -> TTestResult:
    """Paired t-test on the differences a − b (scipy.stats.ttest_rel) and the t-interval of their mean
    (``confidence_interval`` of the same result: mean d ± t_{n−1} · sd(d)/√n).

    Pairs are prompts (the evaluation job) or seeds (``polyray experiment``). Why paired over seeds:
    the models of one seed share the SFT start, the training prompts, the sampling seeds and the test
    prompts, so their values move together from seed to seed; the difference per seed removes that
    shared part, which Welch's test would count as noise. Degenerate (differences rounded to 12
    decimals): one pair, undefined; every difference zero, p = 1 and the interval [0, 0]; a constant
    non-zero difference, undefined (None).
    """
    a, b = as_pair(a, b, paired=True)
    d = differences(a, b)
    if d.size < 2:
        return TTestResult(None, None, note="one pair of values: no t-test")
    if np.ptp(d) == 0:
        if d[0] == 0:
            return TTestResult(0.0, 1.0, df=d.size - 1, low=0.0, high=0.0, note="all paired differences are zero")
        return TTestResult(
            None, None, df=d.size - 1, note="the paired differences are constant: the t-test is undefined"
        )
    res = st.ttest_rel(a, b)
    ci = res.confidence_interval(confidence_level=confidence)
    return TTestResult(float(res.statistic), float(res.pvalue), df=int(res.df), low=float(ci.low), high=float(ci.high))


def welch_t(a, b, confidence: float = CONFIDENCE) -> TTestResult:
    """Welch's t-test (Welch 1947; scipy.stats.ttest_ind, equal_var=False) and its t-interval for mean(a) − mean(b).

    For two samples that are not paired (seed sets with different ids): with shared seeds the paired
    test (``paired_t``) removes the seed-to-seed variation the two models share. One value on a side:
    undefined. No spread within either sample: p = 1 when the means agree, else undefined (None),
    since scipy answers float noise there (t ~ 1e15).
    """
    a, b = as_pair(a, b, paired=False)
    if min(a.size, b.size) < 2:
        return TTestResult(None, None, note="one value on a side: no t-test")
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        if diff == 0:
            return TTestResult(0.0, 1.0, low=diff, high=diff, note="all values are equal")
        return TTestResult(None, None, note="no spread within either model: the t-test is undefined")
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return TTestResult(
        float(res.statistic), float(res.pvalue), df=float(res.df), low=float(ci.low), high=float(ci.high)
    )


def wilcoxon(a, b) -> TestResult:
    """Two-sided Wilcoxon signed-rank test on the differences a − b (rounded to 12 decimals), exact where
    the data allow.

    Zero differences are dropped (scipy's ``zero_method="wilcox"``); all zero: p = 1. Without ties or
    zeros: scipy's exact null distribution up to 50 differences, asymptotic beyond; with them scipy's
    permutation test, exact (all 2^n sign flips) up to ``EXACT_SPLITS`` flips, so on few pairs (seeds)
    the p never goes below what the data allow (the normal approximation can); beyond, the normal
    approximation with scipy's tie correction, accurate at that many pairs and deterministic.

    ``min_pvalue`` is the smallest p the test can give: 2 / 2^n for n non-zero differences (every
    difference of one sign), 0.0625 at 5 seeds and 0.25 at 3. Below 6 pairs the test cannot reject at
    0.05 whatever the effect, nor survive Holm across many tests: over seeds it is reported as the
    check of the t-test that assumes no normality, and the result says so (``note``).
    """
    d = differences(a, b)
    nonzero = d[d != 0]
    n = int(nonzero.size)
    if n == 0:
        return TestResult(0.0, 1.0, method="exact", min_pvalue=1.0, note="all paired differences are zero")
    min_p = min(1.0, 2.0 / 2.0**n)
    if n == d.size and np.unique(np.abs(nonzero)).size == n:
        method = "exact" if n <= 50 else "asymptotic"
        res = st.wilcoxon(d, method=method)
        statistic, pvalue = res.statistic, res.pvalue
    # one sign flip each way: two-sided p = 1 (scipy's permutation test needs two values)
    elif n == 1:
        method, statistic, pvalue = "exact", 0.0, 1.0
    # zeros dropped first: their signs change nothing, and 2^n flips enumerate
    elif 2**n <= EXACT_SPLITS:
        res = st.wilcoxon(nonzero, method=_exact_permutation(n))
        method, statistic, pvalue = "exact permutation", res.statistic, res.pvalue
    else:
        res = st.wilcoxon(d, method="asymptotic")
        method, statistic, pvalue = "asymptotic", res.statistic, res.pvalue
    note = None
    if min_p > ALPHA:
        note = (
            f"{n} non-zero differences: the exact two-sided p cannot go below {min_p:.3g}, "
            f"so the signed-rank test cannot reject at {ALPHA}"
        )
    return TestResult(float(statistic), float(pvalue), method=method, min_pvalue=min_p, note=note)


def mann_whitney(a, b) -> TestResult:
    """Two-sided Mann–Whitney U with a's statistic, exact where the data allow (unpaired samples).

    All values equal: p = 1. Without ties: scipy's exact U distribution (one side ≤ 8 values;
    asymptotic beyond). With ties scipy's default is the normal approximation, which for 3 vs 3 can
    go below the exact minimum 0.1; there scipy's permutation test is used, exact (every split of the
    pooled values) up to ``EXACT_SPLITS`` splits, the tie-corrected normal approximation beyond.
    """
    a, b = as_pair(a, b, paired=False)
    pooled = np.concatenate([a, b])
    if np.ptp(pooled) == 0:
        return TestResult(a.size * b.size / 2, 1.0, method="exact", note="all values are equal")
    if np.unique(pooled).size == pooled.size:
        res = st.mannwhitneyu(a, b, alternative="two-sided")
        return TestResult(
            float(res.statistic), float(res.pvalue), method="exact" if min(a.size, b.size) <= 8 else "asymptotic"
        )
    if math.comb(a.size + b.size, a.size) <= EXACT_SPLITS:
        method, res = (
            "exact permutation",
            st.mannwhitneyu(a, b, alternative="two-sided", method=_exact_permutation(pooled.size)),
        )
    else:
        method, res = "asymptotic", st.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    return TestResult(float(res.statistic), float(res.pvalue), method=method)


def equivalence_tost(a, b, margin: float = EQUIVALENCE_MARGIN, *, paired: bool, alpha: float = ALPHA) -> Equivalence:
    """Equivalence of the means within ±``margin``: two one-sided t-tests (TOST, Schuirmann 1987).

    H0: |mean(a) − mean(b)| ≥ margin against H1: |…| < margin, by statsmodels' ``ttost_paired``
    (paired) or ``ttost_ind(usevar="unequal")`` (Welch). p is the larger one-sided p;
    ``equivalent`` iff p < alpha, which is the same as the (1 − 2α) t-interval (``low``, ``high``,
    90% at α = 0.05) lying inside (−margin, margin). Why a test of its own: a difference that is
    not significant is not shown to be absent — an interval of [−0.144, +0.112] is "not significant"
    and says nothing about a change being harmless. A claim that a change keeps a metric unchanged
    is this test at a stated margin. No spread (paired: constant differences; unpaired: constant
    values on both sides) or one value: undefined (None), as for the t-tests.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    x, y = as_pair(a, b, paired=paired)
    method = "TOST paired t" if paired else "TOST Welch t"
    if paired:
        d = differences(x, y)
        degenerate = d.size < 2 or np.ptp(d) == 0
    else:
        degenerate = min(x.size, y.size) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0)
    if degenerate:
        return Equivalence(
            float(margin),
            alpha,
            1 - 2 * alpha,
            method,
            None,
            None,
            None,
            None,
            note="no spread (or one value): the equivalence test is undefined",
        )
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired

    if paired:
        p = ttost_paired(x, y, -margin, margin)[0]
        ci = st.ttest_rel(x, y).confidence_interval(confidence_level=1 - 2 * alpha)
    else:
        p = ttost_ind(x, y, -margin, margin, usevar="unequal")[0]
        ci = st.ttest_ind(x, y, equal_var=False).confidence_interval(confidence_level=1 - 2 * alpha)
    p = float(p)
    return Equivalence(float(margin), alpha, 1 - 2 * alpha, method, p, bool(p < alpha), float(ci.low), float(ci.high))


def noninferiority_paired(a, b, margin: float, alpha: float = ALPHA) -> NonInferiority:
    """Non-inferiority of a to b by ``margin``, paired: one one-sided paired t-test.

    H0: mean(a − b) ≤ −margin against H1: mean(a − b) > −margin (``scipy.stats.ttest_1samp`` of the
    differences against −margin, ``alternative="greater"``). ``noninferior`` iff p < alpha, the same
    as the one-sided (1 − α) lower bound ``low`` of the mean difference lying above −margin. The
    claim "a is at least as good as b" with no difference detected is this test: a two-sided
    interval that holds 0 says nothing about a being no worse. No spread (or one pair): undefined (None).
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d = differences(a, b)
    method = "one-sided paired t"
    if d.size < 2 or np.ptp(d) == 0:
        return NonInferiority(
            float(margin),
            alpha,
            method,
            float(d.mean()),
            None,
            None,
            None,
            note="no spread (or one value): the non-inferiority test is undefined",
        )
    res = st.ttest_1samp(d, -margin, alternative="greater")
    p = float(res.pvalue)
    # the bound is the interval of the same one-sided test: (mean − t_{1−α} · sd/√n, ∞)
    return NonInferiority(
        float(margin), alpha, method, float(d.mean()), p, bool(p < alpha), float(res.confidence_interval(1 - alpha).low)
    )
