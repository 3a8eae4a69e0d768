"""Every statistic polyray reports, as pure functions (docs/algorithms.md §5).

Two kinds of comparison live here, because a claim about a model has two possible units:

- Over prompts (the evaluation job: two models on the same prompts): Mann–Whitney U, paired t,
  Wilcoxon signed-rank, Cohen's d / d_z, Cliff's δ, a bootstrap CI of the mean difference,
  ``compare_models`` / ``compare_many`` (Holm across the job's comparisons).
- Over seeds (``polyray experiment``; ``polyray sweep``'s mean and t-interval per setting): the
  training run is the unit. Welch's t with its interval (``welch_t``), Mann–Whitney U exact for
  few seeds (``mann_whitney_seeds``), Cohen's d (``compare_over_seeds``); prompts only within a
  seed: pairing by prompt (``pair_prompts``), a per-seed Wilcoxon and a seeds-then-prompts
  hierarchical bootstrap (``compare_within_seeds``, ``hierarchical_bootstrap``); Holm across
  one family per test (``holm_families``).

Tests come from scipy.stats; Holm's step-down adjustment (Holm 1979) from statsmodels
(``multipletests(method="holm")``: scipy's ``false_discovery_control`` is Benjamini–Hochberg);
only the effect sizes (Cohen's d / d_z, Cliff's δ) are written here: one-line formulas.

Degenerate inputs are answered rather than raised, with a ``note``: identical samples
give p = 1 (there is no evidence of a difference), a constant non-zero paired
difference gives p = 0 for the paired t-test. Samples are 1-D arrays: values per
prompt (paired when both models saw the same prompts in the same order) or per seed.
Results meant for JSON hold None where a statistic is undefined (``finite_or_none``).
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
    "compare_over_seeds",
    "compare_within_seeds",
    "compute_bootstrap_ci",
    "compute_cliffs_delta",
    "compute_cohens_d",
    "compute_cohens_dz",
    "compute_holm",
    "compute_mann_whitney",
    "compute_paired_t",
    "compute_wilcoxon",
    "finite_or_none",
    "hierarchical_bootstrap",
    "holm_families",
    "interval_over_seeds",
    "mann_whitney_seeds",
    "mean_ci",
    "pair_prompts",
    "welch_t",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000  # the hierarchical bootstrap's default
EXACT_SPLITS = 20_000  # Mann-Whitney with ties: exact permutation up to this many splits of the seeds


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
    """Holm–Bonferroni step-down adjustment (Holm 1979), by statsmodels' ``multipletests``.

    With p sorted ascending p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)),
    returned in the input order. Reject H_i iff the step-down procedure does (stop at the
    first p_(i) > alpha / (m − i + 1)), i.e. iff p̃_i ≤ alpha.

    Returns:
        {"adjusted": (m,) adjusted p-values, "reject": (m,) bool}.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must be finite and in [0, 1]")
    if p.size == 0:
        return {"adjusted": np.empty(0), "reject": np.zeros(0, dtype=bool)}
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return {"adjusted": np.asarray(adjusted, dtype=np.float64), "reject": np.asarray(reject, dtype=bool)}


def holm_families(entries: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, int]:
    """Holm within one family per key: for each ``key``, the entries whose ``entry[key]`` is a p-value.

    Adds ``<key>_holm`` to every entry (None where ``entry[key]`` is None: the test was undefined)
    and returns each family's size. ``polyray experiment`` calls it with every comparison x
    metric's over-seeds entry and keys ("welch_p", "mann_whitney_p").
    """
    sizes = {}
    for key in keys:
        family = [e for e in entries if e.get(key) is not None]
        for e in entries:
            e[f"{key}_holm"] = None
        if family:
            for e, p in zip(family, compute_holm([e[key] for e in family])["adjusted"]):
                e[f"{key}_holm"] = float(p)
        sizes[key] = len(family)
    return sizes


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


# --------------------------------------------------------------------------- over seeds


