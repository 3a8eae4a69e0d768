"""Evaluation metrics: pass@k, USQ@k, DER, collapse point against brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from polyray.eval.passk import compute_pass_at_k_curve
from polyray.tasks.quality import compute_embedding_similarity, compute_rouge
from polyray.eval.metrics import (
    PromptResult,
    compute_collapse_point,
    compute_der_at_k,
    compute_pick_probabilities,
    compute_usq_at_k,
)


def _enumerate_usq(q: np.ndarray, s: np.ndarray, k: int) -> float:
    """E[quality of the pick]: every k-subset, uniform among the subset's max-score ties."""
    total = 0.0
    subsets = list(itertools.combinations(range(q.size), k))
    for sub in subsets:
        sub = np.array(sub)
        best = sub[s[sub] == s[sub].max()]
        total += q[best].mean()
    return total / len(subsets)


def test_pick_probabilities_distinct_scores_formula():
    n, k = 7, 3
    s = np.array([0.3, 2.0, -1.0, 5.0, 0.0, 1.0, 4.0])
    p = compute_pick_probabilities(s, k)
    rank = np.argsort(np.argsort(-s)) + 1  # j-th best, 1-based
    expected = np.array([math.comb(n - j, k - 1) / math.comb(n, k) for j in rank])
    np.testing.assert_allclose(p, expected, atol=1e-14)
    assert p.sum() == pytest.approx(1.0)


def test_usq_exact_matches_enumeration_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(2, 9))
        k = int(rng.integers(1, n + 1))
        q = rng.random(n)
        s = rng.integers(0, 3, size=n).astype(float)  # few distinct values: many ties
        res = compute_usq_at_k([q], [s], k)
        assert res.usq == pytest.approx(_enumerate_usq(q, s, k), abs=1e-12)


def test_usq_oracle_equals_pass_at_k_for_binary_quality():
    rng = np.random.default_rng(2)
    n, P = 8, 25
    q = (rng.random((P, n)) < rng.random((P, 1))).astype(float)
    counts = [(n, int(row.sum())) for row in q]
    for k in (1, 2, 4, 8):
        res = compute_usq_at_k(q, None, k, selector="oracle")
        assert res.usq == pytest.approx(compute_pass_at_k_curve(counts, [k])[k], abs=1e-12)
        assert res.oracle == pytest.approx(res.usq, abs=1e-12)
        assert res.selection_efficiency == pytest.approx(1.0) or math.isnan(res.selection_efficiency)


def test_usq_random_equals_pass_at_1_exact_and_monte_carlo():
    rng = np.random.default_rng(3)
    n, P, k = 6, 12, 3
    q = (rng.random((P, n)) < 0.4).astype(float)
    counts = [(n, int(row.sum())) for row in q]
    p1 = compute_pass_at_k_curve(counts, [1])[1]
    exact = compute_usq_at_k(q, None, k, selector="random")
    assert exact.usq == pytest.approx(p1, abs=1e-12)
    assert exact.random == pytest.approx(p1, abs=1e-12)
    assert exact.selection_efficiency == pytest.approx(0.0, abs=1e-12)

    n_draws = 4000
    mc = compute_usq_at_k(q, None, k, selector="random", exact=False, n_draws=n_draws, rng=0)
    # Derived SE: each pick is Bernoulli(p_x) per prompt, so Var(mean) = Σ_x p_x(1−p_x)/n_draws / P².
    p_x = q.mean(axis=1)
    se = math.sqrt(np.sum(p_x * (1 - p_x)) / n_draws) / P
    assert abs(mc.usq - p1) < 5 * se
    assert mc.se == pytest.approx(se, rel=0.1)


def test_usq_monte_carlo_matches_exact_for_tied_scores():
    rng = np.random.default_rng(4)
    n, P, k = 7, 10, 3
    q = rng.random((P, n))
    s = rng.integers(0, 2, size=(P, n)).astype(float)
    exact = compute_usq_at_k(q, s, k, selector="reward_model")
    mc = compute_usq_at_k(q, s, k, selector="reward_model", exact=False, n_draws=20_000, rng=rng)
    assert abs(mc.usq - exact.usq) < 5 * mc.se
    assert exact.usq <= exact.oracle + 1e-12  # no selector beats the oracle pick


def test_usq_bounds_and_selector_efficiency():
    # Scores agree with the quality ordering => the selector is the oracle.
    q = np.array([[0.0, 1.0, 0.0, 1.0, 0.0]])
    s = np.array([[0.1, 0.9, 0.2, 0.8, 0.3]])
    res = compute_usq_at_k(q, s, 2, selector="logprob")
    assert res.usq == pytest.approx(res.oracle)
    assert res.selection_efficiency == pytest.approx(1.0)
    # Anti-correlated scores: below random.
    res_bad = compute_usq_at_k(q, -s, 2, selector="logprob")
    assert res_bad.usq < res_bad.random
    assert res_bad.selection_efficiency < 0


