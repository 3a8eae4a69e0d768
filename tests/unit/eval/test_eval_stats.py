"""Statistics against scipy and statsmodels, effect sizes against hand values and brute force, Holm by
hand and against a float64 loop, the exact signed-rank p against an enumeration of every sign flip,
TOST against its two one-sided scipy t-tests, the seeds-and-prompts bootstrap's standard error
against the closed form of its resampling (its coverage: test_bootstrap_coverage.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from polyray.eval.stats import (
    CONDITIONAL_ON_NOTHING,
    CONDITIONAL_ON_TEST_PROMPTS,
    BootstrapInterval,
    Equivalence,
    HierarchicalInterval,
    HolmResult,
    Interval,
    NonInferiority,
    TestResult,
    TTestResult,
    align_prompts,
    bootstrap_ci,
    cliffs_delta,
    cohens_d,
    cohens_dz,
    compare_many,
    compare_models,
    compare_over_seeds,
    compare_within_seeds,
    equivalence_tost,
    hierarchical_bootstrap,
    holm,
    holm_families,
    interval_over_seeds,
    interval_over_seeds_and_prompts,
    mann_whitney,
    mean_ci,
    noninferiority_paired,
    pair_prompts,
    paired_t,
    welch_t,
    wilcoxon,
)

A = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52, 0.63, 0.68])
B = np.array([0.50, 0.57, 0.60, 0.41, 0.58, 0.49, 0.66, 0.47, 0.51, 0.60])


def _rank_sum_p(a, b) -> float:
    """Two-sided exact Mann-Whitney p by enumerating every split of the pooled values (ties at their
    average rank): 2 x the smaller tail of a's rank sum."""
    pooled = np.concatenate([a, b])
    ranks = st.rankdata(pooled)
    n = len(a)
    obs = ranks[:n].sum()
    null = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(pooled.size), n)])
    return min(1.0, 2 * min(np.mean(null <= obs + 1e-9), np.mean(null >= obs - 1e-9)))


