"""Statistics for comparing two models over prompts or seeds (docs/algorithms.md §5).

Tests come from scipy.stats (Mann–Whitney U, paired t, Wilcoxon signed-rank, bootstrap,
t-intervals); only the effect sizes (Cohen's d / d_z, Cliff's δ) and Holm's step-down
correction are written here because they are one-line formulas (scipy's
``false_discovery_control`` is Benjamini–Hochberg, not Holm).

Degenerate inputs are answered rather than raised, with a ``note``: identical samples
give p = 1 (there is no evidence of a difference), a constant non-zero paired
difference gives p = 0 for the paired t-test. Samples are 1-D arrays: values per
prompt (paired when both models saw the same prompts in the same order) or per seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st

__all__ = [
    "compare_many",
    "compare_models",
    "compute_bootstrap_ci",
    "compute_cliffs_delta",
    "compute_cohens_d",
    "compute_cohens_dz",
    "compute_holm",
    "compute_mann_whitney",
    "compute_paired_t",
    "compute_wilcoxon",
    "mean_ci",
]


def _as_1d(x: Sequence[float] | np.ndarray, name: str, min_size: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _as_pair(a, b, paired: bool, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_1d(a, "a", min_size), _as_1d(b, "b", min_size)
    if paired and a.shape != b.shape:
        raise ValueError(f"paired data need equal lengths, got a: {a.size}, b: {b.size}")
    return a, b


# --------------------------------------------------------------------------- tests


def compute_mann_whitney(a, b) -> dict[str, Any]:
    """Two-sided Mann–Whitney U test (scipy.stats.mannwhitneyu). U is a's statistic."""
    a, b = _as_pair(a, b, paired=False)
    if np.ptp(np.concatenate([a, b])) == 0:
        return {"statistic": a.size * b.size / 2, "pvalue": 1.0, "note": "all values are equal"}
    res = st.mannwhitneyu(a, b, alternative="two-sided")
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def compute_paired_t(a, b) -> dict[str, Any]:
    """Two-sided paired t-test (scipy.stats.ttest_rel) on a − b."""
    a, b = _as_pair(a, b, paired=True, min_size=2)
    d = a - b
    if np.ptp(d) == 0:  # zero variance: scipy returns nan (0/0) or ±inf
        if d[0] == 0:
            return {"statistic": 0.0, "pvalue": 1.0, "df": d.size - 1, "note": "all paired differences are zero"}
        return {
            "statistic": math.copysign(math.inf, d[0]),
            "pvalue": 0.0,
            "df": d.size - 1,
            "note": "paired differences are constant and non-zero",
        }
    res = st.ttest_rel(a, b)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "df": int(res.df)}


def compute_wilcoxon(a, b, zero_method: str = "wilcox") -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) on a − b.

    ``zero_method="wilcox"`` drops zero differences (scipy's default). When every
    difference is zero the test is undefined; we return p = 1 with a note.
    """
    a, b = _as_pair(a, b, paired=True)
    d = a - b
    if np.all(d == 0):
        return {"statistic": 0.0, "pvalue": 1.0, "note": "all paired differences are zero"}
    res = st.wilcoxon(a, b, zero_method=zero_method, alternative="two-sided")
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


# --------------------------------------------------------------------------- effect sizes


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def compute_cohens_d(a, b) -> float:
    """Cohen's d with the pooled SD: (mean a − mean b) / sqrt(((n_a−1)s_a² + (n_b−1)s_b²)/(n_a+n_b−2)).

    0.0 when both means and all values agree; ±inf when the pooled SD is 0 but means differ.
    """
    a, b = _as_pair(a, b, paired=False)
    if a.size + b.size < 3:
        raise ValueError("Cohen's d needs n_a + n_b >= 3")
    ss = (a.size - 1) * (a.var(ddof=1) if a.size > 1 else 0.0) + (b.size - 1) * (b.var(ddof=1) if b.size > 1 else 0.0)
    pooled = math.sqrt(ss / (a.size + b.size - 2))
    return _ratio(float(a.mean() - b.mean()), pooled)


def compute_cohens_dz(a, b) -> float:
    """Paired Cohen's d_z = mean(a − b) / sd(a − b) (ddof=1)."""
    a, b = _as_pair(a, b, paired=True, min_size=2)
    d = a - b
    return _ratio(float(d.mean()), float(d.std(ddof=1)))


def compute_cliffs_delta(a, b) -> float:
    """Cliff's δ = (#{a_i > b_j} − #{a_i < b_j}) / (n_a · n_b), in [−1, 1].

    Counted with sorted binary search, O((n_a + n_b) log n_b), equal to the double loop.
    """
    a, b = _as_pair(a, b, paired=False)
    sb = np.sort(b)
    less = np.searchsorted(sb, a, side="left")  # b_j < a_i
    greater = b.size - np.searchsorted(sb, a, side="right")  # b_j > a_i
    return float((less.sum() - greater.sum()) / (a.size * b.size))


# --------------------------------------------------------------------------- intervals


def compute_bootstrap_ci(
    a,
    b,
    paired: bool,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: str = "BCa",
) -> dict[str, Any]:
    """Bootstrap CI of mean(a) − mean(b) (scipy.stats.bootstrap).

    Paired: resample prompts/seeds, statistic = mean of a − b. Unpaired: resample
    each sample independently, statistic = mean(a) − mean(b). Degenerate data (no
    spread) give the point estimate as both ends; if BCa fails it falls back to the
    percentile method (``method`` in the result says which ran).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = _as_pair(a, b, paired=paired)
    diff = float(a.mean() - b.mean())
    if paired:
        data: tuple[np.ndarray, ...] = (a - b,)
        degenerate = np.ptp(data[0]) == 0

        def statistic(d, axis):
            return d.mean(axis=axis)
    else:
        data = (a, b)
        degenerate = np.ptp(a) == 0 and np.ptp(b) == 0

        def statistic(x, y, axis):
            return x.mean(axis=axis) - y.mean(axis=axis)

    out = {"mean_diff": diff, "confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    if degenerate:
        return {**out, "low": diff, "high": diff, "method": "degenerate", "note": "no spread in the data"}
    for m in (method, "percentile"):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-data warning: we fall back below
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
            return {**out, "low": lo, "high": hi, "method": m}
    return {**out, "low": math.nan, "high": math.nan, "method": "failed"}


def mean_ci(values, confidence: float = 0.95) -> dict[str, Any]:
    """Mean ± t-interval (scipy.stats.t) — "mean ± 95% CI over seeds".

    Returns {"mean", "low", "high", "half_width", "n"}; with a single value the
    interval is undefined (NaN ends).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _as_1d(values, "values")
    m = float(x.mean())
    if x.size < 2:
        return {"mean": m, "low": math.nan, "high": math.nan, "half_width": math.nan, "n": 1}
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(st.t.ppf(0.5 + confidence / 2, df=x.size - 1) * sem)
    return {"mean": m, "low": m - half, "high": m + half, "half_width": half, "n": int(x.size)}


# --------------------------------------------------------------------------- multiple comparisons


def compute_holm(pvalues: Sequence[float] | np.ndarray, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Holm–Bonferroni step-down adjustment (Holm 1979).

    With p sorted ascending p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)),
    returned in the input order. Reject H_i iff p̃_i ≤ alpha (equivalent to the
    step-down procedure: stop at the first p_(i) > alpha / (m − i + 1)).

    Returns:
        {"adjusted": (m,) adjusted p-values, "reject": (m,) bool}.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must be finite and in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return {"adjusted": adjusted, "reject": adjusted <= alpha}


