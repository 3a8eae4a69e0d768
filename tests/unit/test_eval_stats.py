"""Statistics against scipy, effect sizes against hand values and brute force, Holm by hand and
against a float64 loop, the hierarchical bootstrap's standard error against its closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from polyray.eval.stats import (
    compare_many,
    compare_models,
    compute_bootstrap_ci,
    compute_cliffs_delta,
    compute_cohens_d,
    compute_cohens_dz,
    compute_holm,
    compute_mann_whitney,
    compute_paired_t,
    compute_wilcoxon,
    hierarchical_bootstrap,
    holm_families,
    interval_over_seeds,
    mean_ci,
    pair_prompts,
)

A = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52, 0.63, 0.68])
B = np.array([0.50, 0.57, 0.60, 0.41, 0.58, 0.49, 0.66, 0.47, 0.51, 0.60])


def test_wrappers_agree_with_scipy():
    mw = st.mannwhitneyu(A, B, alternative="two-sided")
    assert compute_mann_whitney(A, B) == {"statistic": pytest.approx(mw.statistic), "pvalue": pytest.approx(mw.pvalue)}
    t = st.ttest_rel(A, B)
    out = compute_paired_t(A, B)
    assert out["statistic"] == pytest.approx(t.statistic) and out["pvalue"] == pytest.approx(t.pvalue)
    w = st.wilcoxon(A, B)
    out = compute_wilcoxon(A, B)
    assert out["statistic"] == pytest.approx(w.statistic) and out["pvalue"] == pytest.approx(w.pvalue)


def test_cohens_d_hand_values():
    # a = [1, 2, 3], b = [3, 4, 5]: means 2 and 4, both sample SDs 1 -> pooled 1 -> d = -2.
    assert compute_cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    # unequal sizes: a=[0, 2] (var 2), b=[1, 2, 3] (var 1): pooled var = (1*2 + 2*1)/3 = 4/3.
    assert compute_cohens_d([0, 2], [1, 2, 3]) == pytest.approx((1 - 2) / math.sqrt(4 / 3))
    assert compute_cohens_d([1, 1], [1, 1]) == 0.0
    assert compute_cohens_d([2, 2], [1, 1]) == math.inf
    # d_z: differences [1, 2, 3] -> mean 2, sd 1.
    assert compute_cohens_dz([2, 4, 6], [1, 2, 3]) == pytest.approx(2.0)


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
        assert compute_cliffs_delta(a, b) == pytest.approx(_cliffs_brute(a, b), abs=1e-12)
    assert compute_cliffs_delta([3, 4], [1, 2]) == 1.0
    assert compute_cliffs_delta([1, 2], [3, 4]) == -1.0


def test_identical_models_give_no_difference():
    out = compare_models(A, A.copy(), paired=True, n_resamples=2000)
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
    assert compute_mann_whitney(np.ones(5), np.ones(7))["pvalue"] == 1.0


def test_constant_nonzero_paired_difference():
    out = compute_paired_t(A + 0.1, A)
    assert out["pvalue"] == 0.0 and out["statistic"] == math.inf


def test_holm_hand_worked_example():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005, 0.01, 0.03, 0.04
    # scaled: 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, 1*0.04=0.04 -> running max: 0.02, 0.03, 0.06, 0.06
    out = compute_holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    np.testing.assert_allclose(out["adjusted"], [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_array_equal(out["reject"], [True, False, False, True])
    # capped at 1, and the step-down stops at the first non-rejection
    out = compute_holm([0.5, 0.3, 0.012], alpha=0.05)
    np.testing.assert_allclose(out["adjusted"], [0.6, 0.6, 0.036])
    np.testing.assert_allclose(compute_holm([0.9, 0.8])["adjusted"], [1.0, 1.0])
    with pytest.raises(ValueError, match="pvalues"):
        compute_holm([0.1, 1.5])


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
        for _ in range(20):
            p = rng.random(m) ** rng.uniform(0.5, 4)  # many small p-values, some near 1
            if m > 3:
                p[1] = p[2]  # a tie
            out = compute_holm(p, alpha=0.05)
            expected = _holm_loop(list(map(float, p)))
            np.testing.assert_allclose(out["adjusted"], expected, rtol=0, atol=1e-15)
            np.testing.assert_array_equal(out["reject"], np.array(expected) <= 0.05)
    assert compute_holm([])["adjusted"].size == 0


def test_holm_families_skip_undefined_tests():
    entries = [{"welch_p": 0.01, "mw_p": 0.2}, {"welch_p": None, "mw_p": 0.5}, {"welch_p": 0.04, "mw_p": 0.1}]
    sizes = holm_families(entries, ("welch_p", "mw_p"))
    assert sizes == {"welch_p": 2, "mw_p": 3}
    assert [e["welch_p_holm"] for e in entries] == pytest.approx([0.02, None, 0.04])
    assert [e["mw_p_holm"] for e in entries] == pytest.approx(_holm_loop([0.2, 0.5, 0.1]))


def test_interval_over_seeds_is_json_safe():
    x = [0.41, 0.45, 0.39]
    assert interval_over_seeds(x) == {**{k: pytest.approx(mean_ci(x)[k]) for k in ("mean", "low", "high")}, "n": 3}
    assert interval_over_seeds([0.4]) == {"mean": 0.4, "low": None, "high": None, "n": 1}


def test_prompt_pairing_falls_back_to_position_only_without_distinct_texts():
    assert pair_prompts(["p", "q"], ["q", "p"]) == ([0, 1], [1, 0], "prompt")
    assert pair_prompts(["p", "q"], ["r"]) is None
    assert pair_prompts([None, None], [None, None]) == ([0, 1], [0, 1], "position")
    assert pair_prompts([None, None], [None]) is None
    assert pair_prompts(["p", "p"], ["p", "p"]) == ([0, 1], [0, 1], "position")


def test_hierarchical_bootstrap_reproducible_and_its_standard_error():
    rng = np.random.default_rng(7)
    diffs = [rng.normal(mu, sd, size=n) for mu, sd, n in ((0.05, 0.2, 30), (0.15, 0.1, 50), (-0.02, 0.3, 40))]
    assert hierarchical_bootstrap(diffs, seed=3) == hierarchical_bootstrap(diffs, seed=3)
    assert hierarchical_bootstrap(diffs, seed=3) != hierarchical_bootstrap(diffs, seed=4)
    # Closed form of the resampling: each of the S slots draws a seed s uniformly, then the mean of
    # P_s prompts of it, so Var = [mean_s (m_s - m)^2 + mean_s var_s / P_s] / S (plug-in variances).
    means = [float(d.mean()) for d in diffs]
    m = sum(means) / 3
    between = sum((ms - m) ** 2 for ms in means) / 3
    within = sum(sum((v - ms) ** 2 for v in d) / d.size / d.size for d, ms in zip(diffs, means)) / 3
    out = hierarchical_bootstrap(diffs, n_resamples=20_000, seed=0)
    assert out["se"] == pytest.approx(math.sqrt((between + within) / 3), rel=0.03)
    one = hierarchical_bootstrap(diffs[:1], n_resamples=20_000, seed=0)  # one seed: prompts only
    assert one["se"] == pytest.approx(float(diffs[0].std()) / math.sqrt(30), rel=0.03) and "note" in one


def test_bootstrap_ci_contains_true_difference():
    rng = np.random.default_rng(7)
    a = rng.normal(1.0, 1.0, size=200)
    b = rng.normal(0.5, 1.0, size=200)
    ci = compute_bootstrap_ci(a, b, paired=False, n_resamples=10_000, seed=1)
    assert ci["low"] < 0.5 < ci["high"]
    assert ci["n_resamples"] == 10_000 and ci["method"] == "BCa"
    # seeded: reproducible
    assert compute_bootstrap_ci(a, b, paired=False, n_resamples=10_000, seed=1) == ci
    # paired: same as scipy on the differences
    pci = compute_bootstrap_ci(a, b, paired=True, n_resamples=10_000, seed=1)
    ref = st.bootstrap((a - b,), np.mean, n_resamples=10_000, rng=np.random.default_rng(1))
    assert pci["low"] == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert pci["high"] == pytest.approx(ref.confidence_interval.high, rel=1e-9)


def test_mean_ci_matches_t_interval():
    x = [0.41, 0.45, 0.39, 0.47, 0.44]
    out = mean_ci(x)
    lo, hi = st.t.interval(0.95, df=4, loc=np.mean(x), scale=st.sem(x))
    assert out["low"] == pytest.approx(lo) and out["high"] == pytest.approx(hi)
    assert out["n"] == 5
    assert math.isnan(mean_ci([0.4])["half_width"])


def test_compare_many_applies_holm():
    rng = np.random.default_rng(3)
    base = rng.normal(size=30)
    pairs = {"big": (base + 1.0 + rng.normal(0, 0.1, 30), base), "none": (base + rng.normal(0, 0.1, 30), base)}
    out = compare_many(pairs, paired=True, n_resamples=1000)
    assert out["big"]["reject_holm"] and out["big"]["pvalue_holm"] < 1e-3
    raw = [out["big"]["primary_pvalue"], out["none"]["primary_pvalue"]]
    np.testing.assert_allclose([out["big"]["pvalue_holm"], out["none"]["pvalue_holm"]], compute_holm(raw)["adjusted"])


def test_validation_errors():
    with pytest.raises(ValueError, match="paired data"):
        compare_models([1, 2, 3], [1, 2], paired=True)
    with pytest.raises(ValueError, match="non-finite"):
        compute_mann_whitney([1, np.nan], [1, 2])
