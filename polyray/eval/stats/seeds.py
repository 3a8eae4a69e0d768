"""Models compared over seeds (``polyray experiment``, ``polyray sweep``): the seed is the unit, paired
by seed id; prompts enter through the bootstrap over seeds and their shared prompts.

The functions here build report dicts (JSON-safe, None where a statistic is undefined) from the
typed results of ``tests``, ``effects`` and ``intervals``: they are what experiment.json and
sweep.json hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polyray.eval.stats.base import (
    ALPHA,
    CONDITIONAL_ON_TEST_PROMPTS,
    CONFIDENCE,
    EQUIVALENCE_MARGIN,
    as_1d,
    finite_or_none,
)
from polyray.eval.stats.effects import cohens_d, cohens_dz
from polyray.eval.stats.intervals import hierarchical_bootstrap, mean_ci
from polyray.eval.stats.tests import equivalence_tost, mann_whitney, paired_t, wilcoxon, welch_t

__all__ = [
    "align_prompts",
    "compare_over_seeds",
    "compare_within_seeds",
    "interval_over_seeds",
    "interval_over_seeds_and_prompts",
    "pair_prompts",
    "raised_and_kept",
]


def interval_over_seeds(values, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{"mean", "low", "high", "n"}: ``mean_ci`` of one setting's values over seeds as a report dict
    (None for an undefined end, e.g. one seed). ``polyray sweep`` reports every setting so."""
    x = np.asarray(values, dtype=np.float64)
    ci = mean_ci(x, confidence)
    return {
        "mean": finite_or_none(ci.mean),
        "low": finite_or_none(ci.low),
        "high": finite_or_none(ci.high),
        "n": len(x),
    }


def _by_seed(x, seeds: Sequence[int] | None, name: str) -> tuple[np.ndarray, list[int] | None]:
    """Values and their seed ids: a {seed: value} mapping, or values with ``seeds`` (None: ids unknown)."""
    if isinstance(x, Mapping):
        if seeds is not None:
            raise ValueError(f"{name}: give seed ids either as the mapping's keys or as seeds_{name}, not both")
        seeds, x = list(x), list(x.values())
    arr = as_1d(x, name)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) != arr.size or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds_{name}: {len(seeds)} distinct seed ids needed for {arr.size} values, got {seeds}")
    return arr, seeds


def compare_over_seeds(
    a,
    b,
    confidence: float = CONFIDENCE,
    *,
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    margin: float | None = EQUIVALENCE_MARGIN,
) -> dict[str, Any]:
    """Between-run tests with the seed as the unit, paired by seed id when both models have the same
    seeds; a report dict of the typed results' ``to_json()``.

    ``a``, ``b``: one value per seed (e.g. a model's mean pass@1 on the test set), with their seed
    ids as ``seeds_a`` / ``seeds_b`` or as the keys of a {seed: value} mapping.

    Same seed ids on both sides (``design: "paired"``, matched by id, whatever the order): the
    seed's two models share its SFT start, training prompts, sampling seeds and test prompts, so
    the tests take the per-seed differences: ``paired_t`` with the t-interval of the mean
    difference, ``wilcoxon`` (exact; its ``min_pvalue`` says how low it can go), Cohen's d_z.
    Otherwise (seed ids differ or are not given: ``design: "unpaired"``): Welch's t with its
    interval, Mann–Whitney U (``mann_whitney``), Cohen's d. Either way ``equivalence``:
    ``equivalence_tost`` at ``margin`` (None: not run). ``conditional_on``: the test prompts,
    which every seed shares and no test here resamples.
    """
    a, seeds_a = _by_seed(a, seeds_a, "a")
    b, seeds_b = _by_seed(b, seeds_b, "b")
    paired = seeds_a is not None and seeds_b is not None and sorted(seeds_a) == sorted(seeds_b)
    out: dict[str, Any] = {
        "design": "paired" if paired else "unpaired",
        "conditional_on": CONDITIONAL_ON_TEST_PROMPTS,
        "n": [int(a.size), int(b.size)],
        "difference": float(a.mean() - b.mean()),
    }
    if paired:
        order = sorted(seeds_a)
        a = a[[seeds_a.index(s) for s in order]]
        b = b[[seeds_b.index(s) for s in order]]
        out["seeds"] = order
        out["paired_t"] = paired_t(a, b, confidence).to_json()
        out["wilcoxon"] = wilcoxon(a, b).to_json()
        if a.size >= 2:
            out["cohens_dz"] = finite_or_none(cohens_dz(a, b))
    else:
        if seeds_a is not None and seeds_b is not None:
            out["note"] = "the two models have different seeds: unpaired tests"
        out["mann_whitney"] = mann_whitney(a, b).to_json()
        if min(a.size, b.size) >= 2:
            out["welch_t"] = welch_t(a, b, confidence).to_json()
        if a.size + b.size >= 3:
            out["cohens_d"] = finite_or_none(cohens_d(a, b))
    if margin is not None:
        out["equivalence"] = equivalence_tost(a, b, margin, paired=paired).to_json()
    return out