# --------------------------------------------------------------------------- one call


def compare_models(
    a,
    b,
    paired: bool,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """All comparisons of model a against model b (JSON-serialisable).

    Args:
        a, b: (N,) per-prompt or per-seed values (e.g. pass@k per prompt, USQ per seed).
        paired: a[i] and b[i] come from the same prompt/seed.
    Returns:
        n_a, n_b, mean_a, mean_b, mean_diff (a − b), mean_ci_a, mean_ci_b,
        mann_whitney, cohens_d, cliffs_delta, bootstrap_ci, and when paired also
        paired_t, wilcoxon, cohens_dz. Each test entry is {"statistic", "pvalue"[, "note"]}.
        ``primary_pvalue`` is Wilcoxon's p when paired, else Mann–Whitney's
        (the one ``compare_many`` corrects with Holm).
    """
    a, b = _as_pair(a, b, paired=paired)
    out: dict[str, Any] = {
        "paired": paired,
        "n_a": int(a.size),
        "n_b": int(b.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(a.mean() - b.mean()),
        "mean_ci_a": mean_ci(a, confidence),
        "mean_ci_b": mean_ci(b, confidence),
        "mann_whitney": compute_mann_whitney(a, b),
        "cohens_d": compute_cohens_d(a, b) if a.size + b.size >= 3 else math.nan,
        "cliffs_delta": compute_cliffs_delta(a, b),
        "bootstrap_ci": compute_bootstrap_ci(
            a, b, paired, confidence=confidence, n_resamples=n_resamples, seed=seed
        ),
    }
    if paired:
        out["wilcoxon"] = compute_wilcoxon(a, b)
        if a.size >= 2:
            out["paired_t"] = compute_paired_t(a, b)
            out["cohens_dz"] = compute_cohens_dz(a, b)
        out["primary_pvalue"] = out["wilcoxon"]["pvalue"]
    else:
        out["primary_pvalue"] = out["mann_whitney"]["pvalue"]
    return out


def compare_many(
    pairs: dict[str, tuple[Sequence[float], Sequence[float]]],
    paired: bool,
    *,
    alpha: float = 0.05,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``compare_models`` for each named comparison, Holm-corrected across them.

    Adds ``pvalue_holm`` and ``reject_holm`` (at ``alpha``) to each result, using its
    ``primary_pvalue``.
    """
    results = {name: compare_models(a, b, paired, **kwargs) for name, (a, b) in pairs.items()}
    if results:
        holm = compute_holm([r["primary_pvalue"] for r in results.values()], alpha=alpha)
        for (name, r), adj, rej in zip(results.items(), holm["adjusted"], holm["reject"]):
            r["pvalue_holm"] = float(adj)
            r["reject_holm"] = bool(rej)
    return results