def finite_or_none(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN or ±inf (an undefined statistic)."""
    return float(x) if x is not None and math.isfinite(x) else None


def interval_over_seeds(values, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{"mean", "low", "high", "n"}: ``mean_ci`` of one setting's values over seeds, JSON-safe
    (None for an undefined end, e.g. one seed). ``polyray sweep`` reports every setting so."""
    x = np.asarray(values, dtype=np.float64)
    ci = mean_ci(x, confidence)
    return {**{k: finite_or_none(ci[k]) for k in ("mean", "low", "high")}, "n": len(x)}


def welch_t(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Welch's t-test (Welch 1947; scipy.stats.ttest_ind, equal_var=False) and its t-interval for mean(a) − mean(b).

    No spread within either sample: p = 1 when the means agree, else undefined (None), since
    scipy answers float noise there (t ~ 1e15).
    """
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        if diff == 0:
            return {"statistic": 0.0, "pvalue": 1.0, "df": None, "low": diff, "high": diff,
                    "note": "all values are equal"}
        return {"statistic": None, "pvalue": None, "df": None, "low": None, "high": None,
                "note": "no spread within either model: the t-test is undefined"}
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "df": float(res.df),
            "low": float(ci.low), "high": float(ci.high)}


def mann_whitney_seeds(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Two-sided Mann-Whitney U with a's statistic, exact where the seeds allow.

    Without ties: scipy's exact U distribution (one side ≤ 8 values; asymptotic beyond).
    With ties scipy's default is the normal approximation, which for 3 vs 3 can go below
    the exact minimum 0.1; there scipy's permutation test is used, exact (every split of
    the pooled values) up to ``EXACT_SPLITS`` splits, Monte-Carlo (seeded) beyond.
    """
    res = compute_mann_whitney(a, b)
    if "note" in res:  # all values equal: p = 1
        return {**res, "method": "exact"}
    pooled = np.concatenate([a, b])
    if np.unique(pooled).size == pooled.size:
        return {**res, "method": "exact" if min(a.size, b.size) <= 8 else "asymptotic"}
    splits = math.comb(a.size + b.size, a.size)
    perm = st.PermutationMethod(n_resamples=EXACT_SPLITS, rng=np.random.default_rng(seed))
    r = st.mannwhitneyu(a, b, alternative="two-sided", method=perm)
    return {"statistic": float(r.statistic), "pvalue": float(r.pvalue),
            "method": "exact permutation" if splits <= EXACT_SPLITS else "Monte-Carlo permutation"}


def compare_over_seeds(a, b, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Between-run tests with the seed as the unit: Welch's t with its interval (≥ 2 seeds a side),
    Mann-Whitney U (``mann_whitney_seeds``), Cohen's d (≥ 3 values in all)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out: dict[str, Any] = {"n": [int(a.size), int(b.size)], "difference": float(a.mean() - b.mean()),
                           "mann_whitney": mann_whitney_seeds(a, b)}
    if min(a.size, b.size) >= 2:
        out["welch_t"] = welch_t(a, b, confidence)
    if a.size + b.size >= 3:
        out["cohens_d"] = compute_cohens_d(a, b)
    return out


def pair_prompts(a_texts: Sequence[str | None], b_texts: Sequence[str | None]) -> tuple[list[int], list[int], str] | None:
    """Indices pairing two models' per-prompt values of one seed, and how they were paired.

    By prompt text where every row has one and no text repeats on a side (the prompts both
    sides have), else by position (same prompts in the same order: both phases of a seed draw
    them identically); None when neither works.
    """
    ta, tb = list(a_texts), list(b_texts)
    if None not in ta and None not in tb and len(set(ta)) == len(ta) and len(set(tb)) == len(tb):
        where = {t: j for j, t in enumerate(tb)}
        ia = [i for i, t in enumerate(ta) if t in where]
        return (ia, [where[ta[i]] for i in ia], "prompt") if ia else None
    if ta and len(ta) == len(tb):
        return list(range(len(ta))), list(range(len(tb))), "position"
    return None


def hierarchical_bootstrap(
    diffs: list[np.ndarray], *, n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> dict[str, Any]:
    """Percentile CI of the mean paired difference, resampling seeds, then prompts within each drawn seed.

    The two-stage (cluster) bootstrap of Davison & Hinkley (1997, §3.8) / Field & Welsh (2007),
    for prompts nested in training runs. ``diffs``: per seed, treatment − control per prompt.
    The estimate is the mean over seeds of each seed's mean over prompts (every seed weighs the
    same). A seed drawn twice gets two independent prompt resamples.
    """
    rng = np.random.default_rng(seed)
    n_seeds = len(diffs)
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # seeds, with replacement
    totals = np.zeros(n_resamples)
    for s, d in enumerate(diffs):
        rows = np.nonzero(drawn == s)[0]  # the resample of each draw of seed s
        prompts = rng.integers(0, d.size, size=(rows.size, d.size))  # its prompts, with replacement
        np.add.at(totals, rows, d[prompts].mean(axis=1))
    means = totals / n_seeds
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    out = {"mean_diff": float(np.mean([d.mean() for d in diffs])), "low": float(low), "high": float(high),
           "se": float(means.std(ddof=1)), "confidence": confidence, "n_resamples": n_resamples, "seed": seed,
           "n_seeds": n_seeds}
    if n_seeds == 1:
        out["note"] = "one seed: prompt variation only, no run-to-run variation"
    return out


def compare_within_seeds(
    per_seed: list[tuple[int, np.ndarray | None, np.ndarray | None, Sequence[str | None], Sequence[str | None]]],
) -> dict[str, Any]:
    """The prompt-level view, valid only within a seed; never one pooled test over seeds x prompts.

    ``per_seed``: (seed, treatment values per prompt, control values per prompt, their prompt
    texts; None values: not recorded, no prompt-level view). Per seed: the values paired by
    prompt (``pair_prompts``), their mean difference and Wilcoxon p (descriptive, not Holm-adjusted); over seeds: ``hierarchical_bootstrap`` of the
    differences. Values are rounded to 12 decimals first: pass@k's product carries float noise
    (~1e-16: equal differences of two prompts' pass@k come out unequal), and rank tests must
    see those ties as ties.
    """
    rows, diffs = [], []
    for s, a, b, a_texts, b_texts in per_seed:
        if a is None or b is None:
            return {}
        pairing = pair_prompts(a_texts, b_texts)
        if pairing is None:
            return {"note": f"seed {s}: the two models' prompts cannot be paired"}
        ia, ib, by = pairing
        x, y = np.round(np.asarray(a, dtype=np.float64), 12)[ia], np.round(np.asarray(b, dtype=np.float64), 12)[ib]
        rows.append({"seed": s, "n_prompts": len(ia), "paired_by": by, "mean_diff": float((x - y).mean()),
                     "wilcoxon_p": compute_wilcoxon(x, y)["pvalue"]})
        diffs.append(x - y)
    return {"per_seed": rows, "hierarchical_bootstrap": hierarchical_bootstrap(diffs)} if diffs else {}
