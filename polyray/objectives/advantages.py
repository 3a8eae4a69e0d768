"""Advantage estimators for GRPO-family updates: one registry of pure functions.

docs/algorithms.md §3. Every estimator is a pure function from what a GRPO step knows about
its groups — rewards (B, G) of B prompts with G samples each, the completion texts, the
sampling log-probs and how far the phase has come (:class:`AdvantageInputs`) — to advantages
(B, G). Each has its own config model (a member of the :data:`~polyray.config.advantages.AdvantageConfig`
union, keyed by ``type``, in :mod:`polyray.config.advantages`, where each also checks that it fits
the group size), and :data:`ADVANTAGE_ESTIMATORS` maps the type to its config model and to a function
``(config, inputs) -> (B, G)`` that passes the config's parameters on: the learner calls
:func:`compute_advantages` and never looks at the type itself.

- ``group``: (r − mean) / (std + eps) (DeepSeekMath GRPO, arXiv 2402.03300);
  ``scale_by_std=False`` is Dr. GRPO (arXiv 2503.20783).
- ``rloo``: r_i − mean_{j≠i} r_j (Ahmadian et al. 2024, arXiv 2402.14740).
- ``passk``: the analytic pass@k advantage for binary rewards (Chen et al. 2025,
  arXiv 2508.10751).
- ``polychromic``: set-marginal advantage mean_{S∋i} f(S) − mean_S f(S) over k-subsets
  with f(S) = mean reward × diversity (Hamid et al. 2025, arXiv 2509.25424); with
  ``set_fn="max"`` it is σ times the pass@k advantage; past ``max_subsets`` subsets, a
  Monte-Carlo estimate over that many uniformly drawn subsets.
- ``unlikeliness``: rewards of likely samples scaled down by their likelihood rank in the group,
  then group-normalised (He et al. 2025, arXiv 2506.02355).
- ``repeat_penalty``: rewards minus a penalty for each other sample of the group with the same
  answer, then group-normalised (batch exploration of Song et al. 2025, arXiv 2509.06941).
- ``polychromic_correct``: ``polychromic`` whose diversity is that of the subset's *correct*
  samples only, so wrong answers earn nothing by being different (the polychromic objective of
  Hamid et al. 2025, arXiv 2509.25424, with the diversity restricted to successes).
- ``w_reinforce``: W-REINFORCE, A = λ for a correct sample and −1 for a wrong one, no baseline
  (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement", arXiv 2506.01347).
- ``risk_seeking``: RS-GRPO's A_i = (exp(β(r_i − S)) − 1)/β with S = (1/β)·log mean_j exp(β r_j),
  the advantage of a risk-seeking objective between mean and max reward, weighting a group's rare
  successes up; β → 0 is r − mean r ("Risk-Sensitive RL for Alleviating Exploration Dilemmas in
  Large Language Models", arXiv 2509.24261).
- ``mix``: a blend of two estimators whose weight moves from the first to the second over the
  phase (e.g. passk early, group late); :func:`mix_magnitude_shares` says how much of the blend
  each carries by magnitude, which differs from its weight when their scales differ.
- ``anneal``: pass@k → pass@1 annealing (Walder & Karkhanis 2025, arXiv 2505.15201; Chen et al.
  2025, arXiv 2508.10751): the ``mix`` of passk and group with both scaled to group's mean |A|,
  so the switch changes the direction of the step, not its size.

Any estimator's ``match_group_scale`` rescales its advantages, per step, to the mean |A| that
``group`` gives the same rewards (:func:`compute_scale_matched_advantages`), so estimators compared
under one learning rate and KL weight differ in direction, not in step size.

**Samples with no score.** A reward may have no score for a sample (the LLM judge never answered
parseably: ``RewardResult.score`` None, NaN in the rewards). :func:`compute_advantages` leaves such a
sample out rather than scoring it 0: its group's advantages are the estimator's over the group's
scored samples alone (for ``group``, their mean and std), and the sample gets advantage 0. A group
left with too few scored samples for the estimator (fewer than 2, or fewer than its ``k``) carries
no advantage.

Also :func:`dynamic_sampling_mask` (DAPO, arXiv 2503.14476). Clip-higher (separate
ε_low / ε_high) lives in :func:`polyray.objectives.grpo.compute_grpo_loss`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from polyray.config.advantages import (
    MAX_SUBSETS,
    AdvantageConfigBase,
    AnnealAdvantageConfig,
    GroupAdvantageConfig,
    MixAdvantageConfig,
    PassKAdvantageConfig,
    PolychromicAdvantageConfig,
    PolychromicCorrectAdvantageConfig,
    RepeatPenaltyAdvantageConfig,
    RiskSeekingAdvantageConfig,
    RlooAdvantageConfig,
    UnlikelinessAdvantageConfig,
    WReinforceAdvantageConfig,
)
from polyray.objectives.polychromic import compute_subset_marginals, enumerate_subsets

# (prompt index b, sorted sample indices) -> d(S)
SubsetDiversity = Callable[[int, tuple[int, ...]], float]


@dataclass(frozen=True)
class AdvantageInputs:
    """What a GRPO step passes every estimator about its B groups of G samples."""

    # (B, G)
    rewards: torch.Tensor
    # (B, G) completion texts
    texts: list[list[str]]
    # (B, G, tokens): log π_old of each sampled token
    logprobs: list[list[list[float]]] | None = None
    # fraction of the phase's steps done before this one, in [0, 1]
    progress: float = 0.0
    # the phase's step (seeds any sampling an estimator does)
    step: int = 0

    def select(self, rows: list[int], cols: list[int] | None = None) -> AdvantageInputs:
        """The inputs of groups ``rows`` (each cut to samples ``cols`` when given)."""
        cols_ = list(range(self.rewards.shape[1])) if cols is None else cols
        logprobs = None if self.logprobs is None else [[self.logprobs[b][g] for g in cols_] for b in rows]
        return AdvantageInputs(
            self.rewards[rows][:, cols_],
            [[self.texts[b][g] for g in cols_] for b in rows],
            logprobs,
            self.progress,
            self.step,
        )

    def mean_logprobs(self) -> torch.Tensor:
        """(B, G) float64: each sample's mean token log-prob under the sampling policy (0 for an empty one)."""
        if self.logprobs is None:
            raise ValueError("this advantage estimator needs the samples' sampling log-probs")
        B, G = self.rewards.shape
        if len(self.logprobs) != B or any(len(g) != G for g in self.logprobs):
            raise ValueError(f"logprobs must be (B, G) = {(B, G)} lists of per-token log-probs")
        return torch.tensor(
            [[math.fsum(lp) / len(lp) if lp else 0.0 for lp in g] for g in self.logprobs], dtype=torch.float64
        )


