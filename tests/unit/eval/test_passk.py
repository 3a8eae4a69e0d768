import itertools
import random

import numpy as np
import pytest

from polyray.eval.passk import compute_pass_at_k, compute_pass_at_k_curve, compute_pass_at_k_matrix, mean_pass_at_k


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (c correct) holding a correct one, by enumeration."""
    labels = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


def test_matches_enumeration_on_random_n_c():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 12)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert compute_pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)


def test_edge_cases_and_mean():
    assert compute_pass_at_k(10, 0, 5) == 0.0
    assert compute_pass_at_k(10, 10, 1) == 1.0
    assert compute_pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([(10, 3), (10, 0)], 1) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        compute_pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        compute_pass_at_k(3, 4, 1)


def _enumerate_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (first c correct) holding >= 1 correct."""
    subsets = list(itertools.combinations(range(n), k))
    return float(np.mean([any(i < c for i in s) for s in subsets], dtype=np.float64))


def test_pass_at_k_matches_enumeration_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 11))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        curve = compute_pass_at_k_curve([(n, c)], [k])
        assert curve[k] == pytest.approx(_enumerate_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_matrix_shape_and_mean():
    counts = [(10, 0), (10, 3), (10, 10)]
    mat = compute_pass_at_k_matrix(counts, [1, 2, 5])
    assert mat.shape == (3, 3)
    np.testing.assert_allclose(mat[:, 0], [0.0, 0.3, 1.0])
    curve = compute_pass_at_k_curve(counts, [1, 2, 5])
    assert curve[5] == pytest.approx(mat[:, 2].mean())


@pytest.mark.parametrize("bad", [[(5, 6)], [(5, -1)], [], [(5, 2.5)]])
def test_counts_validation(bad):
    with pytest.raises(ValueError, match="counts"):
        compute_pass_at_k_curve(bad, [1])


def test_k_above_n_raises():
    with pytest.raises(ValueError, match="k=6"):
        compute_pass_at_k_curve([(5, 2)], [6])
