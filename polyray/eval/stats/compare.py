"""Two fixed models compared over prompts (the evaluation job): every test, effect size and interval in
one report dict, Holm across the job's comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polyray.eval.stats.base import ALPHA, CONDITIONAL_ON_MODELS, CONFIDENCE, as_pair, finite_or_none
from polyray.eval.stats.effects import cliffs_delta, cohens_d, cohens_dz
from polyray.eval.stats.intervals import bootstrap_ci, mean_ci
from polyray.eval.stats.multiple import holm
from polyray.eval.stats.tests import mann_whitney, paired_t, wilcoxon

__all__ = ["compare_many", "compare_models"]


def compare_models(
    a,
    b,
    paired: bool,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """All comparisons of model a against model b, as a report: a JSON-safe dict built from the typed
    results (``to_json()`` of each; None where a statistic is undefined).

    Args:
        a, b: (N,) per-prompt values (e.g. pass@k per prompt).
        paired: a[i] and b[i] come from the same prompt.
        seed: of the bootstrap.
    Returns:
        n_a, n_b, mean_a, mean_b, mean_diff (a − b), mean_ci_a, mean_ci_b, mann_whitney, cohens_d,
        cliffs_delta, bootstrap_ci, and when paired also wilcoxon, paired_t, cohens_dz (the last two
        from 2 pairs). Each test entry is a ``TestResult.to_json()``. ``primary_pvalue`` is Wilcoxon's
        p when paired, else Mann–Whitney's (the one ``compare_many`` corrects with Holm).
        ``conditional_on``: the two models, i.e. one training run each; the prompts are the sample
        (``CONDITIONAL_ON_MODELS``).
    """
    a, b = as_pair(a, b, paired=paired)
    out: dict[str, Any] = {
        "paired": paired,
        "conditional_on": CONDITIONAL_ON_MODELS,
        "n_a": int(a.size),
        "n_b": int(b.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(a.mean() - b.mean()),
        "mean_ci_a": mean_ci(a, confidence).to_json(),
        "mean_ci_b": mean_ci(b, confidence).to_json(),
        "mann_whitney": mann_whitney(a, b).to_json(),
        "cohens_d": finite_or_none(cohens_d(a, b)) if a.size + b.size >= 3 else None,
        "cliffs_delta": cliffs_delta(a, b),
        "bootstrap_ci": bootstrap_ci(a, b, paired, confidence=confidence, n_resamples=n_resamples, seed=seed).to_json(),
    }
    if paired:
        out["wilcoxon"] = wilcoxon(a, b).to_json()
        if a.size >= 2:
            out["paired_t"] = paired_t(a, b, confidence).to_json()
            out["cohens_dz"] = finite_or_none(cohens_dz(a, b))
        out["primary_pvalue"] = out["wilcoxon"]["pvalue"]
    else:
        out["primary_pvalue"] = out["mann_whitney"]["pvalue"]
    return out


def compare_many(
    pairs: dict[str, tuple[Sequence[float], Sequence[float]]],
    paired: bool,
    *,
    alpha: float = ALPHA,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``compare_models`` for each named comparison, Holm-corrected across them (report dicts).

    Adds ``pvalue_holm`` and ``reject_holm`` (at ``alpha``) to each result, using its
    ``primary_pvalue``; a comparison whose primary p is undefined (None) is left out of the family
    and gets None and False.
    """
    results = {name: compare_models(a, b, paired, **kwargs) for name, (a, b) in pairs.items()}
    for r in results.values():
        r["pvalue_holm"], r["reject_holm"] = None, False
    family = [r for r in results.values() if r["primary_pvalue"] is not None]
    if family:
        adjusted = holm([r["primary_pvalue"] for r in family], alpha=alpha)
        for r, adj, rej in zip(family, adjusted.adjusted, adjusted.reject):
            r["pvalue_holm"], r["reject_holm"] = adj, rej
    return results
