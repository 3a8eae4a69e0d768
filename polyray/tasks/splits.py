"""Train/val/test splits of graded data: engagement-stratified, or a seeded shuffle.

Used by the JSONL tasks (per prompt) and by the engagement reward model (per row), so
both see the whole engagement range in every split.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

# train, val, test
SPLIT_SHARES = (0.70, 0.15, 0.15)


class SplitError(ValueError):
    """Too little data for three non-trivial splits."""


def stratified_split(values: list[float], seed: int, n_bins: int = 10) -> dict[str, list[int]]:
    """Indices of train/val/test, 70/15/15 within each quantile bin of ``values``."""
    n = len(values)
    n_bins = max(1, min(n_bins, n // 20))
    order = sorted(range(n), key=lambda i: (values[i], i))
    rng = random.Random(seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for b in range(n_bins):
        members = order[b * n // n_bins : (b + 1) * n // n_bins]
        rng.shuffle(members)
        n_val = round(len(members) * SPLIT_SHARES[1])
        n_test = round(len(members) * SPLIT_SHARES[2])
        splits["val"] += members[:n_val]
        splits["test"] += members[n_val : n_val + n_test]
        splits["train"] += members[n_val + n_test :]
    if min(len(s) for s in splits.values()) < 2:
        raise SplitError(f"{n} rows are too few for train/val/test splits (need about 20)")
    return {k: sorted(v) for k, v in splits.items()}


def shuffled_split(n: int, seed: int) -> dict[str, list[int]]:
    """Indices of train/val/test from one seeded shuffle (70/15/15)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(n * SPLIT_SHARES[1]), round(n * SPLIT_SHARES[2])
    return {
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
        "train": sorted(order[n_val + n_test :]),
    }


def rows_digest(lines: Iterable[int]) -> str:
    """SHA-256 (hex) of the sorted line numbers: which rows of a file trained a model (a cache key)."""
    import hashlib

    return hashlib.sha256(",".join(map(str, sorted(lines))).encode()).hexdigest()