def test_usq_variable_n_and_validation():
    q = [np.array([1.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])]
    res = compute_usq_at_k(q, None, 2, selector="oracle")
    assert res.per_prompt.shape == (2,)
    assert res.usq == pytest.approx((1.0 + (1 - 1 / 6)) / 2)
    with pytest.raises(ValueError, match="k=3"):
        compute_usq_at_k(q, None, 3, selector="oracle")
    with pytest.raises(ValueError, match="needs selector_scores"):
        compute_usq_at_k(q, None, 1, selector="reward_model")
    with pytest.raises(ValueError, match="unknown selector"):
        compute_usq_at_k(q, None, 1, selector="nope")
    with pytest.raises(ValueError, match="selector_scores\\[1\\]"):
        compute_usq_at_k(q, [np.zeros(2), np.zeros(3)], 1)


def test_usq_oracle_equals_random_gives_nan_efficiency():
    q = np.ones((3, 4))
    res = compute_usq_at_k(q, None, 2, selector="random")
    assert math.isnan(res.selection_efficiency)
    assert res.per_prompt.tolist() == [1.0, 1.0, 1.0]


def test_der_and_independence_on_hand_values():
    # prompt 1: n=4, c=2; prompt 2: n=4, c=0. k=2.
    counts = [(4, 2), (4, 0)]
    out = compute_der_at_k(counts, 2)
    p1 = (0.5 + 0.0) / 2  # 0.25
    pk = (1 - math.comb(2, 2) / math.comb(4, 2) + 0.0) / 2  # (1 - 1/6)/2 = 5/12
    assert out["pass@1"] == pytest.approx(p1)
    assert out["pass@2"] == pytest.approx(pk)
    assert out["der"] == pytest.approx(pk / (2 * p1))  # 5/6
    indep = ((1 - 0.5**2) + 0.0) / 2  # 0.375
    assert out["independence"] == pytest.approx(indep)
    assert out["ratio_to_independence"] == pytest.approx(pk / indep)
    assert math.isnan(compute_der_at_k([(4, 0)], 2)["der"])


def test_collapse_point():
    assert compute_collapse_point({1: 0.2, 2: 0.35, 3: 0.40, 4: 0.405, 5: 0.409}) == 3
    assert compute_collapse_point({"1": 0.2, "2": 0.5}, threshold=0.01) is None
    assert compute_collapse_point({1: 0.2, 2: 0.25, 3: 0.27}, threshold=0.1) == 1
    with pytest.raises(ValueError, match="consecutive"):
        compute_collapse_point({1: 0.2, 5: 0.4, 10: 0.5})
    # From counts: all-or-nothing prompts give a flat curve at once.
    assert compute_collapse_point([(8, 8), (8, 0)]) == 1
    # A single prompt with one correct of n: pass@k = k/n, gain 1/n per step.
    assert compute_collapse_point([(10, 1)], threshold=0.05) is None
    assert compute_collapse_point([(10, 1)], threshold=0.2) == 1


def test_rouge_known_values():
    out = compute_rouge(["the cat sat on the mat", "hello"], ["the cat sat on the mat", "goodbye"])
    assert out["rouge1"] == pytest.approx(0.5)
    per = compute_rouge(["the cats are running"], ["the cat is running"], aggregate=False)
    # stemming: cats -> cat, running -> run; tokens the/cat/are/run vs the/cat/is/run: 3 of 4 match
    assert per["rouge1"][0] == pytest.approx(0.75)
    assert per["rouge2"].shape == (1,)
    with pytest.raises(ValueError, match="refs"):
        compute_rouge(["a"], [])


def test_embedding_similarity_precomputed_and_encoder():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0]])
    per_pair = compute_embedding_similarity(pred_embeddings=a, ref_embeddings=b, aggregate=False)
    np.testing.assert_allclose(per_pair, [1.0, 0.0])
    enc = {"x": [1.0, 1.0], "y": [1.0, -1.0]}
    sim = compute_embedding_similarity(["x", "x"], ["x", "y"], encode=lambda ts: np.array([enc[t] for t in ts]))
    assert sim == pytest.approx(0.5)


def test_prompt_result_checks():
    row = PromptResult(
        "p1",
        n=4,
        c=0,
        rewards=[0, 0, 0, 0],
        diversity={"semantic": 0.2},
        selector_scores={"reward_model": [0.5, 0.5, 0.5, 0.5]},
    ).to_dict()
    assert row["selector_scores"] == {"reward_model": [0.5, 0.5, 0.5, 0.5]} and row["prompt_id"] == "p1"
    with pytest.raises(ValueError, match="rewards"):
        PromptResult("bad", n=3, c=1, rewards=[1.0])
