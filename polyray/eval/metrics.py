"""Evaluation metrics for "generate k candidates, pick one" deployment (docs/algorithms.md §5).

Pure numpy functions over per-prompt samples (unbiased pass@k itself, Chen et al. 2021, is
:mod:`polyray.eval.passk`; what an evaluation measured is an :mod:`polyray.eval.record`):

- ``compute_usq_at_k``: User Selection Quality — per prompt draw k of the n candidates
  uniformly without replacement, a selector picks the arg-max of its score among them
  (ties broken uniformly at random), the pick's ground-truth quality is scored.
  Reported beside its bounds (random pick = mean quality = expected pass@1 for binary
  quality; oracle pick = pass@k for binary quality) and the selection efficiency.
- ``compute_der_at_k``: DER@k = pass@k / (k · pass@1) and the independence baseline
  mean_x[1 − (1 − p̂_x)^k].
- ``compute_collapse_point``: smallest k with pass@(k+1) − pass@k < threshold.
- ``PromptResult``: the per-prompt record kept by the evaluation job (one line of
  ``samples.jsonl``). Quality against a reference (ROUGE, embedding cosine) is task
  knowledge: :mod:`polyray.tasks.quality`.

Conventions: ``counts`` is a sequence of (n, c) pairs, one per prompt (n samples, c
correct), as in :mod:`polyray.eval.passk`. Qualities and selector scores are either a
(P, n) array or a list of P 1-D arrays (n may vary between prompts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyray.eval.passk import as_counts, as_ks, compute_pass_at_k_curve

__all__ = [
    "SELECTORS",
    "PromptResult",
    "USQResult",
    "compute_collapse_point",
    "compute_der_at_k",
    "compute_pick_probabilities",
    "compute_usq_at_k",
]


# --------------------------------------------------------------------------- DER@k, collapse


def compute_der_at_k(counts: Sequence[tuple[int, int]] | np.ndarray, k: int) -> dict[str, float]:
    """DER@k and the independence baseline (docs/algorithms.md §5).

    DER@k = pass@k / (k · pass@1) (the seeds' definition; 1/k ≤ DER ≤ 1). Because DER
    mostly reflects how spread the per-prompt success rates are, also report pass@k
    against the independence baseline mean_x[1 − (1 − p̂_x)^k] with p̂_x = c_x / n_x,
    i.e. what pass@k would be if the k draws were independent Bernoulli(p̂_x)
    (with replacement). pass@k ≥ baseline because drawing without replacement can only help.

    Returns:
        dict with ``k``, ``pass@1``, ``pass@<k>``, ``der`` (NaN when pass@1 = 0),
        ``independence`` and ``ratio_to_independence`` (pass@k / independence; NaN when
        the baseline is 0).
    """
    arr = as_counts(counts)
    (k,) = as_ks(k, int(arr[:, 0].min()))
    pk = compute_pass_at_k_curve(arr, [1, k])
    p1, pass_k = pk[1], pk[k]
    p_hat = arr[:, 1] / arr[:, 0]
    indep = float(np.mean(1.0 - (1.0 - p_hat) ** k))
    return {
        "k": k,
        "pass@1": p1,
        f"pass@{k}": pass_k,
        "der": pass_k / (k * p1) if p1 > 0 else math.nan,
        "independence": indep,
        "ratio_to_independence": pass_k / indep if indep > 0 else math.nan,
    }


def compute_collapse_point(
    curve_or_counts: dict[int, float] | Sequence[tuple[int, int]] | np.ndarray,
    threshold: float = 0.01,
    ks: Sequence[int] | None = None,
) -> int | None:
    """Smallest k with pass@(k+1) − pass@k < ``threshold``; None if the curve never flattens.

    Args:
        curve_or_counts: either a pass@k curve {k: pass@k} (keys may be strings, as
            after a JSON round trip; only consecutive pairs k, k+1 present in it are
            compared), or (P, 2) counts, from which pass@k is computed for ``ks``
            (default 1..min n, i.e. consecutive k from 1 to n − 1 as the left point).
        threshold: minimum gain of one more candidate (default 0.01).
        ks: k values to evaluate when counts are given.
    Raises:
        ValueError: if the curve has no consecutive pair (k, k+1) to compare.
    """
    if isinstance(curve_or_counts, dict):
        curve = {int(k): float(v) for k, v in curve_or_counts.items()}
    else:
        arr = as_counts(curve_or_counts)
        ks_eval = list(ks) if ks is not None else list(range(1, int(arr[:, 0].min()) + 1))
        curve = compute_pass_at_k_curve(arr, ks_eval)
    pairs = [k for k in sorted(curve) if k + 1 in curve]
    if not pairs:
        raise ValueError(f"curve_or_counts has no consecutive pair (k, k+1) among k = {sorted(curve)}")
    for k in pairs:
        if curve[k + 1] - curve[k] < threshold:
            return k
    return None


# --------------------------------------------------------------------------- USQ@k


def _select_oracle(quality: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    return quality


def _select_random(quality: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    # All scores tie, so the uniform tie-break makes the pick uniform over the k drawn.
    return np.zeros_like(quality)


def _select_given(name: str) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    def select(quality: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
        if scores is None:
            raise ValueError(f"selector {name!r} needs selector_scores")
        return scores

    select.__name__ = f"_select_{name}"
    return select


SELECTORS: dict[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]] = {
    # score = ground-truth quality (upper bound)
    "oracle": _select_oracle,
    # uniform pick (lower bound = mean quality)
    "random": _select_random,
    # scores = mean token log-prob of each candidate
    "logprob": _select_given("logprob"),
    # scores = reward-service scores
    "reward_model": _select_given("reward_model"),
    # scores = e.g. (negative) length, a heuristic
    "length": _select_given("length"),
    # any other precomputed score
    "scores": _select_given("scores"),
}
"""Selector registry: name -> f(quality (n,), scores (n,) | None) -> scores (n,) to arg-max."""


def _as_groups(x: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if isinstance(x, np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"{name} must be a (P, n) array or a list of 1-D arrays, got shape {x.shape}")
        groups = [np.asarray(row, dtype=np.float64) for row in x]
    else:
        groups = [np.asarray(row, dtype=np.float64) for row in x]
    if not groups:
        raise ValueError(f"{name} is empty")
    for i, g in enumerate(groups):
        if g.ndim != 1 or g.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D array, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name}[{i}] contains non-finite values")
    return groups


def _comb_ratio(m: int, n: int, k: int) -> float:
    """C(m, k) / C(n, k) for 0 <= m <= n, computed as a stable product."""
    if m < k:
        return 0.0
    return float(np.prod((m - np.arange(k)) / (n - np.arange(k))))


def compute_pick_probabilities(scores: np.ndarray, k: int) -> np.ndarray:
    """Exact probability that each candidate is the selector's pick.

    A uniform k-subset of the n candidates is drawn and the arg-max score among it is
    picked, ties broken uniformly. Group the candidates by distinct score, best first;
    a group g with m_g members and a candidates scoring strictly higher holds the
    subset's maximum with probability [C(n−a, k) − C(n−a−m_g, k)] / C(n, k), and by
    symmetry each of its members is then equally likely. With distinct scores this is
    C(n−j, k−1) / C(n, k) for the j-th best.

    Args:
        scores: (n,) selector scores.
        k: subset size, 1 <= k <= n.
    Returns:
        (n,) probabilities summing to 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for n={n} candidates")
    # best group first
    values, inverse, sizes = np.unique(-s, return_inverse=True, return_counts=True)
    above = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    group_prob = np.array([_comb_ratio(n - a, n, k) - _comb_ratio(n - a - m, n, k) for a, m in zip(above, sizes)])
    return (group_prob / sizes)[inverse.ravel()]


@dataclass(frozen=True)
class USQResult:
    """USQ@k with its bounds.

    usq: mean over prompts of the expected quality of the selector's pick.
    random: random-pick bound = mean quality (= expected pass@1 for binary quality).
    oracle: oracle-pick bound = expected best quality among k (= pass@k for binary).
    selection_efficiency: (usq − random) / (oracle − random); NaN when oracle == random.
    per_prompt: (P,) USQ per prompt.
    se: standard error of ``usq`` from the Monte-Carlo draws (0.0 on the exact path).
    """

    k: int
    selector: str
    usq: float
    random: float
    oracle: float
    selection_efficiency: float
    per_prompt: np.ndarray = field(repr=False)
    se: float = 0.0
    exact: bool = True


def _scored_groups(qualities, selector_scores) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Per prompt the candidates' qualities and the selector's scores (None each without scores)."""
    q_groups = _as_groups(qualities, "qualities")
    if selector_scores is None:
        return q_groups, [None] * len(q_groups)
    s_groups = list(_as_groups(selector_scores, "selector_scores"))
    if len(s_groups) != len(q_groups):
        raise ValueError(f"selector_scores has {len(s_groups)} prompts, qualities has {len(q_groups)}")
    return q_groups, s_groups


def _picked_quality(
    q: np.ndarray, s: np.ndarray, k: int, draws: tuple[np.random.Generator, int] | None
) -> tuple[float, float]:
    """The expected quality of the candidate a selector scoring ``s`` picks among k shown, and the
    variance of that estimate: exact over every k-subset and tie-break (``draws`` None, variance 0),
    or the mean of ``draws = (rng, n)`` Monte-Carlo picks."""
    if draws is None:
        return float(compute_pick_probabilities(s, k) @ q), 0.0
    gen, n_draws = draws
    # The first k entries of a uniform permutation are a uniform k-subset in uniform
    # order, so argmax's first-occurrence rule breaks ties uniformly.
    idx = np.argsort(gen.random((n_draws, q.size)), axis=1)[:, :k]
    pick = idx[np.arange(n_draws), np.argmax(s[idx], axis=1)]
    vals = q[pick]
    return float(vals.mean()), (float(vals.var(ddof=1)) / n_draws if n_draws > 1 else math.nan)


def _prompt_usq(i: int, q: np.ndarray, s_in: np.ndarray | None, k: int, selector: str, mc):
    """One prompt's (picked quality, its Monte-Carlo variance, random bound, oracle bound)."""
    if s_in is not None and s_in.shape != q.shape:
        raise ValueError(f"selector_scores[{i}] has shape {s_in.shape}, qualities[{i}] has {q.shape}")
    if not 1 <= k <= q.size:
        raise ValueError(f"k={k} out of range for prompt {i} with n={q.size} candidates")
    s = np.asarray(SELECTORS[selector](q, s_in), dtype=np.float64)
    value, variance = _picked_quality(q, s, k, mc)
    return value, variance, float(q.mean()), float(compute_pick_probabilities(q, k) @ q)


def compute_usq_at_k(
    qualities: np.ndarray | Sequence[np.ndarray],
    selector_scores: np.ndarray | Sequence[np.ndarray] | None,
    k: int,
    *,
    selector: str = "scores",
    exact: bool = True,
    n_draws: int = 10_000,
    rng: np.random.Generator | int | None = None,
) -> USQResult:
    """USQ@k (User Selection Quality) of a selector, with its random and oracle bounds.

    Args:
        qualities: (P, n) or P arrays (n_p,): ground-truth quality of each candidate
            (binary correctness, test pass rate, ROUGE-L, ...).
        selector_scores: same shape as ``qualities`` — the selector's score per
            candidate (mean token log-prob, reward-model score, ...); may be None for
            the ``oracle`` and ``random`` selectors.
        k: candidates shown per prompt, 1 <= k <= n_p for every prompt.
        selector: a key of ``SELECTORS`` (``oracle``, ``random``, ``logprob``,
            ``reward_model``, ``length``, ``scores``).
        exact: compute the expectation exactly over all k-subsets and tie-breaks
            (``compute_pick_probabilities``); otherwise Monte-Carlo with ``n_draws``
            draws per prompt.
        n_draws: Monte-Carlo draws per prompt (``exact=False`` only).
        rng: numpy Generator or seed for the Monte-Carlo path.
    Returns:
        ``USQResult``. The bounds are always exact.
    """
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose from {sorted(SELECTORS)}")
    q_groups, s_groups = _scored_groups(qualities, selector_scores)
    k = int(k)
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    mc = None if exact else (gen, n_draws)
    rows = [_prompt_usq(i, q, s_in, k, selector, mc) for i, (q, s_in) in enumerate(zip(q_groups, s_groups))]
    per_prompt, var_prompt, rand_b, orac_b = (list(col) for col in zip(*rows))

    P = len(q_groups)
    usq = float(np.mean(per_prompt))
    random_b, oracle_b = float(np.mean(rand_b)), float(np.mean(orac_b))
    gap = oracle_b - random_b
    eff = (usq - random_b) / gap if abs(gap) > 1e-12 else math.nan
    return USQResult(
        k=k,
        selector=selector,
        usq=usq,
        random=random_b,
        oracle=oracle_b,
        selection_efficiency=float(eff),
        per_prompt=np.asarray(per_prompt),
        se=float(math.sqrt(np.sum(var_prompt)) / P),
        exact=exact,
    )


# --------------------------------------------------------------------------- per-prompt records


@dataclass
class PromptResult:
    """What the evaluation keeps per prompt and model (one line of ``samples.jsonl``).

    prompt_id: stable id of the prompt in the evaluation set.
    n: number of sampled candidates; c: number judged correct (binary tasks; for
        graded tasks c counts rewards >= the task's success threshold).
    rewards: (n,) ground-truth reward of each candidate.
    diversity: diversity function name -> value of the n-sample set.
    selector_picks: selector name -> index of the candidate it picked among all n
        (k = n view; USQ for smaller k is computed from ``selector_scores``).
    selector_scores: selector name -> (n,) scores, so USQ@k can be recomputed offline.
    completions: optional candidate texts.
    extra: any other per-prompt values (e.g. ROUGE-L, lengths).
    """

    prompt_id: str
    n: int
    c: int
    rewards: list[float]
    diversity: dict[str, float] = field(default_factory=dict)
    selector_picks: dict[str, int] = field(default_factory=dict)
    selector_scores: dict[str, list[float]] = field(default_factory=dict)
    completions: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.c <= self.n:
            raise ValueError(f"prompt {self.prompt_id!r}: need 0 <= c <= n, got n={self.n}, c={self.c}")
        if len(self.rewards) != self.n:
            raise ValueError(f"prompt {self.prompt_id!r}: rewards has {len(self.rewards)} values, n={self.n}")
        for name, sc in self.selector_scores.items():
            if len(sc) != self.n:
                raise ValueError(
                    f"prompt {self.prompt_id!r}: selector_scores[{name!r}] has {len(sc)} values, n={self.n}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