def _raise_and_keep(ra, rb, ka, kb, keep_within: float, alpha: float) -> tuple[dict, dict, list[str]]:
    """The "raise" and "keep" entries of ``raised_and_kept`` and the notes of tests that were undefined."""
    t = paired_t(ra, rb)
    margin = keep_within * abs(float(kb.mean()))
    raise_ = {
        "difference": float(ra.mean() - rb.mean()),
        "mean_control": float(rb.mean()),
        "pvalue": finite_or_none(t.pvalue),
        "low": finite_or_none(t.low),
        "high": finite_or_none(t.high),
    }
    keep = {
        "difference": float(ka.mean() - kb.mean()),
        "mean_control": float(kb.mean()),
        "keep_within": keep_within,
        "margin": margin,
        "pvalue": None,
        "low": None,
        "high": None,
    }
    notes = [t.note] if t.note else []
    if margin > 0:
        eq = equivalence_tost(ka, kb, margin, paired=True, alpha=alpha)
        keep.update(pvalue=eq.pvalue, low=eq.low, high=eq.high)
        notes += [eq.note] if eq.note else []
    else:
        notes.append("the control's mean is 0")
    return raise_, keep, notes


def raised_and_kept(
    raise_a: Mapping[int, float],
    raise_b: Mapping[int, float],
    keep_a: Mapping[int, float],
    keep_b: Mapping[int, float],
    *,
    keep_within: float,
    min_seeds: int = 5,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Whether a model *raises* one metric over a control while *keeping* another within a relative
    margin of the control's: an intersection–union test (Berger 1982) over seeds, paired by seed id.
    A report dict.

    Each argument maps seed id -> the model's value on that seed (a: treatment, b: control); the
    seeds both sides of both metrics have are used. Raised: the paired t-test (``paired_t``) on
    the per-seed differences of the first metric rejects at ``alpha`` and the mean difference is
    positive. Kept: the paired TOST (``equivalence_tost``) at ±``keep_within`` × |mean control| of
    the second metric concludes equivalence at ``alpha`` (the margin is relative, so it is taken
    from the control's mean over the same seeds). The claim holds when both do; no multiplicity
    adjustment is needed inside it, since each part must reject on its own at ``alpha``.
    ``pvalue`` is the intersection–union p, max(raise p, TOST p): Holm across several such claims
    takes it. ``verdict``: "supported", "not supported" (with ``reasons``) or "undecided" when fewer
    than ``min_seeds`` seeds are paired or a test is undefined.
    """
    if not 0 < keep_within < 1:
        raise ValueError(f"keep_within must be in (0, 1) (a share of the control's mean), got {keep_within}")
    seeds = sorted(set(raise_a) & set(raise_b) & set(keep_a) & set(keep_b))
    ra, rb, ka, kb = (np.array([x[s] for s in seeds], dtype=np.float64) for x in (raise_a, raise_b, keep_a, keep_b))
    out: dict[str, Any] = {
        "seeds": seeds,
        "n_seeds": len(seeds),
        "min_seeds": min_seeds,
        "alpha": alpha,
        "conditional_on": CONDITIONAL_ON_TEST_PROMPTS,
        "pvalue": None,
        "reasons": [],
    }
    if len(seeds) < max(min_seeds, 2):
        out.update(verdict="undecided", reasons=[f"{len(seeds)} paired seeds, at least {max(min_seeds, 2)} needed"])
        return out
    out["raise"], out["keep"], notes = _raise_and_keep(ra, rb, ka, kb, keep_within, alpha)
    p_raise, p_keep, diff = out["raise"]["pvalue"], out["keep"]["pvalue"], out["raise"]["difference"]
    if p_raise is None or p_keep is None:
        out.update(verdict="undecided", reasons=notes)
        return out
    raised, kept = p_raise < alpha and diff > 0, p_keep < alpha
    if not raised:
        out["reasons"].append(f"not raised: difference {diff:+.4f}, paired t p = {p_raise:.3g}")
    if not kept:
        out["reasons"].append(
            f"not shown kept within ±{out['keep']['margin']:.4f} ({keep_within:.0%} of the"
            f" control's {kb.mean():.4f}): TOST p = {p_keep:.3g}"
        )
    out["pvalue"] = max(p_raise, p_keep) if diff > 0 else 1.0
    out["verdict"] = "supported" if raised and kept else "not supported"
    return out


def pair_prompts(
    a_texts: Sequence[str | None], b_texts: Sequence[str | None]
) -> tuple[list[int], list[int], str] | None:
    """Indices pairing two models' per-prompt values of one seed, and how they were paired.

    By prompt text where every row has one and no text repeats on a side (the prompts both
    sides have), else by position (same prompts in the same order: both phases of a seed draw
    them identically); None when neither works.
    """
    ta, tb = list(a_texts), list(b_texts)
    if None not in ta and None not in tb and len(set(ta)) == len(ta) and len(set(tb)) == len(tb):
        where = {t: j for j, t in enumerate(tb)}
        ia = [i for i, t in enumerate(ta) if t in where]
        return (ia, [where[ta[i]] for i in ia], "prompt") if ia else None
    if ta and len(ta) == len(tb):
        return list(range(len(ta))), list(range(len(tb))), "position"
    return None


def align_prompts(texts: Sequence[Sequence[str | None]]) -> tuple[list[list[int]], str] | None:
    """Per seed, the indices of the prompts every seed has, in one common order, and how they were matched.

    By prompt text where every seed's rows all have one and none repeats (the prompts all seeds
    have, in the first seed's order); else by position where every seed has as many rows (the
    test split is drawn from the task's own seed, not the run's, so every run seed evaluates the
    same prompts in the same order); None when neither works. What lets the joint bootstrap draw
    one set of prompts for every seed (``hierarchical_bootstrap``).
    """
    texts = [list(t) for t in texts]
    if not texts:
        return None
    if all(None not in t and len(set(t)) == len(t) for t in texts):
        common = set(texts[0]).intersection(*texts[1:])
        order = [t for t in texts[0] if t in common]
        if not order:
            return None
        where = [{t: i for i, t in enumerate(ts)} for ts in texts]
        return [[w[t] for t in order] for w in where], "prompt"
    if texts[0] and all(len(t) == len(texts[0]) for t in texts):
        return [list(range(len(texts[0])))] * len(texts), "position"
    return None


def _bootstrap_over(per_seed: list[tuple[int, np.ndarray, list[str | None]]]) -> dict[str, Any]:
    """``hierarchical_bootstrap`` of per-seed (seed, values, prompt texts) as a report dict: one prompt
    draw for all seeds where ``align_prompts`` matches their prompts, a draw per seed (and a note) where not."""
    aligned = align_prompts([t for _, _, t in per_seed])
    if aligned is None:
        boot = hierarchical_bootstrap([v for _, v, _ in per_seed], shared_prompts=False)
        return {**boot.to_json(), "note": "the seeds' prompts cannot be matched: prompts resampled apart per seed"}
    idx, by = aligned
    boot = hierarchical_bootstrap([v[i] for (_, v, _), i in zip(per_seed, idx)], shared_prompts=True)
    return {**boot.to_json(), "prompts_matched_by": by}


def interval_over_seeds_and_prompts(
    per_seed: list[tuple[int, np.ndarray | None, Sequence[str | None]]],
) -> dict[str, Any]:
    """One model's mean with a bootstrap interval over seeds and the prompts they share, as a report dict.

    ``per_seed``: (seed, the model's values per prompt, their prompt texts). Where the t-interval
    over seeds holds the test prompts fixed, this one resamples them too (``hierarchical_bootstrap``;
    ``conditional_on`` says which). {} when a seed did not record per-prompt values.
    """
    if not per_seed or any(v is None for _, v, _ in per_seed):
        return {}
    return _bootstrap_over([(s, np.asarray(v, dtype=np.float64), list(t)) for s, v, t in per_seed])


def compare_within_seeds(
    per_seed: list[tuple[int, np.ndarray | None, np.ndarray | None, Sequence[str | None], Sequence[str | None]]],
) -> dict[str, Any]:
    """The prompt-level view: per seed the two models paired by prompt; over seeds a bootstrap of the
    differences that resamples seeds and their shared prompts; never one pooled test over seeds x
    prompts. A report dict.

    ``per_seed``: (seed, treatment values per prompt, control values per prompt, their prompt
    texts; None values: not recorded, no prompt-level view). Per seed: the values paired by
    prompt (``pair_prompts``), their mean difference and Wilcoxon p (descriptive, not
    Holm-adjusted); over seeds: ``hierarchical_bootstrap`` of the differences, one prompt draw for
    every seed where their prompts match (``align_prompts``). Values are rounded to 12 decimals
    first: pass@k's product carries float noise (equal differences of two prompts' pass@k come out
    unequal), and rank tests must see those ties as ties.
    """
    rows, diffs = [], []
    for s, a, b, a_texts, b_texts in per_seed:
        if a is None or b is None:
            return {}
        pairing = pair_prompts(a_texts, b_texts)
        if pairing is None:
            return {"note": f"seed {s}: the two models' prompts cannot be paired"}
        ia, ib, by = pairing
        x, y = np.round(np.asarray(a, dtype=np.float64), 12)[ia], np.round(np.asarray(b, dtype=np.float64), 12)[ib]
        rows.append(
            {
                "seed": s,
                "n_prompts": len(ia),
                "paired_by": by,
                "mean_diff": float((x - y).mean()),
                "wilcoxon_p": wilcoxon(x, y).pvalue,
            }
        )
        texts = [list(a_texts)[i] for i in ia] if by == "prompt" else [None] * len(ia)
        diffs.append((s, x - y, texts))
    if not diffs:
        return {}
    boot = _bootstrap_over(diffs)
    return {"per_seed": rows, "hierarchical_bootstrap": {"mean_diff": boot.pop("mean"), **boot}}
