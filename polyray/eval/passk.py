"""Unbiased pass@k (Chen et al. 2021, arXiv 2107.03374)."""

from __future__ import annotations

import numpy as np


def compute_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws without replacement from n samples (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"k={k} exceeds n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """Mean over prompts of pass@k; ``counts`` holds (n, c) per prompt."""
    return float(np.mean([compute_pass_at_k(n, c, k) for n, c in counts]))
