"""Multiple comparisons: Holm's step-down adjustment, and Holm within one family per test of a report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from polyray.eval.stats.base import ALPHA
from polyray.eval.stats.results import HolmResult

__all__ = ["holm", "holm_families"]


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = ALPHA) -> HolmResult:
    """Holm–Bonferroni step-down adjustment (Holm 1979), by statsmodels' ``multipletests``.

    With p sorted ascending p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)),
    returned in the input order. Reject H_i iff the step-down procedure does (stop at the
    first p_(i) > alpha / (m − i + 1)), i.e. iff p̃_i ≤ alpha. An undefined p (None) is the
    caller's to drop or to count as 1: here every p must be in [0, 1].
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must be finite and in [0, 1]")
    if p.size == 0:
        return HolmResult((), ())
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return HolmResult(tuple(float(x) for x in adjusted), tuple(bool(r) for r in reject))


def holm_families(entries: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, int]:
    """Holm within one family per key: for each ``key``, the entries whose ``entry[key]`` is a p-value.

    Works on report dicts (JSON): adds ``<key>_holm`` to every entry (None where ``entry[key]`` is
    None: the test was undefined) and returns each family's size. ``polyray experiment`` calls it
    with every comparison x metric's over-seeds entry and the keys of the tests it ran
    ("paired_t_p", "wilcoxon_p", "tost_p"; "welch_p", "mann_whitney_p" for an unpaired comparison).
    """
    sizes = {}
    for key in keys:
        family = [e for e in entries if e.get(key) is not None]
        for e in entries:
            e[f"{key}_holm"] = None
        if family:
            for e, p in zip(family, holm([e[key] for e in family]).adjusted):
                e[f"{key}_holm"] = p
        sizes[key] = len(family)
    return sizes
