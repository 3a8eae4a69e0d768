"""Every statistic polyray reports, as pure functions (docs/algorithms.md §5).

Two kinds of comparison live here, because a claim about a model has two possible units:

- Over prompts (the evaluation job: two fixed models on the same prompts): Mann–Whitney U, paired
  t, Wilcoxon signed-rank, Cohen's d / d_z, Cliff's δ, a bootstrap CI of the mean difference,
  ``compare_models`` / ``compare_many`` (Holm across the job's comparisons). These generalise to
  new prompts, given the two trained models.
- Over seeds (``polyray experiment``; ``polyray sweep``'s mean and t-interval per setting): the
  training run is the unit. Every model of an experiment is trained and evaluated on the same
  seeds (same SFT start, training prompts, sampling seeds and test prompts per seed), so two
  models are compared *paired by seed id*: paired t on the per-seed differences with its
  interval (``paired_t``), Wilcoxon signed-rank (``wilcoxon_seeds``), d_z and a TOST
  equivalence test (``equivalence_tost``) with a stated margin; Welch's t and Mann–Whitney U
  (``welch_t``, ``mann_whitney_seeds``) only where the seed sets differ
  (``compare_over_seeds`` picks). These intervals are conditional on the one test set every
  seed used (``CONDITIONAL_ON_TEST_PROMPTS``): they generalise to new training runs, not to new
  prompts. Prompts enter through a bootstrap that resamples seeds and the *shared* prompts
  jointly (``hierarchical_bootstrap``, aligned by ``align_prompts``; ``compare_within_seeds``
  for a difference, ``interval_over_seeds_and_prompts`` for one model), whose interval
  conditions on neither (``CONDITIONAL_ON_NOTHING``); per seed, pairing by prompt
  (``pair_prompts``) and a descriptive Wilcoxon. Holm across one family per test
  (``holm_families``).

Every interval or test result over seeds carries ``conditional_on``: a "95% CI over seeds" that
does not say it holds the test prompts fixed reads as a claim about the task, which it is not.

Tests come from scipy.stats; TOST from statsmodels (``ttost_paired`` / ``ttost_ind``); Holm's
step-down adjustment (Holm 1979) from statsmodels (``multipletests(method="holm")``: scipy's
``false_discovery_control`` is Benjamini–Hochberg); only the effect sizes (Cohen's d / d_z,
Cliff's δ) and the bootstrap's resampling are written here.

Degenerate inputs are answered rather than raised, with a ``note``: identical samples
give p = 1 (there is no evidence of a difference), a constant non-zero paired
difference gives p = 0 for the paired t-test over prompts (undefined, None, over seeds).
Samples are 1-D arrays: values per prompt (paired when both models saw the same prompts in
the same order) or per seed. Results meant for JSON hold None where a statistic is undefined
(``finite_or_none``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as st

__all__ = [
    "align_prompts",
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
    "equivalence_tost",
    "finite_or_none",
    "hierarchical_bootstrap",
    "holm_families",
    "interval_over_seeds",
    "interval_over_seeds_and_prompts",
    "mann_whitney_seeds",
    "mean_ci",
    "noninferiority_paired",
    "pair_prompts",
    "paired_t",
    "raised_and_kept",
    "welch_t",
    "wilcoxon_seeds",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000  # the hierarchical bootstrap's default
EXACT_SPLITS = 20_000  # rank tests with ties: exact permutation up to this many splits / sign flips
ALPHA = 0.05  # the level of every verdict (TOST's "equivalent", Holm's rejections)
# TOST margin: an absolute difference of means below which two models count as equivalent. 0.01 of
# pass@1 is one test prompt in a hundred; a claim that a change "keeps" a metric is tested at it.
EQUIVALENCE_MARGIN = 0.01
# What an interval holds fixed (``conditional_on`` in every result over seeds): the t-interval and
# the tests over seeds see each seed's mean on the one test set all seeds share, so they generalise
# to new training runs on these prompts; the joint bootstrap resamples the prompts too.
CONDITIONAL_ON_TEST_PROMPTS = "test prompts"
CONDITIONAL_ON_NOTHING = "nothing (seeds and prompts resampled)"
CONDITIONAL_ON_SEEDS_PROMPTS_APART = "nothing (seeds resampled, prompts resampled apart per seed)"
CONDITIONAL_ON_MODELS = "the models compared (prompts resampled)"


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
    metric's over-seeds entry and the keys of the tests it ran ("paired_t_p", "wilcoxon_p",
    "tost_p"; "welch_p", "mann_whitney_p" for an unpaired comparison).
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
        (the one ``compare_many`` corrects with Holm). ``conditional_on``: the two models, i.e.
        one training run each; the prompts are the sample (``CONDITIONAL_ON_MODELS``).
    """
    a, b = _as_pair(a, b, paired=paired)
    out: dict[str, Any] = {
        "paired": paired,
        "conditional_on": CONDITIONAL_ON_MODELS,
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




def _seed_differences(a, b) -> np.ndarray:
    """a − b per seed, rounded to 12 decimals: per-seed values are means over prompts and carry float
    noise (0.71 − 0.31 ≠ 0.70 − 0.30 in float64), and a constant or tied difference must read as one."""
    a, b = _as_pair(a, b, paired=True)
    return np.round(a - b, 12)


def welch_t(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Welch's t-test (Welch 1947; scipy.stats.ttest_ind, equal_var=False) and its t-interval for mean(a) − mean(b).

    For two sets of seeds that are not the same runs (different seed ids): with shared seeds the
    paired test (``paired_t``) removes the seed-to-seed variation the two models share.
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


def paired_t(a, b, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Paired t-test on the per-seed differences a − b (scipy.stats.ttest_rel) and the t-interval of
    their mean (``confidence_interval`` of the same result: mean d ± t_{n−1} · sd(d)/√n).

    Why paired: the models of one seed share the SFT start, the training prompts, the sampling seeds
    and the test prompts, so their values move together from seed to seed; the difference per seed
    removes that shared part, which Welch's test would count as noise (in simulation its interval
    came out about twice as wide). Needs 2 seeds. No spread in the differences: p = 1 and the
    interval [0, 0] when every difference is 0, else undefined (None): a t-test on a constant
    non-zero difference of 3 seeds claims certainty it does not have.
    """
    d = _seed_differences(a, b)
    mean = float(d.mean())
    if d.size < 2:
        return {"statistic": None, "pvalue": None, "df": None, "low": None, "high": None,
                "note": "one seed: no t-test"}
    if np.ptp(d) == 0:
        if mean == 0:
            return {"statistic": 0.0, "pvalue": 1.0, "df": d.size - 1, "low": 0.0, "high": 0.0,
                    "note": "all paired differences are zero"}
        return {"statistic": None, "pvalue": None, "df": d.size - 1, "low": None, "high": None,
                "note": "the paired differences are constant: the t-test is undefined"}
    res = st.ttest_rel(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    ci = res.confidence_interval(confidence_level=confidence)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "df": int(res.df),
            "low": float(ci.low), "high": float(ci.high)}


def wilcoxon_seeds(a, b, seed: int = 0) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test on the per-seed differences a − b, exact where the seeds allow.

    Zero differences are dropped (scipy's ``zero_method="wilcox"``). Without ties or zeros: scipy's
    exact null distribution; with them scipy's permutation test, exact (all 2^n sign flips) up to
    ``EXACT_SPLITS`` flips, Monte-Carlo (seeded) beyond, so the p never goes below what the seeds
    allow (the normal approximation can).

    ``min_pvalue`` is the smallest p the test can give: 2 / 2^n for n non-zero differences (every
    difference of one sign), 0.0625 at 5 seeds and 0.25 at 3. Below 6 seeds the test cannot reject
    at 0.05 whatever the effect, nor survive Holm across many tests: it is reported as the check of
    the t-test that assumes no normality, and the result says so (``note``).
    """
    d = _seed_differences(a, b)
    nonzero = d[d != 0]
    n = int(nonzero.size)
    min_p = min(1.0, 2.0 / 2.0**n) if n else 1.0
    if n == 0:
        return {"statistic": 0.0, "pvalue": 1.0, "method": "exact", "min_pvalue": 1.0,
                "note": "all paired differences are zero"}
    if n == d.size and np.unique(np.abs(nonzero)).size == n:
        method = "exact" if n <= 50 else "asymptotic"
        res = st.wilcoxon(d, method=method)
    else:
        perm = st.PermutationMethod(n_resamples=EXACT_SPLITS, rng=np.random.default_rng(seed))
        res = st.wilcoxon(d, method=perm)
        method = "exact permutation" if 2**n <= EXACT_SPLITS else "Monte-Carlo permutation"
    out = {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "method": method, "min_pvalue": min_p}
    if min_p > ALPHA:
        out["note"] = (f"{n} non-zero differences: the exact two-sided p cannot go below {min_p:.3g}, "
                       f"so the signed-rank test cannot reject at {ALPHA}")
    return out


def equivalence_tost(
    a, b, margin: float = EQUIVALENCE_MARGIN, *, paired: bool, alpha: float = ALPHA
) -> dict[str, Any]:
    """Equivalence of the means within ±``margin``: two one-sided t-tests (TOST, Schuirmann 1987).

    H0: |mean(a) − mean(b)| ≥ margin against H1: |…| < margin, by statsmodels' ``ttost_paired``
    (paired by seed) or ``ttost_ind(usevar="unequal")`` (Welch). p is the larger one-sided p;
    ``equivalent`` iff p < alpha, which is the same as the (1 − 2α) t-interval (``low``, ``high``,
    90% at α = 0.05) lying inside (−margin, margin). Why a test of its own: a difference that is
    not significant is not shown to be absent — an interval of [−0.144, +0.112] is "not significant"
    and says nothing about a change being harmless. A claim that a change keeps a metric unchanged
    is this test at a stated margin. No spread (paired: constant differences; unpaired: constant
    values on both sides): undefined (None), as for the t-tests.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    out: dict[str, Any] = {"margin": float(margin), "alpha": alpha, "confidence": 1 - 2 * alpha,
                           "method": "TOST paired t" if paired else "TOST Welch t"}
    if paired:
        d = _seed_differences(a, b)
        degenerate = d.size < 2 or np.ptp(d) == 0
    else:
        a, b = _as_pair(a, b, paired=False)
        degenerate = min(a.size, b.size) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0)
    if degenerate:
        return {**out, "pvalue": None, "equivalent": None, "low": None, "high": None,
                "note": "no spread (or one seed): the equivalence test is undefined"}
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if paired:
        p = ttost_paired(x, y, -margin, margin)[0]
        ci = st.ttest_rel(x, y).confidence_interval(confidence_level=1 - 2 * alpha)
    else:
        p = ttost_ind(x, y, -margin, margin, usevar="unequal")[0]
        ci = st.ttest_ind(x, y, equal_var=False).confidence_interval(confidence_level=1 - 2 * alpha)
    p = float(p)
    return {**out, "pvalue": p, "equivalent": bool(p < alpha), "low": float(ci.low), "high": float(ci.high)}


def noninferiority_paired(a, b, margin: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Non-inferiority of a to b by ``margin``, paired by seed: one one-sided paired t-test.

    H0: mean(a − b) ≤ −margin against H1: mean(a − b) > −margin (``scipy.stats.ttest_1samp`` of the
    per-seed differences against −margin, ``alternative="greater"``). ``noninferior`` iff p < alpha,
    the same as the one-sided (1 − α) lower bound ``low`` of the mean difference lying above
    −margin. The claim "a is at least as good as b" with no difference detected is this test: a
    two-sided interval that holds 0 says nothing about a being no worse. No spread (or one seed):
    undefined (None).
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    d = _seed_differences(a, b)
    out: dict[str, Any] = {"margin": float(margin), "alpha": alpha, "method": "one-sided paired t",
                           "mean": float(d.mean()) if d.size else None}
    if d.size < 2 or np.ptp(d) == 0:
        return {**out, "pvalue": None, "noninferior": None, "low": None,
                "note": "no spread (or one seed): the non-inferiority test is undefined"}
    res = st.ttest_1samp(d, -margin, alternative="greater")
    p = float(res.pvalue)  # the interval of the same one-sided test: (mean − t_{1−α} · sd/√n, ∞)
    return {**out, "pvalue": p, "noninferior": bool(p < alpha), "low": float(res.confidence_interval(1 - alpha).low)}


def mann_whitney_seeds(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Two-sided Mann-Whitney U with a's statistic, exact where the seeds allow (unpaired seeds only).

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


def _by_seed(x, seeds: Sequence[int] | None, name: str) -> tuple[np.ndarray, list[int] | None]:
    """Values and their seed ids: a {seed: value} mapping, or values with ``seeds`` (None: ids unknown)."""
    if isinstance(x, Mapping):
        if seeds is not None:
            raise ValueError(f"{name}: give seed ids either as the mapping's keys or as seeds_{name}, not both")
        seeds, x = list(x), list(x.values())
    arr = _as_1d(x, name)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) != arr.size or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds_{name}: {len(seeds)} distinct seed ids needed for {arr.size} values, got {seeds}")
    return arr, seeds


def compare_over_seeds(
    a,
    b,
    confidence: float = CONFIDENCE,
    *,
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    margin: float | None = EQUIVALENCE_MARGIN,
) -> dict[str, Any]:
    """Between-run tests with the seed as the unit, paired by seed id when both models have the same seeds.

    ``a``, ``b``: one value per seed (e.g. a model's mean pass@1 on the test set), with their seed
    ids as ``seeds_a`` / ``seeds_b`` or as the keys of a {seed: value} mapping.

    Same seed ids on both sides (``design: "paired"``, matched by id, whatever the order): the
    seed's two models share its SFT start, training prompts, sampling seeds and test prompts, so
    the tests take the per-seed differences: ``paired_t`` with the t-interval of the mean
    difference, ``wilcoxon_seeds`` (exact; its ``min_pvalue`` says how low it can go), Cohen's d_z.
    Otherwise (seed ids differ or are not given: ``design: "unpaired"``): Welch's t with its
    interval, Mann–Whitney U (``mann_whitney_seeds``), Cohen's d. Either way ``equivalence``:
    ``equivalence_tost`` at ``margin`` (None: not run). ``conditional_on``: the test prompts,
    which every seed shares and no test here resamples.
    """
    a, seeds_a = _by_seed(a, seeds_a, "a")
    b, seeds_b = _by_seed(b, seeds_b, "b")
    paired = seeds_a is not None and seeds_b is not None and sorted(seeds_a) == sorted(seeds_b)
    out: dict[str, Any] = {"design": "paired" if paired else "unpaired", "conditional_on": CONDITIONAL_ON_TEST_PROMPTS,
                           "n": [int(a.size), int(b.size)], "difference": float(a.mean() - b.mean())}
    if paired:
        order = sorted(seeds_a)
        a = a[[seeds_a.index(s) for s in order]]
        b = b[[seeds_b.index(s) for s in order]]
        out["seeds"] = order
        out["paired_t"] = paired_t(a, b, confidence)
        out["wilcoxon"] = wilcoxon_seeds(a, b)
        if a.size >= 2:
            out["cohens_dz"] = compute_cohens_dz(_seed_differences(a, b), np.zeros(a.size))
    else:
        if seeds_a is not None and seeds_b is not None:
            out["note"] = "the two models have different seeds: unpaired tests"
        out["mann_whitney"] = mann_whitney_seeds(a, b)
        if min(a.size, b.size) >= 2:
            out["welch_t"] = welch_t(a, b, confidence)
        if a.size + b.size >= 3:
            out["cohens_d"] = compute_cohens_d(a, b)
    if margin is not None:
        out["equivalence"] = equivalence_tost(a, b, margin, paired=paired)
    return out


def raised_and_kept(
    raise_a: Mapping[int, float],
    raise_b: Mapping[int, float],
    keep_a: Mapping[int, float],
    keep_b: Mapping[int, float],
    *,
    keep_within: float,
    min_seeds: int = 5,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Whether a model *raises* one metric over a control while *keeping* another within a relative
    margin of the control's: an intersection–union test (Berger 1982) over seeds, paired by seed id.

    Each argument maps seed id -> the model's value on that seed (a: treatment, b: control); the
    seeds both sides of both metrics have are used. Raised: the paired t-test (``paired_t``) on
    the per-seed differences of the first metric rejects at ``alpha`` and the mean difference is
    positive. Kept: the paired TOST (``equivalence_tost``) at ±``keep_within`` × |mean control| of
    the second metric concludes equivalence at ``alpha`` (the margin is relative, so it is taken
    from the control's mean over the same seeds). The claim holds when both do; no multiplicity
    adjustment is needed inside it, since each part must reject on its own at ``alpha``.
    ``pvalue`` is the intersection–union p, max(raise p, TOST p): Holm across several such claims
    takes it. ``verdict``: "supported", "not supported" (with ``reasons``) or "undecided" when fewer
    than ``min_seeds`` seeds are paired or a test is undefined.
    """
    if not 0 < keep_within < 1:
        raise ValueError(f"keep_within must be in (0, 1) (a share of the control's mean), got {keep_within}")
    seeds = sorted(set(raise_a) & set(raise_b) & set(keep_a) & set(keep_b))
    ra, rb = (np.array([x[s] for s in seeds], dtype=np.float64) for x in (raise_a, raise_b))
    ka, kb = (np.array([x[s] for s in seeds], dtype=np.float64) for x in (keep_a, keep_b))
    out: dict[str, Any] = {"seeds": seeds, "n_seeds": len(seeds), "min_seeds": min_seeds, "alpha": alpha,
                           "conditional_on": CONDITIONAL_ON_TEST_PROMPTS, "pvalue": None, "reasons": []}
    if len(seeds) < max(min_seeds, 2):
        out.update(verdict="undecided", reasons=[f"{len(seeds)} paired seeds, at least {max(min_seeds, 2)} needed"])
        return out
    t = paired_t(ra, rb)
    margin = keep_within * abs(float(kb.mean()))
    out["raise"] = {"difference": float(ra.mean() - rb.mean()), "mean_control": float(rb.mean()),
                    "pvalue": finite_or_none(t["pvalue"]), "low": finite_or_none(t["low"]),
                    "high": finite_or_none(t["high"])}
    eq = equivalence_tost(ka, kb, margin, paired=True, alpha=alpha) if margin > 0 else {
        "pvalue": None, "equivalent": None, "low": None, "high": None, "note": "the control's mean is 0"}
    out["keep"] = {"difference": float(ka.mean() - kb.mean()), "mean_control": float(kb.mean()),
                   "keep_within": keep_within, "margin": margin, "pvalue": eq["pvalue"],
                   "low": eq["low"], "high": eq["high"]}
    p_raise, p_keep = out["raise"]["pvalue"], eq["pvalue"]
    if p_raise is None or p_keep is None:
        out["verdict"] = "undecided"
        out["reasons"] = [n for n in (t.get("note"), eq.get("note")) if n]
        return out
    raised = p_raise < alpha and out["raise"]["difference"] > 0
    kept = p_keep < alpha
    if not raised:
        out["reasons"].append(f"not raised: difference {out['raise']['difference']:+.4f}, paired t p = {p_raise:.3g}")
    if not kept:
        out["reasons"].append(f"not shown kept within ±{margin:.4f} ({keep_within:.0%} of the control's"
                              f" {kb.mean():.4f}): TOST p = {p_keep:.3g}")
    out["pvalue"] = max(p_raise, p_keep) if out["raise"]["difference"] > 0 else 1.0
    out["verdict"] = "supported" if raised and kept else "not supported"
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


def align_prompts(texts: Sequence[Sequence[str | None]]) -> tuple[list[list[int]], str] | None:
    """Per seed, the indices of the prompts every seed has, in one common order, and how they were matched.

    By prompt text where every seed's rows all have one and none repeats (the prompts all seeds
    have, in the first seed's order); else by position where every seed has as many rows (the
    test split is drawn from the task's own seed, not the run's, so every run seed evaluates the
    same prompts in the same order); None when neither works. What lets the joint bootstrap draw
    one set of prompts for every seed (``hierarchical_bootstrap``).
    """
    texts = [list(t) for t in texts]
    if not texts:
        return None
    if all(None not in t and len(set(t)) == len(t) for t in texts):
        common = set(texts[0]).intersection(*texts[1:])
        order = [t for t in texts[0] if t in common]
        if not order:
            return None
        where = [{t: i for i, t in enumerate(ts)} for ts in texts]
        return [[w[t] for t in order] for w in where], "prompt"
    if texts[0] and all(len(t) == len(texts[0]) for t in texts):
        return [list(range(len(texts[0])))] * len(texts), "position"
    return None


def _draw_counts(rng: np.random.Generator, n_resamples: int, n: int) -> np.ndarray:
    """(R, n) counts of n draws with replacement from n items, one row per resample (a bincount of
    uniform indices: the multinomial draw, an order of magnitude faster than ``rng.multinomial``)."""
    idx = rng.integers(0, n, size=(n_resamples, n)) + n * np.arange(n_resamples)[:, None]
    return np.bincount(idx.ravel(), minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def hierarchical_bootstrap(
    values: Sequence[np.ndarray] | np.ndarray,
    *,
    shared_prompts: bool = True,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Any]:
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
    did, and its interval misses the prompt variance (coverage at a nominal 0.95 on 5 seeds x 256
    shared prompts, tests/unit/test_bootstrap_coverage.py: 0.77 for one model's pass@1 and 0.68
    for a paired difference, where the joint draw gives 0.950 and 0.945).

    ``shared_prompts=False`` (seeds evaluated on different prompts): each drawn seed gets its own
    prompt resample, the two-stage cluster bootstrap (Davison & Hinkley 1997, §3.8), right for
    prompts nested in seeds and only then.

    When the shared interval holds: its resampling variance is mean(r²)/S + mean(c²)/P + mean(e²)/(SP)
    (r, c, e: the array's seed effects, prompt effects and residuals) against the true
    σ_seed²/S + σ_prompt²/P + σ_resid²/(SP). The residual (a seed×prompt interaction, and each
    per-prompt value's own sampling noise from n samples) enters r and c as well, about three times
    in all: conservative where it carries a large share (0.96 for a difference of two binary arms,
    whose per-prompt sampling noise adds up; 0.98 with twice the interaction). The seed
    term's plug-in factor (S − 1)/S and the normal tails of a percentile interval make it narrow
    where few seeds carry most of the variance (5 seeds); there the paired t-interval over seeds
    (``paired_t``, conditional on the test prompts) is the one to read.
    """
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = list(values)
    rows = [np.asarray(v, dtype=np.float64) for v in values]
    if not rows or any(r.ndim != 1 or r.size == 0 for r in rows):
        raise ValueError("values: one non-empty 1-D array of per-prompt values per seed")
    if not all(np.all(np.isfinite(r)) for r in rows):
        raise ValueError("values contain non-finite values")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n_seeds = len(rows)
    if shared_prompts:
        if len({r.size for r in rows}) != 1:
            raise ValueError("shared_prompts needs every seed's values over the same prompts (align_prompts)")
        y = np.stack(rows)  # (S, P)
        n_prompts = y.shape[1]
        # a resample as counts: w_s = draws of seed s, v_i = draws of prompt i; its mean is w Y vᵀ / (S P)
        w = _draw_counts(rng, n_resamples, n_seeds)  # (R, S)
        v = _draw_counts(rng, n_resamples, n_prompts)  # (R, P)
        means = ((w @ y) * v).sum(axis=1) / (n_seeds * n_prompts)
        conditional_on = CONDITIONAL_ON_NOTHING
    else:
        drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # seeds, with replacement
        totals = np.zeros(n_resamples)
        for s, d in enumerate(rows):
            hit = np.nonzero(drawn == s)[0]  # the resample of each draw of seed s
            prompts = rng.integers(0, d.size, size=(hit.size, d.size))  # its own prompts, with replacement
            np.add.at(totals, hit, d[prompts].mean(axis=1))
        means = totals / n_seeds
        n_prompts = [int(r.size) for r in rows]
        conditional_on = CONDITIONAL_ON_SEEDS_PROMPTS_APART
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    out = {"mean": float(np.mean([r.mean() for r in rows])), "low": float(low), "high": float(high),
           "se": float(means.std(ddof=1)), "confidence": confidence, "n_resamples": n_resamples, "seed": seed,
           "n_seeds": n_seeds, "n_prompts": n_prompts, "shared_prompts": shared_prompts,
           "conditional_on": conditional_on}
    if n_seeds == 1:
        out["note"] = "one seed: prompt variation only, no run-to-run variation"
    return out


def _bootstrap_over(per_seed: list[tuple[int, np.ndarray, list[str | None]]]) -> dict[str, Any]:
    """``hierarchical_bootstrap`` of per-seed (seed, values, prompt texts): one prompt draw for all
    seeds where ``align_prompts`` matches their prompts, a draw per seed (and a note) where not."""
    aligned = align_prompts([t for _, _, t in per_seed])
    if aligned is None:
        boot = hierarchical_bootstrap([v for _, v, _ in per_seed], shared_prompts=False)
        return {**boot, "note": "the seeds' prompts cannot be matched: prompts resampled apart per seed"}
    idx, by = aligned
    boot = hierarchical_bootstrap([v[i] for (_, v, _), i in zip(per_seed, idx)], shared_prompts=True)
    return {**boot, "prompts_matched_by": by}


def interval_over_seeds_and_prompts(
    per_seed: list[tuple[int, np.ndarray | None, Sequence[str | None]]],
) -> dict[str, Any]:
    """One model's mean with a bootstrap interval over seeds and the prompts they share.

    ``per_seed``: (seed, the model's values per prompt, their prompt texts). Where the t-interval
    over seeds holds the test prompts fixed, this one resamples them too (``hierarchical_bootstrap``;
    ``conditional_on`` says which). {} when a seed did not record per-prompt values.
    """
    if not per_seed or any(v is None for _, v, _ in per_seed):
        return {}
    return _bootstrap_over([(s, np.asarray(v, dtype=np.float64), list(t)) for s, v, t in per_seed])


def compare_within_seeds(
    per_seed: list[tuple[int, np.ndarray | None, np.ndarray | None, Sequence[str | None], Sequence[str | None]]],
) -> dict[str, Any]:
    """The prompt-level view: per seed the two models paired by prompt; over seeds a bootstrap of the
    differences that resamples seeds and their shared prompts; never one pooled test over seeds x prompts.

    ``per_seed``: (seed, treatment values per prompt, control values per prompt, their prompt
    texts; None values: not recorded, no prompt-level view). Per seed: the values paired by
    prompt (``pair_prompts``), their mean difference and Wilcoxon p (descriptive, not
    Holm-adjusted); over seeds: ``hierarchical_bootstrap`` of the differences, one prompt draw for
    every seed where their prompts match (``align_prompts``). Values are rounded to 12 decimals
    first: pass@k's product carries float noise (~1e-16: equal differences of two prompts' pass@k
    come out unequal), and rank tests must see those ties as ties.
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
        texts = [list(a_texts)[i] for i in ia] if by == "prompt" else [None] * len(ia)
        diffs.append((s, x - y, texts))
    if not diffs:
        return {}
    boot = _bootstrap_over(diffs)
    return {"per_seed": rows, "hierarchical_bootstrap": {"mean_diff": boot.pop("mean"), **boot}}
