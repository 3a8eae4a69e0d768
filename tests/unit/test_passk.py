import itertools
import random

import pytest

from polyray.eval.passk import compute_pass_at_k, mean_pass_at_k


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