def _check_2d(rewards: torch.Tensor, name: str) -> tuple[int, int]:
    if rewards.dim() != 2:
        raise ValueError(f"{name} advantages need rewards of shape (B, G), got {tuple(rewards.shape)}")
    return rewards.shape[0], rewards.shape[1]


def compute_group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i − mean_g r) / (std_g r + eps); without the division when ``scale_by_std`` is off.

    rewards: (..., G) -> advantages (..., G). std is the unbiased sample std (torch default),
    as in DeepSeekMath's reference implementation. Dr. GRPO: ``scale_by_std=False``.
    """
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale_by_std:
        return centered
    if rewards.shape[-1] < 2:
        raise ValueError("group advantages with scale_by_std need at least 2 samples per group")
    return centered / (rewards.std(dim=-1, keepdim=True) + eps)


UNIFORM_EPS = 1e-6
"""A group whose rewards' std is below this is a uniform-reward group (all equal)."""


def compute_shaped_group_advantages(
    rewards: torch.Tensor, shaped: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group advantages of reward-shaped rewards ``shaped`` (``unlikeliness``, ``repeat_penalty``).

    A group whose rewards differ: (r̃ − mean r̃) / (std r̃ + eps), ``group``'s advantages of r̃.
    A uniform-reward group (std r < :data:`UNIFORM_EPS`): r̃ − mean r̃, centred and *not* divided,
    since all of its spread is the shaping's, which is β times a fixed pattern: dividing by it would
    give the same full-size advantages for every β > 0; undivided they are β times that pattern, in
    reward units (docs/algorithms.md §3). Without ``scale_by_std``: r̃ − mean r̃ for every group.
    rewards, shaped (B, G) -> (B, G) float64.
    """
    shaped = shaped.to(torch.float64)
    centered = shaped - shaped.mean(dim=-1, keepdim=True)
    if not scale_by_std:
        return centered
    # (B, 1)
    uniform = rewards.to(torch.float64).std(dim=-1, keepdim=True) < UNIFORM_EPS
    scale = torch.where(uniform, torch.ones_like(uniform, dtype=torch.float64), shaped.std(dim=-1, keepdim=True) + eps)
    return centered / scale


def compute_scale_matched_advantages(advantages: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``advantages`` rescaled to the mean |A| of ``reference`` over the whole step (all B·G samples).

    scale = mean|A_ref| / mean|A|, so both move the policy by the same mean step size under the same
    KL weight and learning rate and differ only in direction (docs/algorithms.md §3). All-zero
    ``advantages`` are returned as they are (nothing to scale); an all-zero reference scales to zero.
    advantages, reference (B, G) -> (B, G), advantages' dtype.
    """
    if advantages.shape != reference.shape:
        raise ValueError(
            f"scale matching needs equal shapes, got {tuple(advantages.shape)} and {tuple(reference.shape)}"
        )
    size = advantages.to(torch.float64).abs().mean()
    if size == 0:
        return advantages
    scale = reference.to(torch.float64).abs().mean() / size
    return (advantages.to(torch.float64) * scale).to(advantages.dtype)


def compute_mix_magnitude_shares(early: torch.Tensor, late: torch.Tensor, w: float) -> tuple[float, float]:
    """Each ``mix`` component's share of the blend by magnitude: (1 − w)·mean|A_early| and w·mean|A_late|
    over their sum (the nominal weights 1 − w, w when both estimators have the same mean |A|).
    early, late (B, G); (nan, nan) when both are zero."""
    e = (1.0 - w) * float(early.to(torch.float64).abs().mean())
    l_ = w * float(late.to(torch.float64).abs().mean())
    total = e + l_
    return (e / total, l_ / total) if total > 0 else (math.nan, math.nan)


def compute_rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean r). rewards (..., G) -> (..., G)."""
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError(f"rloo needs at least 2 samples per group, got {G}")
    loo_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (G - 1)
    return rewards - loo_mean


def compute_passk_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-6) -> torch.Tensor:
    """Analytic pass@k advantages for binary rewards (Chen et al. 2025, arXiv 2508.10751).

    Per group of n = G samples with c correct, scoring each k-subset by its pass (max reward):

        ρ = 1 − C(n−c, k)/C(n, k)                 mean pass over k-subsets
        σ = sqrt(ρ(1−ρ)) + eps                    their population std (+ eps)
        A_pos = (1 − ρ)/σ
        A_neg = (1 − ρ − C(n−c−1, k−1)/C(n−1, k−1))/σ

    i.e. A_i = (mean_{S∋i} max_S r − mean_S max_S r)/σ. Groups that are all right, all
    wrong, or have fewer than k wrong samples (ρ = 1) get zero advantages.
    rewards (B, G) of 0/1 -> (B, G), same dtype.
    """
    _, n = _check_2d(rewards, "passk")
    if not 1 <= k <= n:
        raise ValueError(f"passk needs 1 <= k <= G, got k={k}, G={n}")
    if not bool(((rewards == 0) | (rewards == 1)).all()):
        raise ValueError("passk advantages need binary rewards (every value 0 or 1)")
    # [c] -> (A_neg, A_pos)
    table = torch.zeros(n + 1, 2, dtype=torch.float64)
    total, total_minus = math.comb(n, k), math.comb(n - 1, k - 1)
    for c in range(n + 1):
        rho = 1.0 - math.comb(n - c, k) / total
        sigma = math.sqrt(max(rho * (1.0 - rho), 0.0)) + eps
        # a wrong sample's subsets all fail when the other k−1 are wrong too: C(n−c−1, k−1) of them
        all_wrong = math.comb(n - c - 1, k - 1) if c < n else 0
        table[c, 1] = (1.0 - rho) / sigma
        table[c, 0] = (1.0 - rho - all_wrong / total_minus) / sigma
    # (B, G)
    correct = rewards.to(torch.long)
    # (B, G)
    c = correct.sum(dim=-1, keepdim=True).expand_as(correct)
    return table.to(rewards.device)[c, correct].to(rewards.dtype)


def compute_polychromic_advantages(
    rewards: torch.Tensor,
    k: int,
    set_fn: Literal["mean_diversity", "max"] = "mean_diversity",
    diversity: SubsetDiversity | None = None,
    distances: torch.Tensor | None = None,
    max_subsets: int = MAX_SUBSETS,
    sample_subsets: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Set-marginal advantages A_i = mean_{S∋i,|S|=k} f(S) − mean_{|S|=k} f(S) (arXiv 2509.25424).

    ``set_fn="mean_diversity"``: f(S) = (mean_{j∈S} r_j) · d(S), with d(S) from exactly one of
      - ``diversity(b, S)``: any set diversity of prompt b's samples S (called per subset), or
      - ``distances`` (B, G, G): d(S) = mean pairwise distance within S (vectorised);
    needs k >= 2 (a single sample has no diversity).
    ``set_fn="max"``: f(S) = max_{j∈S} r_j; for 0/1 rewards this equals
      σ · ``compute_passk_advantages(rewards, k)`` with σ = sqrt(ρ(1−ρ)) + eps.

    No normalisation is applied. rewards (B, G) -> (B, G), same dtype. All C(G, k) subsets when
    there are at most ``max_subsets``; past that, ValueError, unless ``sample_subsets`` is given:
    then that many subsets drawn uniformly with replacement (``seed``) stand in for all of them,
    each sample's "mean over S∋i" being over the drawn subsets that contain it (a Monte-Carlo
    estimate whose mean is the exact advantage's up to the drawn subsets' normalisation).
    """
    B, G = _check_2d(rewards, "polychromic")
    if sample_subsets is not None and math.comb(G, k) > max_subsets:
        subsets = sample_k_subsets(G, k, sample_subsets, seed)
    else:
        subsets = enumerate_subsets(G, k, max_subsets)
    # (S, k)
    idx = torch.tensor(subsets, dtype=torch.long, device=rewards.device)
    r = rewards.to(torch.float64)
    # (B, S, k)
    in_set = r[:, idx]
    if set_fn == "max":
        if diversity is not None or distances is not None:
            raise ValueError("set_fn='max' takes no diversity or distances")
        # (B, S)
        f = in_set.max(dim=-1).values
    elif set_fn == "mean_diversity":
        if (diversity is None) == (distances is None):
            raise ValueError("set_fn='mean_diversity' needs exactly one of diversity= or distances=")
        if k < 2:
            raise ValueError("set_fn='mean_diversity' needs k >= 2: a single sample has no diversity")
        if distances is not None:
            if distances.shape != (B, G, G):
                raise ValueError(f"distances must be (B, G, G) = {(B, G, G)}, got {tuple(distances.shape)}")
            # pairs within a subset
            p, q = torch.triu_indices(k, k, offset=1, device=rewards.device)
            dist = distances.to(torch.float64)
            b = torch.arange(B, device=rewards.device)[:, None, None]
            # (B, S)
            d = dist[b, idx[None, :, p], idx[None, :, q]].mean(dim=-1)
        else:
            d = torch.tensor([[float(diversity(bi, s)) for s in subsets] for bi in range(B)], dtype=torch.float64)
            d = d.to(rewards.device)
        # (B, S)
        f = in_set.mean(dim=-1) * d
    else:
        raise ValueError(f"unknown set_fn {set_fn!r}; expected 'mean_diversity' or 'max'")
    return compute_subset_marginals(f, G, subsets).to(rewards.dtype)


