"""Unbiased pass@k (Chen et al. 2021, arXiv 2107.03374): the one home of pass@k.

``compute_pass_at_k`` per prompt, ``mean_pass_at_k`` over prompts (what a run's evaluation and
the dynamics probe report), ``compute_pass_at_k_matrix`` / ``compute_pass_at_k_curve`` for
several k at once (the evaluation job: CIs over prompts, DER, collapse point). ``counts`` is a
sequence of (n, c) pairs, one per prompt: n samples, c of them correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "as_counts",
    "as_ks",
    "compute_pass_at_k",
    "compute_pass_at_k_curve",
    "compute_pass_at_k_matrix",
    "mean_pass_at_k",
]


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


def as_counts(counts: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Validate ``counts`` and return an int (P, 2) array of (n, c)."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"counts must be a non-empty sequence of (n, c) pairs, got shape {arr.shape}")
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError("counts must hold integers (n, c)")
    arr = arr.astype(np.int64)
    n, c = arr[:, 0], arr[:, 1]
    if np.any(c < 0) or np.any(c > n):
        bad = int(np.flatnonzero((c < 0) | (c > n))[0])
        raise ValueError(f"counts[{bad}] = {tuple(arr[bad])}: need 0 <= c <= n")
    return arr


def as_ks(ks: Sequence[int] | int, max_n: int) -> list[int]:
    """Validate ``ks`` (an int or a sequence): each 1 <= k <= ``max_n``; returns them as a list."""
    ks_list = [int(ks)] if np.isscalar(ks) else [int(k) for k in ks]
    if not ks_list:
        raise ValueError("ks must not be empty")
    for k in ks_list:
        if k < 1 or k > max_n:
            raise ValueError(f"k={k} out of range: need 1 <= k <= min n over prompts = {max_n}")
    return ks_list


def compute_pass_at_k_matrix(counts: Sequence[tuple[int, int]] | np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Per-prompt unbiased pass@k.

    Args:
        counts: (P, 2) (n, c) per prompt.
        ks: K values of k, each 1 <= k <= min n.
    Returns:
        (P, K) float64 array; column j is pass@ks[j] per prompt (feed a column to
        ``polyray.eval.stats`` for CIs over prompts).
    """
    arr = as_counts(counts)
    ks_list = as_ks(ks, int(arr[:, 0].min()))
    return np.array([[compute_pass_at_k(int(n), int(c), k) for k in ks_list] for n, c in arr], dtype=np.float64)


def compute_pass_at_k_curve(counts: Sequence[tuple[int, int]] | np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Mean over prompts of unbiased pass@k for each k in ``ks``: {k: pass@k}."""
    ks_list = list(ks)
    mat = compute_pass_at_k_matrix(counts, ks_list)
    return {int(k): float(v) for k, v in zip(ks_list, mat.mean(axis=0))}
