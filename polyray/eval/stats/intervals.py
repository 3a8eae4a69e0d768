"""Intervals: the mean's t-interval, the bootstrap CI of a difference of means, and the bootstrap over
seeds and prompts (``hierarchical_bootstrap``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as st

from polyray.eval.stats.base import (
    BOOTSTRAP_RESAMPLES,
    CONDITIONAL_ON_NOTHING,
    CONDITIONAL_ON_SEEDS_PROMPTS_APART,
    CONFIDENCE,
    as_1d,
    as_pair,
)
from polyray.eval.stats.results import BootstrapInterval, HierarchicalInterval, Interval

__all__ = ["bootstrap_ci", "hierarchical_bootstrap", "mean_ci"]


def mean_ci(values, confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t-interval (scipy.stats.t) — "mean ± 95% CI over seeds" (or over prompts).

    With a single value the interval is undefined: NaN ends and half-width (None in ``to_json()``).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = as_1d(values, "values")
    m = float(x.mean())
    if x.size < 2:
        return Interval(m, math.nan, math.nan, math.nan, 1)
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(st.t.ppf(0.5 + confidence / 2, df=x.size - 1) * sem)
    return Interval(m, m - half, m + half, half, int(x.size))


def _bootstrap_data(a: np.ndarray, b: np.ndarray, paired: bool) -> tuple[tuple[np.ndarray, ...], Callable, bool]:
    """(samples, vectorised statistic, no spread) of mean(a) − mean(b) for ``scipy.stats.bootstrap``."""
    if paired:
        d = a - b
        return (d,), lambda x, axis: x.mean(axis=axis), bool(np.ptp(d) == 0)
    return (a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), bool(np.ptp(a) == 0 and np.ptp(b) == 0)


def bootstrap_ci(
    a,
    b,
    paired: bool,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: str = "BCa",
) -> BootstrapInterval:
    """Bootstrap CI of mean(a) − mean(b) (scipy.stats.bootstrap).

    Paired: resample prompts/seeds, statistic = mean of a − b. Unpaired: resample each sample
    independently, statistic = mean(a) − mean(b). Degenerate data (no spread) give the point estimate
    as both ends (``method`` "degenerate", with a note); if BCa fails it falls back to the percentile
    method (``method`` says which ran).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = as_pair(a, b, paired=paired)
    diff = float(a.mean() - b.mean())
    data, statistic, degenerate = _bootstrap_data(a, b, paired)
    if degenerate:
        return BootstrapInterval(
            diff, diff, diff, confidence, n_resamples, seed, "degenerate", note="no spread in the data"
        )
    for m in (method, "percentile"):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            # BCa's degenerate-data warning: we fall back below
            warnings.simplefilter("ignore")
            res = st.bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                vectorized=True,
                paired=False,
                confidence_level=confidence,
                method=m,
                rng=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return BootstrapInterval(diff, lo, hi, confidence, n_resamples, seed, m)
    return BootstrapInterval(diff, math.nan, math.nan, confidence, n_resamples, seed, "failed")