def sample_k_subsets(n: int, k: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` k-subsets of range(n), each uniform over all C(n, k), drawn with replacement; sorted tuples."""
    if not 1 <= k <= n or count < 1:
        raise ValueError(f"need 1 <= k <= n and count >= 1, got n={n}, k={k}, count={count}")
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(count)]


def compute_unlikeliness_advantages(
    rewards: torch.Tensor, logprobs: torch.Tensor, beta: float, scale_by_std: bool = True
) -> torch.Tensor:
    """Unlikeliness reward (He et al. 2025, arXiv 2506.02355), then group advantages.

    Per group, rank_i = the position of sample i when the G samples are sorted by sampling
    log-prob, ascending (0 = least likely, G−1 = most likely; tied samples share their mean rank,
    as ``scipy.stats.rankdata(method="average") − 1``, so identical samples are shaped alike), and

        r̃_i = r_i · (1 − β · rank_i / G)          A = group advantages of r̃

    so a correct sample the policy already finds likely earns less than a rare correct one, and a
    zero reward stays zero. In an all-correct group A = r̃ − mean r̃, not divided by its std, so the
    advantages are proportional to β (:func:`compute_shaped_group_advantages`). ``logprobs`` (B, G) are each sample's length-normalised log-prob (the
    mean over its tokens, as the paper's code does). rewards (B, G) -> (B, G), same dtype.
    """
    B, G = _check_2d(rewards, "unlikeliness")
    if logprobs.shape != (B, G):
        raise ValueError(f"unlikeliness needs logprobs of shape {(B, G)}, got {tuple(logprobs.shape)}")
    lp = logprobs.to(torch.float64)
    # (B, G): samples less likely than sample i
    below = (lp.unsqueeze(1) < lp.unsqueeze(2)).sum(-1)
    # (B, G): samples as likely, i included
    tied = (lp.unsqueeze(1) == lp.unsqueeze(2)).sum(-1)
    # (B, G) mid-rank of each sample
    ranks = below + (tied - 1) / 2.0
    shaped = rewards.to(torch.float64) * (1.0 - beta * ranks / G)
    return compute_shaped_group_advantages(rewards, shaped, scale_by_std).to(rewards.dtype)


def compute_repeat_penalty_advantages(
    rewards: torch.Tensor, answers: list[list[str]], beta: float, scale_by_std: bool = True
) -> torch.Tensor:
    """Batch repeated-answer penalty (batch exploration, Song et al. 2025, arXiv 2509.06941), then group advantages.

    Per group, m_i = the number of *other* samples whose answer equals sample i's, and

        r̃_i = r_i − β · m_i / (G − 1)             A = group advantages of r̃

    so among equally rewarded samples, the ones repeating an answer the group already has get
    less than one that is alone with its answer; a group of G distinct answers is left as it is. In a
    uniform-reward group A = r̃ − mean r̃, not divided by its std, so the advantages are proportional
    to β (:func:`compute_shaped_group_advantages`).
    ``answers`` (B, G): each sample's answer key (e.g. its canonical expression). rewards (B, G) -> (B, G).
    """
    B, G = _check_2d(rewards, "repeat_penalty")
    if G < 2:
        raise ValueError("repeat_penalty needs at least 2 samples per group")
    if len(answers) != B or any(len(a) != G for a in answers):
        raise ValueError(f"repeat_penalty needs (B, G) = {(B, G)} answers")
    counts = torch.tensor([[sum(a == b for b in group) - 1 for a in group] for group in answers], dtype=torch.float64)
    shaped = rewards.to(torch.float64) - beta * counts / (G - 1)
    return compute_shaped_group_advantages(rewards, shaped, scale_by_std).to(rewards.dtype)


def compute_correct_diversity(
    texts: list[str], correct: list[bool], diversity: Callable[[list[str]], float], single: float = 1.0
) -> float:
    """d_c(S): ``diversity`` of the correct texts only; ``single`` for one correct text, 0 for none.

    With ``countdown_expr`` (distinct normalised expressions / n) and ``single`` = 1, it is
    (distinct correct answers) / (correct answers), so mean reward × d_c = distinct correct answers / k
    for binary rewards (``polychromic_correct``, docs/algorithms.md §3).
    """
    kept = [t for t, ok in zip(texts, correct) if ok]
    if not kept:
        return 0.0
    return single if len(kept) == 1 else float(diversity(kept))


def compute_w_reinforce_advantages(rewards: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """W-REINFORCE advantages (Zhu et al. 2025, arXiv 2506.01347, §5): A = λ if r = 1, −1 if r = 0.

    The paper writes RLVR's objective with rewards ±1 as PSR + NSR (positive and negative sample
    reinforcement) and weights the positive part by λ (0.1 in its experiments):

        L_W-REINFORCE(θ) = λ·L_PSR(θ) + L_NSR(θ)
                         = −E_x[ λ·Σ_{y: r=+1} log π_θ(y|x) − Σ_{y: r=−1} log π_θ(y|x) ]

    i.e. a REINFORCE weight of λ on every correct sample and −1 on every wrong one, with no
    baseline: a group of all-wrong samples still pushes them all down, an all-correct one pulls
    them all up by λ. polyray's 0/1 rewards are the paper's ±1 (r = 1 ↔ +1, r = 0 ↔ −1).
    rewards (B, G) of 0/1 -> (B, G), same dtype.
    """
    _check_2d(rewards, "w_reinforce")
    if not bool(((rewards == 0) | (rewards == 1)).all()):
        raise ValueError("w_reinforce advantages need binary rewards (every value 0 or 1)")
    return torch.where(rewards == 1, torch.full_like(rewards, lam), torch.full_like(rewards, -1.0))


def compute_risk_seeking_advantages(rewards: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Risk-seeking advantages (RS-GRPO, arXiv 2509.24261): the advantage in the group estimate of ∇(1/β)·log E[exp(β r)].

    Per group of G rewards, with β > 0:

        S   = (1/β)·log mean_j exp(β r_j)        the group's risk-seeking value, between mean r and max r
        A_i = (exp(β(r_i − S)) − 1)/β

    mean_i exp(β(r_i − S)) = 1, so each group's advantages sum to zero; a group of equal rewards gets
    exactly 0; as β → 0, A_i → r_i − mean r (Dr. GRPO's un-normalised baseline). A_i lies in
    [−1/β, (G − 1)/β]: a high reward that is rare in its group is weighted up, a low one among high
    ones is pushed down by at most 1/β. S is the max-shifted logsumexp, (logsumexp(β r) − log G)/β
    = M + log1p(mean_j expm1(β(r_j − M)))/β with M = max r, written with expm1/log1p so that no β
    overflows, a small β loses no precision and equal rewards give 0 exactly.
    rewards (..., G) -> (..., G), same dtype (computed in float64).
    """
    if not beta > 0:
        raise ValueError(f"risk_seeking needs beta > 0, got {beta}")
    r = rewards.to(torch.float64)
    # β(r − M) <= 0
    shifted = beta * (r - r.amax(dim=-1, keepdim=True))
    # β(S − M), in [−log G, 0]
    log_mean = torch.log1p(torch.expm1(shifted).mean(dim=-1, keepdim=True))
    return (torch.expm1(shifted - log_mean) / beta).to(rewards.dtype)


def mix_weight(progress: float, start: float, end: float) -> float:
    """Weight of the late estimator: 0 before ``start``, 1 from ``end``, linear between (a step at start = end)."""
    if progress < start:
        return 0.0
    if progress >= end:
        return 1.0
    return (progress - start) / (end - start)


def dynamic_sampling_mask(advantages: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DAPO dynamic sampling (arXiv 2503.14476): True for groups that carry a non-zero advantage.

    advantages (B, G) -> bool (B,). Filtering on the advantages, not the rewards: for the
    group/rloo/passk estimators a group of equal rewards has zero advantages either way, but the
    polychromic estimator gives an all-correct group non-zero diversity marginals, which a
    reward test would throw away. ``eps``: equal non-binary rewards leave rounding error in the
    mean, which the group std's 1e-6 floor can blow up to ~1e-10; real signal is far above 1e-6.
    """
    _check_2d(advantages, "dynamic sampling")
    return advantages.abs().amax(dim=-1) > eps


# ----------------------------------------------------------------------------- registry


def _group(cfg: GroupAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_group_advantages(inputs.rewards, scale_by_std=cfg.scale_by_std)


def _rloo(cfg: RlooAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_rloo_advantages(inputs.rewards)


def _passk(cfg: PassKAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_passk_advantages(inputs.rewards, cfg.k)


def _polychromic(cfg: PolychromicAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    from polyray.diversity import compute_diversity

    texts = inputs.texts
    return compute_polychromic_advantages(
        inputs.rewards,
        cfg.k,
        diversity=lambda b, S: compute_diversity(cfg.diversity, [texts[b][i] for i in S]),
        max_subsets=cfg.max_subsets,
        sample_subsets=cfg.sample_subsets,
        seed=inputs.step,
    )


def _unlikeliness(cfg: UnlikelinessAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_unlikeliness_advantages(inputs.rewards, inputs.mean_logprobs(), cfg.beta, cfg.scale_by_std)


def _repeat_penalty(cfg: RepeatPenaltyAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    from polyray.tasks import answer_key

    answers = [[answer_key(t, cfg.answer) for t in group] for group in inputs.texts]
    return compute_repeat_penalty_advantages(inputs.rewards, answers, cfg.beta, cfg.scale_by_std)


def _polychromic_correct(cfg: PolychromicCorrectAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    from polyray.diversity import get_diversity_fn

    fn, texts = get_diversity_fn(cfg.diversity), inputs.texts
    # (B, G)
    correct = (inputs.rewards >= cfg.threshold).tolist()
    # many subsets share their correct members
    cache: dict[tuple[int, tuple[int, ...]], float] = {}

    def diversity(b: int, S: tuple[int, ...]) -> float:
        key = (b, tuple(i for i in S if correct[b][i]))
        if key not in cache:
            cache[key] = compute_correct_diversity([texts[b][i] for i in S], [correct[b][i] for i in S], fn, cfg.single)
        return cache[key]

    return compute_polychromic_advantages(
        inputs.rewards,
        cfg.k,
        diversity=diversity,
        max_subsets=cfg.max_subsets,
        sample_subsets=cfg.sample_subsets,
        seed=inputs.step,
    )


def _w_reinforce(cfg: WReinforceAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_w_reinforce_advantages(inputs.rewards, cfg.lam)


def _risk_seeking(cfg: RiskSeekingAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    return compute_risk_seeking_advantages(inputs.rewards, cfg.beta)


def _anneal(cfg: AnnealAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    # the blend itself; compute_advantages applies cfg.match_group_scale to it
    return _mix(cfg.as_mix(), inputs)


def _mix(cfg: MixAdvantageConfig, inputs: AdvantageInputs) -> torch.Tensor:
    w = mix_weight(inputs.progress, cfg.start, cfg.end)
    if w == 0.0:
        return compute_advantages(cfg.early, inputs)
    if w == 1.0:
        return compute_advantages(cfg.late, inputs)
    return (1.0 - w) * compute_advantages(cfg.early, inputs) + w * compute_advantages(cfg.late, inputs)


ADVANTAGE_ESTIMATORS: dict[str, tuple[type[AdvantageConfigBase], Callable[..., torch.Tensor]]] = {
    "group": (GroupAdvantageConfig, _group),
    "rloo": (RlooAdvantageConfig, _rloo),
    "passk": (PassKAdvantageConfig, _passk),
    "polychromic": (PolychromicAdvantageConfig, _polychromic),
    "unlikeliness": (UnlikelinessAdvantageConfig, _unlikeliness),
    "repeat_penalty": (RepeatPenaltyAdvantageConfig, _repeat_penalty),
    "polychromic_correct": (PolychromicCorrectAdvantageConfig, _polychromic_correct),
    "w_reinforce": (WReinforceAdvantageConfig, _w_reinforce),
    "risk_seeking": (RiskSeekingAdvantageConfig, _risk_seeking),
    "mix": (MixAdvantageConfig, _mix),
    "anneal": (AnnealAdvantageConfig, _anneal),
}
"""type -> (config model, function (config, :class:`AdvantageInputs`) -> advantages (B, G))."""


def compute_advantages(cfg, inputs: AdvantageInputs) -> torch.Tensor:
    """Advantages (B, G) of ``inputs`` by the estimator ``cfg`` configures; with its
    ``match_group_scale``, rescaled to ``group``'s mean |A| on the same rewards. NaN rewards (no
    score) are left out of their group and get advantage 0 (:func:`compute_scored_advantages`)."""
    scored = ~torch.isnan(inputs.rewards)
    if not bool(scored.all()):
        adv = compute_scored_advantages(lambda sub: ADVANTAGE_ESTIMATORS[cfg.type][1](cfg, sub), inputs, scored)
        if cfg.match_group_scale:
            reference = compute_scored_advantages(
                lambda sub: compute_group_advantages(sub.rewards.to(torch.float64)), inputs, scored
            )
            adv = compute_scale_matched_advantages(adv, reference.to(adv.dtype))
        return adv
    adv = ADVANTAGE_ESTIMATORS[cfg.type][1](cfg, inputs)
    if cfg.match_group_scale:
        adv = compute_scale_matched_advantages(adv, compute_group_advantages(inputs.rewards.to(torch.float64)))
    return adv


def compute_scored_advantages(
    estimate: Callable[[AdvantageInputs], torch.Tensor], inputs: AdvantageInputs, scored: torch.Tensor
) -> torch.Tensor:
    """Advantages (B, G) with the unscored samples left out: ``estimate`` (inputs -> advantages) runs
    once on the fully scored groups together and once on each other group cut to its scored samples;
    unscored samples, and a cut group the estimator refuses (too few samples: ValueError), get 0.
    scored (B, G) bool. Where every sample is scored this is ``estimate(inputs)``."""
    B, _ = _check_2d(inputs.rewards, "scored")
    out = torch.zeros_like(inputs.rewards)
    full = [b for b in range(B) if bool(scored[b].all())]
    if full:
        out[full] = estimate(inputs.select(full)).to(out.dtype)
    for b in range(B):
        cols = scored[b].nonzero().flatten().tolist()
        # one scored sample has no baseline to be compared with
        if len(cols) == scored.shape[1] or len(cols) < 2:
            continue
        try:
            out[b, cols] = estimate(inputs.select([b], cols))[0].to(out.dtype)
        # e.g. passk's k larger than the scored samples
        except ValueError:
            continue
    return out


def mix_magnitude_shares(cfg: MixAdvantageConfig, inputs: AdvantageInputs) -> tuple[float, float]:
    """(early, late) share of a ``mix``'s advantages by magnitude at ``inputs.progress``
    (:func:`compute_mix_magnitude_shares`), each component computed as the mix computes it."""
    w = mix_weight(inputs.progress, cfg.start, cfg.end)
    return compute_mix_magnitude_shares(compute_advantages(cfg.early, inputs), compute_advantages(cfg.late, inputs), w)
