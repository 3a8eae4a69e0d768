"""What every statistic shares: the levels and labels, the input checks, and the JSON form of a number."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# re-exported: the margin experiments default to
from polyray.config.experiment import (
    EQUIVALENCE_MARGIN as EQUIVALENCE_MARGIN,
)

CONFIDENCE = 0.95
# the hierarchical bootstrap's default
BOOTSTRAP_RESAMPLES = 2000
# rank tests with ties: exact permutation up to this many splits / sign flips
EXACT_SPLITS = 20_000
# the level of every verdict (TOST's "equivalent", Holm's rejections)
ALPHA = 0.05
# What an interval holds fixed (``conditional_on`` in every result over seeds): the t-interval and
# the tests over seeds see each seed's mean on the one test set all seeds share, so they generalise
# to new training runs on these prompts; the joint bootstrap resamples the prompts too.
CONDITIONAL_ON_TEST_PROMPTS = "test prompts"
CONDITIONAL_ON_NOTHING = "nothing (seeds and prompts resampled)"
CONDITIONAL_ON_SEEDS_PROMPTS_APART = "nothing (seeds resampled, prompts resampled apart per seed)"
CONDITIONAL_ON_MODELS = "the models compared (prompts resampled)"
# Values per batch of a permutation test: bounds its memory when the sample is many prompts
PERMUTATION_BATCH_VALUES = 2_000_000


def finite_or_none(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN or ±inf (an undefined statistic)."""
    return float(x) if x is not None and math.isfinite(x) else None


def as_1d(x: Sequence[float] | np.ndarray, name: str, min_size: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def as_pair(a, b, paired: bool, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_1d(a, "a", min_size), as_1d(b, "b", min_size)
    if paired and a.shape != b.shape:
        raise ValueError(f"paired data need equal lengths, got a: {a.size}, b: {b.size}")
    return a, b


def differences(a, b) -> np.ndarray:
    """a − b per pair (prompt or seed), rounded to 12 decimals: values that are means (pass@k over
    prompts, a seed's mean) carry float noise (0.71 − 0.31 ≠ 0.70 − 0.30 in float64), and a constant
    or tied difference must read as one."""
    a, b = as_pair(a, b, paired=True)
    return np.round(a - b, 12)


def permutation_batch(n_values: int) -> int:
    """Resamples per batch of a scipy permutation test over ``n_values`` values."""
    return max(1, PERMUTATION_BATCH_VALUES // max(n_values, 1))