def test_tests_agree_with_scipy_and_with_enumeration():
    t = st.ttest_rel(A, B)
    out = paired_t(A, B)
    assert isinstance(out, TTestResult) and out.df == 9
    assert out.statistic == pytest.approx(t.statistic) and out.pvalue == pytest.approx(t.pvalue)
    assert (out.low, out.high) == pytest.approx(tuple(t.confidence_interval(0.95)))
    # A - B has tied |d| (0.12 twice, 0.08 twice): the exact permutation over all 2^10 sign flips
    out = wilcoxon(A, B)
    assert out.method == "exact permutation" and out.pvalue == pytest.approx(_signed_rank_p(np.round(A - B, 12)))
    assert out.statistic == pytest.approx(st.wilcoxon(A, B).statistic)
    # no ties: scipy's exact U distribution (one side <= 8), asymptotic beyond
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, 6), rng.normal(0.5, 1, 7)
    out = mann_whitney(x, y)
    ref = st.mannwhitneyu(x, y, alternative="two-sided", method="exact")
    assert out.method == "exact" and (out.statistic, out.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
    assert out.pvalue == pytest.approx(_rank_sum_p(x, y))
    x, y = rng.normal(0, 1, 12), rng.normal(0.5, 1, 15)
    assert mann_whitney(x, y).pvalue == pytest.approx(st.mannwhitneyu(x, y, method="asymptotic").pvalue)
    # ties, 3 vs 3: every split enumerated, never below the exact minimum 2/20 (the normal approximation is)
    out = mann_whitney([1.0, 2.0, 2.0], [3.0, 3.0, 4.0])
    assert out.method == "exact permutation" and out.pvalue == pytest.approx(_rank_sum_p([1, 2, 2], [3, 3, 4])) == 0.1
    assert st.mannwhitneyu([1.0, 2.0, 2.0], [3.0, 3.0, 4.0]).pvalue < 0.1
    # ties, 10 vs 10 (C(20, 10) splits, past enumeration): the tie-corrected normal approximation, near the enumeration
    out = mann_whitney(A, B)
    ref = st.mannwhitneyu(A, B, alternative="two-sided", method="asymptotic")
    assert out.method == "asymptotic" and (out.statistic, out.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
    assert out.pvalue == pytest.approx(_rank_sum_p(A, B), abs=0.02)


def test_cohens_d_hand_values():
    # a = [1, 2, 3], b = [3, 4, 5]: means 2 and 4, both sample SDs 1 -> pooled 1 -> d = -2.
    assert cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    # unequal sizes: a=[0, 2] (var 2), b=[1, 2, 3] (var 1): pooled var = (1*2 + 2*1)/3 = 4/3.
    assert cohens_d([0, 2], [1, 2, 3]) == pytest.approx((1 - 2) / math.sqrt(4 / 3))
    assert cohens_d([1, 1], [1, 1]) == 0.0
    assert cohens_d([2, 2], [1, 1]) == math.inf
    # d_z: differences [1, 2, 3] -> mean 2, sd 1.
    assert cohens_dz([2, 4, 6], [1, 2, 3]) == pytest.approx(2.0)
    # a constant difference up to float noise (0.71 - 0.31 != 0.70 - 0.30) is constant: inf, not ~1e15
    assert cohens_dz([0.70, 0.71, 0.72], [0.30, 0.31, 0.32]) == math.inf


def _cliffs_brute(a, b):
    s = 0
    for x in a:
        for y in b:
            s += int(x > y) - int(x < y)
    return s / (len(a) * len(b))


def test_cliffs_delta_against_double_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=rng.integers(1, 15)).astype(float)  # ties on purpose
        b = rng.integers(0, 5, size=rng.integers(1, 15)).astype(float)
        assert cliffs_delta(a, b) == pytest.approx(_cliffs_brute(a, b), abs=1e-12)
    assert cliffs_delta([3, 4], [1, 2]) == 1.0
    assert cliffs_delta([1, 2], [3, 4]) == -1.0


def test_identical_models_give_no_difference():
    out = compare_models(A, A.copy(), paired=True, n_resamples=2000)
    assert out["conditional_on"] == "the models compared (prompts resampled)"
    assert out["mann_whitney"]["pvalue"] == pytest.approx(1.0)
    assert out["wilcoxon"]["pvalue"] == 1.0 and "zero" in out["wilcoxon"]["note"]
    assert out["paired_t"]["pvalue"] == 1.0 and "zero" in out["paired_t"]["note"]
    assert out["cohens_d"] == pytest.approx(0.0) and out["cohens_dz"] == 0.0
    assert out["cliffs_delta"] == 0.0
    assert out["bootstrap_ci"]["low"] == out["bootstrap_ci"]["high"] == 0.0
    unpaired = compare_models(A, A.copy(), paired=False, n_resamples=2000)
    assert unpaired["mann_whitney"]["pvalue"] == pytest.approx(1.0)
    assert unpaired["cohens_d"] == pytest.approx(0.0)
    assert unpaired["bootstrap_ci"]["low"] <= 0.0 <= unpaired["bootstrap_ci"]["high"]
    # all values equal (e.g. every prompt solved by both)
    assert mann_whitney(np.ones(5), np.ones(7)).pvalue == 1.0


def test_holm_hand_worked_example():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005, 0.01, 0.03, 0.04
    # scaled: 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, 1*0.04=0.04 -> running max: 0.02, 0.03, 0.06, 0.06
    out = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(out.adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_array_equal(out.reject, [True, False, False, True])
    # capped at 1, and the step-down stops at the first non-rejection
    out = holm([0.5, 0.3, 0.012], alpha=0.05)
    np.testing.assert_allclose(out.adjusted, [0.6, 0.6, 0.036])
    np.testing.assert_allclose(holm([0.9, 0.8]).adjusted, [1.0, 1.0])
    with pytest.raises(ValueError, match="pvalues"):
        holm([0.1, 1.5])


def _holm_loop(p: list[float]) -> list[float]:
    """Holm's adjusted p by its definition, one float64 at a time: p~_i = max over the j sorted at or
    before i of min(1, (m - rank_j + 1) p_j)."""
    m = len(p)
    order = sorted(range(m), key=lambda j: (p[j], j))
    adjusted = [0.0] * m
    for rank_i, i in enumerate(order, start=1):
        best = 0.0
        for rank_j, j in enumerate(order[:rank_i], start=1):
            best = max(best, min(1.0, (m - rank_j + 1) * p[j]))
        adjusted[i] = best
    return adjusted


def test_holm_against_a_float64_loop_on_random_pvalues():
    rng = np.random.default_rng(11)
    for m in (1, 2, 3, 7, 20, 50):
        for _ in range(5):
            p = rng.random(m) ** rng.uniform(0.5, 4)  # many small p-values, some near 1
            if m > 3:
                p[1] = p[2]  # a tie
            out = holm(p, alpha=0.05)
            expected = _holm_loop(list(map(float, p)))
            np.testing.assert_allclose(out.adjusted, expected, rtol=0, atol=1e-15)
            np.testing.assert_array_equal(out.reject, np.array(expected) <= 0.05)
    assert holm([]) == HolmResult((), ())


def test_holm_families_skip_undefined_tests():
    entries = [{"welch_p": 0.01, "mw_p": 0.2}, {"welch_p": None, "mw_p": 0.5}, {"welch_p": 0.04, "mw_p": 0.1}]
    sizes = holm_families(entries, ("welch_p", "mw_p"))
    assert sizes == {"welch_p": 2, "mw_p": 3}
    assert [e["welch_p_holm"] for e in entries] == pytest.approx([0.02, None, 0.04])
    assert [e["mw_p_holm"] for e in entries] == pytest.approx(_holm_loop([0.2, 0.5, 0.1]))


def test_interval_over_seeds_is_json_safe():
    x = [0.41, 0.45, 0.39]
    assert interval_over_seeds(x) == {
        **{k: pytest.approx(getattr(mean_ci(x), k)) for k in ("mean", "low", "high")},
        "n": 3,
    }
    assert interval_over_seeds([0.4]) == {"mean": 0.4, "low": None, "high": None, "n": 1}


def test_prompt_pairing_falls_back_to_position_only_without_distinct_texts():
    assert pair_prompts(["p", "q"], ["q", "p"]) == ([0, 1], [1, 0], "prompt")
    assert pair_prompts(["p", "q"], ["r"]) is None
    assert pair_prompts([None, None], [None, None]) == ([0, 1], [0, 1], "position")
    assert pair_prompts([None, None], [None]) is None
    assert pair_prompts(["p", "p"], ["p", "p"]) == ([0, 1], [0, 1], "position")


def test_hierarchical_bootstrap_reproducible_and_its_standard_error():
    rng = np.random.default_rng(7)
    # 3 seeds x the same 40 prompts: a seed effect, a prompt effect shared by the seeds, noise
    y = rng.normal(0, 0.05, (3, 1)) + rng.normal(0.1, 0.2, (1, 40)) + rng.normal(0, 0.1, (3, 40))
    assert hierarchical_bootstrap(y, seed=3) == hierarchical_bootstrap(list(y), seed=3)
    assert hierarchical_bootstrap(y, seed=3) != hierarchical_bootstrap(y, seed=4)
    # Closed form of the joint resampling: the mean of drawn seeds x drawn prompts is
    # m + mean r_s* + mean c_i* + mean e_s*i*, three uncorrelated terms (r, c, e: the array's seed
    # effects, prompt effects and residuals), so Var = mean r^2 / S + mean c^2 / P + mean e^2 / (S P).
    S, P = y.shape
    m = sum(float(v) for v in y.ravel()) / (S * P)
    r = [sum(float(v) for v in row) / P - m for row in y]
    c = [sum(float(y[s, i]) for s in range(S)) / S - m for i in range(P)]
    e = [float(y[s, i]) - m - r[s] - c[i] for s in range(S) for i in range(P)]
    var = sum(x * x for x in r) / S / S + sum(x * x for x in c) / P / P + sum(x * x for x in e) / (S * P) / (S * P)
    out = hierarchical_bootstrap(y, n_resamples=40_000, seed=0)
    assert isinstance(out, HierarchicalInterval) and out.se == pytest.approx(math.sqrt(var), rel=0.02)
    assert out.mean == pytest.approx(m) and out.shared_prompts and out.conditional_on == CONDITIONAL_ON_NOTHING
    assert out.low < m < out.high and out.n_prompts == 40

    # Prompts apart per seed (seeds on different prompts): each of the S slots draws a seed s
    # uniformly, then the mean of P_s prompts of it, so Var = [mean_s (m_s - m)^2 + mean_s var_s / P_s] / S.
    diffs = [rng.normal(mu, sd, size=n) for mu, sd, n in ((0.05, 0.2, 30), (0.15, 0.1, 50), (-0.02, 0.3, 40))]
    means = [float(d.mean()) for d in diffs]
    m = sum(means) / 3
    between = sum((ms - m) ** 2 for ms in means) / 3
    within = sum(sum((v - ms) ** 2 for v in d) / d.size / d.size for d, ms in zip(diffs, means)) / 3
    out = hierarchical_bootstrap(diffs, shared_prompts=False, n_resamples=20_000, seed=0)
    assert out.se == pytest.approx(math.sqrt((between + within) / 3), rel=0.03) and out.n_prompts == (30, 50, 40)
    one = hierarchical_bootstrap(diffs[:1], n_resamples=20_000, seed=0)  # one seed: prompts only
    assert one.se == pytest.approx(float(diffs[0].std()) / math.sqrt(30), rel=0.03) and "one seed" in one.note
    with pytest.raises(ValueError, match="same prompts"):
        hierarchical_bootstrap(diffs)  # shared prompts need as many prompts per seed


def test_shared_prompts_widen_the_interval_the_old_scheme_made_too_narrow():
    # 5 seeds x the same 64 prompts whose effect dominates: drawn apart per seed, a prompt's effect
    # averages out over the seeds as if each seed had its own prompts; drawn once, it does not.
    rng = np.random.default_rng(1)
    y = rng.normal(0, 0.01, (5, 1)) + rng.normal(0, 0.3, (1, 64)) + rng.normal(0, 0.05, (5, 64))
    joint = hierarchical_bootstrap(y, n_resamples=5000)
    apart = hierarchical_bootstrap(y, shared_prompts=False, n_resamples=5000)
    assert joint.se > 1.8 * apart.se
    assert joint.se == pytest.approx(float(y.mean(axis=0).std()) / 8, rel=0.1)  # ~ sd of prompt means / sqrt(P)


def test_align_prompts_across_seeds():
    assert align_prompts([["p", "q", "r"], ["r", "p", "q"], ["q", "p", "s", "r"]]) == (
        [[0, 1, 2], [1, 2, 0], [1, 0, 3]],
        "prompt",
    )
    assert align_prompts([["p"], ["q"]]) is None
    assert align_prompts([[None, None], [None, None]]) == ([[0, 1], [0, 1]], "position")
    assert align_prompts([[None, None], [None]]) is None


def test_within_seed_view_draws_one_prompt_set_for_every_seed():
    rng = np.random.default_rng(4)
    texts = [f"prompt {i}" for i in range(30)]
    base = rng.random(30)
    per_seed = []
    for s in range(4):
        order = rng.permutation(30)  # each seed stores its rows in its own order: matched by text
        treat, ctrl = base + 0.1 + rng.normal(0, 0.05, 30), base
        per_seed.append((s, treat[order], ctrl[order], [texts[i] for i in order], [texts[i] for i in order]))
    out = compare_within_seeds(per_seed)
    boot = out["hierarchical_bootstrap"]
    assert boot["shared_prompts"] and boot["prompts_matched_by"] == "prompt" and boot["n_prompts"] == 30
    # by hand: every seed's differences in seed 0's prompt order
    first = per_seed[0][3]
    aligned = np.stack(
        [
            np.round(t, 12)[[tx.index(x) for x in first]] - np.round(c, 12)[[tx.index(x) for x in first]]
            for _, t, c, tx, _ in per_seed
        ]
    )
    ref = hierarchical_bootstrap(aligned).to_json()
    assert boot == {"mean_diff": pytest.approx(ref.pop("mean")), **ref, "prompts_matched_by": "prompt"}
    # one model over seeds and prompts: the same bootstrap on its values
    one = interval_over_seeds_and_prompts([(s, t, tx) for s, t, _, tx, _ in per_seed])
    assert one["conditional_on"] == CONDITIONAL_ON_NOTHING and one["low"] < one["mean"] < one["high"]
    assert interval_over_seeds_and_prompts([(0, None, [])]) == {}
    # seeds on different prompts: drawn apart per seed, and said so
    apart = compare_within_seeds(
        [
            (0, [0.5, 0.2], [0.1, 0.1], ["a", "b"], ["a", "b"]),
            (1, [0.5, 0.2, 0.3], [0.1, 0.1, 0.0], ["c", "d", "e"], ["c", "d", "e"]),
        ]
    )
    assert not apart["hierarchical_bootstrap"]["shared_prompts"] and "apart" in apart["hierarchical_bootstrap"]["note"]


# --------------------------------------------------------------------------- over seeds: paired design

SEED_A = np.array([0.412, 0.455, 0.391, 0.470, 0.438])  # treatment, seeds 0..4
SEED_B = np.array([0.371, 0.430, 0.362, 0.425, 0.410])  # control, same seeds


def test_paired_t_over_seeds_against_scipy():
    out = paired_t(SEED_A, SEED_B)
    ref = st.ttest_rel(SEED_A, SEED_B)
    d = SEED_A - SEED_B
    half = st.t.ppf(0.975, df=4) * d.std(ddof=1) / math.sqrt(5)  # mean d ± t_4 sd/sqrt(n), by hand
    assert out.statistic == pytest.approx(ref.statistic) and out.pvalue == pytest.approx(ref.pvalue)
    assert out.df == 4 and (out.low, out.high) == pytest.approx((d.mean() - half, d.mean() + half))
    # constant differences (up to float noise: 0.71 - 0.31 != 0.70 - 0.30): undefined, not p = 0
    const = paired_t([0.70, 0.71, 0.72], [0.30, 0.31, 0.32])
    assert const.pvalue is None and const.statistic is None and "constant" in const.note
    assert paired_t([0.3, 0.4], [0.3, 0.4]).pvalue == 1.0
    assert paired_t([0.3], [0.2]).pvalue is None


def _signed_rank_p(d) -> float:
    """Two-sided exact signed-rank p by enumerating every sign flip (zeros dropped, tied |d| given
    their average rank): 2 x the smaller tail of T+ = sum of the positive differences' ranks."""
    d = [x for x in d if x != 0]
    ranks = st.rankdata([abs(x) for x in d])
    obs = sum(r for r, x in zip(ranks, d) if x > 0)
    null = [sum(r for r, pos in zip(ranks, signs) if pos) for signs in itertools.product((0, 1), repeat=len(d))]
    low = sum(t <= obs + 1e-9 for t in null) / len(null)
    high = sum(t >= obs - 1e-9 for t in null) / len(null)
    return min(1.0, 2 * min(low, high))


def test_wilcoxon_over_seeds_is_exact_and_states_its_floor():
    out = wilcoxon(SEED_A, SEED_B)
    assert out.pvalue == pytest.approx(st.wilcoxon(SEED_A, SEED_B).pvalue) == pytest.approx(0.0625)
    assert out.pvalue == pytest.approx(_signed_rank_p(SEED_A - SEED_B)) and out.method == "exact"
    # 5 seeds all one way: the smallest p the test has, 2 / 2^5, which cannot reject at 0.05
    assert out.min_pvalue == 0.0625 and "cannot reject" in out.note
    # ties and a zero: exact over every sign flip, not the normal approximation
    tied = [0.02, -0.02, 0.03, 0.0, 0.05, 0.02]
    out = wilcoxon(tied, [0.0] * 6)
    assert out.method == "exact permutation" and out.min_pvalue == 2 / 2**5
    assert out.pvalue == pytest.approx(_signed_rank_p(tied))
    rng = np.random.default_rng(5)
    for _ in range(20):
        d = np.round(rng.normal(0.01, 0.02, rng.integers(3, 9)), 2)  # ties and zeros on purpose
        if np.any(d != 0):
            assert wilcoxon(d, np.zeros(d.size)).pvalue == pytest.approx(_signed_rank_p(d))
    # many zeros beside few non-zero differences (prompts both models solve alike): still every flip of the
    # 12 that count, so exact and the same on every call, where 2^20 flips with the zeros would not enumerate
    d = np.array([0.0] * 8 + [0.05, 0.1, 0.05, 0.15, 0.1, -0.05, 0.05, 0.2, 0.1, 0.05, 0.15, 0.1])
    out = wilcoxon(d, np.zeros(d.size))
    assert out.method == "exact permutation" and out.pvalue == pytest.approx(_signed_rank_p(d), rel=1e-9)
    assert wilcoxon(d, np.zeros(d.size)) == out
    # past enumeration (ties among 16 non-zero differences): scipy's tie-corrected normal approximation
    wide = np.round(np.tile([0.05, 0.1, -0.05, 0.15], 4), 2)
    ref = st.wilcoxon(wide, method="asymptotic")
    assert wilcoxon(wide, np.zeros(wide.size)).pvalue == pytest.approx(ref.pvalue)


def test_tost_against_statsmodels_and_two_one_sided_scipy_tests():
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired

    for margin in (0.01, 0.03, 0.05):
        out = equivalence_tost(SEED_A, SEED_B, margin, paired=True)
        assert out.pvalue == pytest.approx(ttost_paired(SEED_A, SEED_B, -margin, margin)[0])
        d = SEED_A - SEED_B
        lower = st.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = st.ttest_1samp(d, margin, alternative="less").pvalue
        assert out.pvalue == pytest.approx(max(lower, upper))
        unpaired = equivalence_tost(SEED_A, SEED_B, margin, paired=False)
        assert unpaired.pvalue == pytest.approx(ttost_ind(SEED_A, SEED_B, -margin, margin, usevar="unequal")[0])
    # equivalent iff the 90% interval lies inside the margin
    rng = np.random.default_rng(3)
    for _ in range(30):
        a, b = rng.normal(0.4, 0.02, 5), rng.normal(0.4, 0.02, 5)
        for paired in (True, False):
            out = equivalence_tost(a, b, 0.02, paired=paired)
            assert out.equivalent == (-0.02 < out.low and out.high < 0.02)
    lo, hi = st.ttest_rel(SEED_A, SEED_B).confidence_interval(0.90)
    assert equivalence_tost(SEED_A, SEED_B, 0.05, paired=True).low == pytest.approx(lo)
    assert equivalence_tost(SEED_A, SEED_B, 0.05, paired=True).equivalent is bool(hi < 0.05)
    assert equivalence_tost([0.4, 0.4], [0.4, 0.4], 0.01, paired=True).pvalue is None
    with pytest.raises(ValueError, match="margin"):
        equivalence_tost(SEED_A, SEED_B, 0.0, paired=True)


def test_noninferiority_against_statsmodels_and_its_one_sided_bound():
    from statsmodels.stats.weightstats import DescrStatsW

    d = SEED_A - SEED_B
    for margin in (0.005, 0.02, 0.05):
        out = noninferiority_paired(SEED_A, SEED_B, margin)
        assert out.pvalue == pytest.approx(DescrStatsW(d).ttest_mean(-margin, alternative="larger")[1])
        assert out.mean == pytest.approx(d.mean())
    # a float64 loop for the one-sided 95% lower bound: mean - t_{0.95, n-1} * sd / sqrt(n)
    n = len(d)
    mean = sum(float(x) for x in d) / n
    sd = (sum((float(x) - mean) ** 2 for x in d) / (n - 1)) ** 0.5
    assert noninferiority_paired(SEED_A, SEED_B, 0.02).low == pytest.approx(mean - st.t.ppf(0.95, n - 1) * sd / n**0.5)
    # non-inferior iff the lower bound clears -margin; a worse a is not non-inferior at a small margin
    rng = np.random.default_rng(4)
    for _ in range(30):
        a, b = rng.normal(0.4, 0.02, 6), rng.normal(0.4, 0.02, 6)
        out = noninferiority_paired(a, b, 0.02)
        assert out.noninferior == (out.low > -0.02)
    assert noninferiority_paired(B, A, 0.01).noninferior is False  # B is below A by ~0.07
    assert noninferiority_paired([0.4, 0.5], [0.4, 0.5], 0.01).pvalue is None
    with pytest.raises(ValueError, match="margin"):
        noninferiority_paired(SEED_A, SEED_B, 0.0)


def test_compare_over_seeds_pairs_by_seed_id_and_is_unpaired_otherwise():
    # seeds given out of order on one side: matched by id, not position
    perm = [3, 0, 4, 1, 2]
    out = compare_over_seeds(SEED_A[perm], SEED_B, seeds_a=perm, seeds_b=range(5))
    assert out["design"] == "paired" and out["seeds"] == [0, 1, 2, 3, 4]
    assert out["conditional_on"] == CONDITIONAL_ON_TEST_PROMPTS
    assert out["paired_t"]["pvalue"] == pytest.approx(st.ttest_rel(SEED_A, SEED_B).pvalue)
    assert out["wilcoxon"]["pvalue"] == pytest.approx(st.wilcoxon(SEED_A, SEED_B).pvalue)
    assert out["cohens_dz"] == pytest.approx(cohens_dz(SEED_A, SEED_B))
    assert out["equivalence"]["method"] == "TOST paired t" and "welch_t" not in out
    assert compare_over_seeds(dict(zip(perm, SEED_A[perm])), dict(enumerate(SEED_B))) == out  # {seed: value} too
    assert st.ttest_rel(SEED_A[perm], SEED_B).pvalue != pytest.approx(out["paired_t"]["pvalue"])
    # different seeds (or none given): Welch and Mann-Whitney
    for kwargs in ({"seeds_a": range(5), "seeds_b": range(5, 10)}, {}):
        out = compare_over_seeds(SEED_A, SEED_B, **kwargs)
        assert out["design"] == "unpaired" and "paired_t" not in out and "wilcoxon" not in out
        assert out["welch_t"]["pvalue"] == pytest.approx(st.ttest_ind(SEED_A, SEED_B, equal_var=False).pvalue)
        assert out["mann_whitney"]["pvalue"] == pytest.approx(st.mannwhitneyu(SEED_A, SEED_B).pvalue)
        assert out["equivalence"]["method"] == "TOST Welch t"
    assert "different seeds" in compare_over_seeds(SEED_A, SEED_B, seeds_a=range(5), seeds_b=range(5, 10))["note"]
    assert "equivalence" not in compare_over_seeds(SEED_A, SEED_B, margin=None)
    with pytest.raises(ValueError, match="seed ids"):
        compare_over_seeds(SEED_A, SEED_B, seeds_a=[0, 0, 1, 2, 3], seeds_b=range(5))


def test_pairing_by_seed_narrows_the_interval_when_the_seed_moves_both_models():
    # a seed's start (SFT adapter, prompts, sampling) moves both of its models: the shared part
    # is seed-to-seed noise for Welch, and cancels in the per-seed difference
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(200):
        seed_effect = rng.normal(0, 0.02, 5)
        a = 0.40 + seed_effect + rng.normal(0, 0.006, 5)
        b = 0.39 + seed_effect + rng.normal(0, 0.006, 5)
        p, w = paired_t(a, b), welch_t(a, b)
        ratios.append((w.high - w.low) / (p.high - p.low))
    assert np.median(ratios) > 2


def test_bootstrap_ci_contains_true_difference():
    rng = np.random.default_rng(7)
    a = rng.normal(1.0, 1.0, size=200)
    b = rng.normal(0.5, 1.0, size=200)
    ci = bootstrap_ci(a, b, paired=False, n_resamples=10_000, seed=1)
    assert ci.low < 0.5 < ci.high
    assert ci.n_resamples == 10_000 and ci.method == "BCa"
    # seeded: reproducible
    assert bootstrap_ci(a, b, paired=False, n_resamples=10_000, seed=1) == ci
    # paired: same as scipy on the differences
    pci = bootstrap_ci(a, b, paired=True, n_resamples=10_000, seed=1)
    ref = st.bootstrap((a - b,), np.mean, n_resamples=10_000, rng=np.random.default_rng(1))
    assert pci.low == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert pci.high == pytest.approx(ref.confidence_interval.high, rel=1e-9)


def test_mean_ci_matches_t_interval():
    x = [0.41, 0.45, 0.39, 0.47, 0.44]
    out = mean_ci(x)
    lo, hi = st.t.interval(0.95, df=4, loc=np.mean(x), scale=st.sem(x))
    assert out.low == pytest.approx(lo) and out.high == pytest.approx(hi)
    assert out.n == 5 and out.half_width == pytest.approx(hi - out.mean)
    assert math.isnan(mean_ci([0.4]).half_width)


def test_compare_many_applies_holm():
    rng = np.random.default_rng(3)
    base = rng.normal(size=30)
    pairs = {"big": (base + 1.0 + rng.normal(0, 0.1, 30), base), "none": (base + rng.normal(0, 0.1, 30), base)}
    out = compare_many(pairs, paired=True, n_resamples=1000)
    assert out["big"]["reject_holm"] and out["big"]["pvalue_holm"] < 1e-3
    raw = [out["big"]["primary_pvalue"], out["none"]["primary_pvalue"]]
    np.testing.assert_allclose([out["big"]["pvalue_holm"], out["none"]["pvalue_holm"]], holm(raw).adjusted)


def test_validation_errors():
    with pytest.raises(ValueError, match="paired data"):
        compare_models([1, 2, 3], [1, 2], paired=True)
    with pytest.raises(ValueError, match="non-finite"):
        mann_whitney([1, np.nan], [1, 2])


# --------------------------------------------------------------------------- one answer on degenerate input


def _assert_undefined(result: dict) -> None:
    """A test the data leave undefined: no p-value (None, not 0 or 1) and a note saying why."""
    assert result["pvalue"] is None, f"undefined test answered p = {result['pvalue']}"
    assert result["statistic"] is None and result.get("note")


def test_the_undefined_check_fails_on_a_p_of_zero():
    # what compute_paired_t answered over prompts before the API was one: p = 0 on a constant difference
    with pytest.raises(AssertionError, match="p = 0.0"):
        _assert_undefined({"statistic": math.inf, "pvalue": 0.0, "df": 9, "note": "constant"})
    with pytest.raises(AssertionError):
        _assert_undefined({"statistic": None, "pvalue": None})  # no note


def test_over_prompts_and_over_seeds_answer_a_constant_difference_alike():
    # a constant non-zero difference, exact (A + 0.1 - A is float noise away from 0.1) and in float noise
    for a, b in ((A + 0.1, A), (np.array([0.70, 0.71, 0.72]), np.array([0.30, 0.31, 0.32]))):
        direct = paired_t(a, b).to_json()
        prompts = compare_models(a, b, paired=True, n_resamples=200)["paired_t"]
        seeds = compare_over_seeds(dict(enumerate(a)), dict(enumerate(b)))["paired_t"]
        for out in (direct, prompts, seeds):
            _assert_undefined(out)
            assert "constant" in out["note"] and out["df"] == a.size - 1 and out["low"] is None
        assert prompts == seeds == direct
        # the rank test is defined: every difference one sign, the smallest p its n allows
        w_prompts = compare_models(a, b, paired=True, n_resamples=200)["wilcoxon"]
        w_seeds = compare_over_seeds(dict(enumerate(a)), dict(enumerate(b)))["wilcoxon"]
        assert w_prompts == w_seeds and w_seeds["pvalue"] == pytest.approx(2 / 2**a.size)
        assert equivalence_tost(a, b, 0.01, paired=True).pvalue is None
        assert noninferiority_paired(a, b, 0.01).pvalue is None
    # no spread on either side, means apart: Welch's t is undefined as well
    _assert_undefined(welch_t([0.5, 0.5, 0.5], [0.2, 0.2]).to_json())
    _assert_undefined(compare_over_seeds([0.5, 0.5, 0.5], [0.2, 0.2])["welch_t"])
    # one value: no t-test
    _assert_undefined(paired_t([0.3], [0.2]).to_json())
    _assert_undefined(welch_t([0.3], [0.2, 0.4]).to_json())


def test_over_prompts_and_over_seeds_answer_all_zero_differences_with_p_one():
    a = np.array([0.2, 0.5, 0.5, 0.9])
    prompts = compare_models(a, a.copy(), paired=True, n_resamples=200)
    seeds = compare_over_seeds(dict(enumerate(a)), dict(enumerate(a)))
    for key in ("paired_t", "wilcoxon"):
        assert prompts[key] == seeds[key]
        assert prompts[key]["pvalue"] == 1.0 and prompts[key]["statistic"] == 0.0 and "zero" in prompts[key]["note"]
    assert seeds["paired_t"]["low"] == seeds["paired_t"]["high"] == 0.0
    assert mann_whitney(np.ones(3), np.ones(3)).pvalue == 1.0 and welch_t([0.4, 0.4], [0.4, 0.4]).pvalue == 1.0
    # float noise of zero (0.3 - 0.1 - 0.2 != 0) is still zero
    assert paired_t([0.3 - 0.1, 0.5], [0.2, 0.5]).pvalue == 1.0 and wilcoxon([0.3 - 0.1], [0.2]).pvalue == 1.0


# --------------------------------------------------------------------------- typed results and their JSON


def test_every_result_type_gives_json_with_none_for_nan_and_inf():
    import json

    results = [
        TestResult(math.inf, math.nan, method="exact", min_pvalue=0.25),
        TTestResult(-math.inf, 0.5, df=3, low=math.nan, high=math.inf),
        Interval(0.4, math.nan, math.nan, math.nan, 1),
        BootstrapInterval(0.1, math.nan, math.inf, 0.95, 100, 0, "failed"),
        HierarchicalInterval(0.1, -math.inf, math.nan, math.nan, 0.95, 100, 0, 2, (3, 4), False, "x"),
        Equivalence(0.01, 0.05, 0.9, "TOST paired t", math.nan, None, -math.inf, math.inf),
        NonInferiority(0.02, 0.05, "one-sided paired t", math.nan, math.inf, None, math.nan),
        HolmResult((math.nan, 0.5), (False, True)),
    ]
    for r in results:
        out = r.to_json()
        json.dumps(out, allow_nan=False)  # strict JSON: raises on a NaN or inf left in
        floats = [v for v in out.values() if isinstance(v, float)] + [
            x for v in out.values() if isinstance(v, list) for x in v if isinstance(x, float)
        ]
        assert all(math.isfinite(x) for x in floats), (type(r).__name__, out)
        with pytest.raises(ValueError):  # the raw fields would not have been strict JSON
            json.dumps({k: getattr(r, k) for k in out}, allow_nan=False)
    assert results[1].to_json() == {"statistic": None, "pvalue": 0.5, "df": 3, "low": None, "high": None}
    assert results[2].to_json() == {"mean": 0.4, "low": None, "high": None, "half_width": None, "n": 1}
    assert results[4].to_json()["n_prompts"] == [3, 4] and results[7].to_json() == {
        "adjusted": [None, 0.5],
        "reject": [False, True],
    }


def test_result_json_keeps_the_keys_of_the_reports():
    # the keys results.json and experiment.json have always had (note only when there is one)
    assert set(paired_t(SEED_A, SEED_B).to_json()) == {"statistic", "pvalue", "df", "low", "high"}
    assert set(welch_t(SEED_A, SEED_B).to_json()) == {"statistic", "pvalue", "df", "low", "high"}
    assert set(wilcoxon(A, B).to_json()) == {"statistic", "pvalue", "method", "min_pvalue"}
    assert set(mann_whitney(SEED_A, SEED_B).to_json()) == {"statistic", "pvalue", "method"}
    assert set(mean_ci(SEED_A).to_json()) == {"mean", "low", "high", "half_width", "n"}
    assert set(equivalence_tost(SEED_A, SEED_B, paired=True).to_json()) == {
        "margin",
        "alpha",
        "confidence",
        "method",
        "pvalue",
        "equivalent",
        "low",
        "high",
    }
    assert set(noninferiority_paired(SEED_A, SEED_B, 0.02).to_json()) == {
        "margin",
        "alpha",
        "method",
        "mean",
        "pvalue",
        "noninferior",
        "low",
    }
    assert set(bootstrap_ci(A, B, paired=True, n_resamples=200).to_json()) == {
        "mean_diff",
        "low",
        "high",
        "confidence",
        "n_resamples",
        "seed",
        "method",
    }
    assert set(hierarchical_bootstrap(np.stack([A, B]), n_resamples=200).to_json()) == {
        "mean",
        "low",
        "high",
        "se",
        "confidence",
        "n_resamples",
        "seed",
        "n_seeds",
        "n_prompts",
        "shared_prompts",
        "conditional_on",
    }
    assert "note" in paired_t([0.3], [0.2]).to_json() and "note" in wilcoxon(A, A).to_json()
    # compare_models is JSON already: an undefined effect size is None, not inf
    out = compare_models([0.5, 0.5, 0.5], [0.2, 0.2, 0.2], paired=True, n_resamples=200)
    assert out["cohens_d"] is None and out["cohens_dz"] is None and out["cliffs_delta"] == 1.0
    import json

    json.dumps(out, allow_nan=False)