def _draw_counts(rng: np.random.Generator, n_resamples: int, n: int) -> np.ndarray:
    """(R, n) counts of n draws with replacement from n items, one row per resample (a bincount of
    uniform indices: the multinomial draw, without ``rng.multinomial``'s per-row cost)."""
    idx = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
    return np.bincount(idx.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _joint_means(rows: list[np.ndarray], rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Resampled means drawing seeds and *one* prompt set for every drawn seed (the pigeonhole bootstrap)."""
    if len({r.size for r in rows}) != 1:
        raise ValueError("shared_prompts needs every seed's values over the same prompts (align_prompts)")
    # (S, P)
    y = np.stack(rows)
    n_seeds, n_prompts = y.shape
    # a resample as counts: w_s = draws of seed s, v_i = draws of prompt i; its mean is w Y vᵀ / (S P)
    # (R, S)
    w = _draw_counts(rng, n_resamples, n_seeds)
    # (R, P)
    v = _draw_counts(rng, n_resamples, n_prompts)
    return ((w @ y) * v).sum(axis=1) / (n_seeds * n_prompts)


def _apart_means(rows: list[np.ndarray], rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Resampled means drawing seeds, then each drawn seed's own prompts (the two-stage cluster bootstrap)."""
    n_seeds = len(rows)
    # seeds, with replacement
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    totals = np.zeros(n_resamples)
    for s, d in enumerate(rows):
        # the resample of each draw of seed s
        hit = np.nonzero(drawn == s)[0]
        # its own prompts, with replacement
        prompts = rng.integers(0, d.size, size=(hit.size, d.size))
        np.add.at(totals, hit, d[prompts].mean(axis=1))
    return totals / n_seeds


def _seed_rows(values: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = list(values)
    rows = [np.asarray(v, dtype=np.float64) for v in values]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError("values: one non-empty 1-D array of per-prompt values per seed")
    if not all(np.all(np.isfinite(r)) for r in rows):
        raise ValueError("values contain non-finite values")
    return rows


def hierarchical_bootstrap(
    values: Sequence[np.ndarray] | np.ndarray,
    *,
    shared_prompts: bool = True,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> HierarchicalInterval:
    """Percentile CI of a mean over seeds and prompts, resampling both: seeds, and the prompts they share.

    ``values``: per seed, per-prompt values: one model's, or treatment − control differences of the
    seed's two models, paired by prompt. The estimate is the mean over seeds of each seed's mean
    over prompts (every seed weighs the same); what the interval covers is that mean over new
    seeds *and* new prompts of the task, so it conditions on neither (``conditional_on``).

    ``shared_prompts=True`` (every seed was evaluated on the same prompts, ``values[s][i]`` prompt i
    for every s, as ``align_prompts`` orders them; an (S, P) array): each resample draws S seeds
    with replacement and *one* set of P prompts with replacement, applied to every drawn seed: the
    pigeonhole bootstrap of a seeds × prompts array (Owen 2007, Ann. Appl. Stat. 1(2); McCullagh
    2000). Why one draw: a prompt's effect (hard, or helped by the treatment) is the same in every
    seed, so it does not average out over seeds; drawing prompts afresh per seed treats it as if it
    did, and its interval misses the prompt variance (tests/unit/eval/test_bootstrap_coverage.py
    simulates both schemes' coverage).

    ``shared_prompts=False`` (seeds evaluated on different prompts): each drawn seed gets its own
    prompt resample, the two-stage cluster bootstrap (Davison & Hinkley 1997, §3.8), right for
    prompts nested in seeds and only then.

    When the shared interval holds: its resampling variance is mean(r²)/S + mean(c²)/P + mean(e²)/(SP)
    (r, c, e: the array's seed effects, prompt effects and residuals) against the true
    σ_seed²/S + σ_prompt²/P + σ_resid²/(SP). The residual (a seed×prompt interaction, and each
    per-prompt value's own sampling noise from n samples) enters r and c as well, about three times
    in all: conservative where it carries a large share (a difference of two binary arms, whose
    per-prompt sampling noise adds up). The seed term's plug-in factor (S − 1)/S and the normal
    tails of a percentile interval make it narrow where few seeds carry most of the variance; there
    the paired t-interval over seeds (``paired_t``, conditional on the test prompts) is the one to read.
    """
    rows = _seed_rows(values)
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if shared_prompts:
        means = _joint_means(rows, rng, n_resamples)
        n_prompts: int | tuple[int, ...] = int(rows[0].size)
        conditional_on = CONDITIONAL_ON_NOTHING
    else:
        means = _apart_means(rows, rng, n_resamples)
        n_prompts = tuple(int(r.size) for r in rows)
        conditional_on = CONDITIONAL_ON_SEEDS_PROMPTS_APART
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    note = "one seed: prompt variation only, no run-to-run variation" if len(rows) == 1 else None
    return HierarchicalInterval(
        mean=float(np.mean([r.mean() for r in rows])),
        low=float(low),
        high=float(high),
        se=float(means.std(ddof=1)),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        n_seeds=len(rows),
        n_prompts=n_prompts,
        shared_prompts=shared_prompts,
        conditional_on=conditional_on,
        note=note,
    )
