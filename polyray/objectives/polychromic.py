"""Polychromic SFT: NLL of the reference minus λ times a score-function diversity surrogate.

docs/algorithms.md §1. The objective is L(θ) = E_x[NLL_θ(y*|x) − λ·E_{Y~π_θ}[D(Y)]],
with D a set-level diversity of n sampled completions. Sampling is discrete, so D(Y)
has no pathwise gradient; the score-function identity gives

    ∇E[D(Y)] = E[D(Y) Σ_i ∇log π_θ(y_i|x)],

and subtracting from D(Y), in the term of sample i, any baseline that does not depend
on y_i keeps it unbiased. The leave-one-out marginal a_i = D(Y) − D(Y∖{i}) is such a
choice, so the surrogate

    D̂_θ = Σ_i sg(a_i) · log π_θ(y_i|x)       (gradient: an unbiased estimate of ∇E[D(Y)])

is what the loss differentiates. Note the sum over i: a (1/n) Σ_i form has expected
gradient ∇E[D]/n (it would silently divide λ by n); the sum is what makes the estimate
unbiased for ∇E[D], as ``tests/unit/objectives/test_polychromic.py`` checks against the exact
gradient of a toy categorical policy.

The k-subset form a_i = mean_{S∋i,|S|=k} D(S) − mean_{|S|=k} D(S) has lower variance.
It estimates the gradient of the expected diversity of *k* samples, E[D(Y_k)], with a
known scale: E[Σ_i a_i ∇log π(y_i)] = ((n − k)/k) · ∇E[D(Y_k)] (the baseline
mean_S D(S) contains the subsets with i; mean_{S∋i} − mean_S = (1 − k/n)(mean_{S∋i} −
mean_{S∌i}) and the latter has an independent baseline). The factor is 1 for n = 2k
(e.g. n = 8, k = 4); :func:`compute_subset_advantage_scale` returns k/(n − k).

The bug this avoids: computing D on decoded text under no_grad and subtracting λ·D
from the loss. Such a D is a constant of θ — it sits outside the
autograd graph — so ∇(NLL − λ·D) = ∇NLL exactly; the diversity term changed the
logged loss and nothing else. Here the gradient flows through log π_θ(y_i|x), and the
diversity values enter only as (stop-gradient) weights.
"""

from __future__ import annotations

import itertools
import math

import torch

from polyray.config.advantages import MAX_SUBSETS


def enumerate_subsets(n: int, k: int, max_subsets: int = MAX_SUBSETS) -> list[tuple[int, ...]]:
    """All C(n, k) index subsets of size k (itertools order); ValueError past ``max_subsets``."""
    if not 1 <= k <= n:
        raise ValueError(f"subset size k must satisfy 1 <= k <= n, got k={k}, n={n}")
    count = math.comb(n, k)
    if count > max_subsets:
        raise ValueError(f"C({n}, {k}) = {count} subsets exceeds the limit {max_subsets}; use a smaller k or n")
    return list(itertools.combinations(range(n), k))


def compute_loo_advantages(full: torch.Tensor, loo: torch.Tensor) -> torch.Tensor:
    """Leave-one-out marginals a_{b,i} = D(Y_b) − D(Y_b ∖ {i}).

    full: (B,) diversity of each set; loo: (B, n) diversity of each set without sample i.
    Returns (B, n), detached.
    """
    if full.dim() != 1 or loo.dim() != 2 or loo.shape[0] != full.shape[0]:
        raise ValueError(f"expected full (B,) and loo (B, n), got {tuple(full.shape)} and {tuple(loo.shape)}")
    return (full.unsqueeze(-1) - loo).detach()


def compute_subset_marginals(scores: torch.Tensor, n: int, subsets: list[tuple[int, ...]]) -> torch.Tensor:
    """a_i = mean_{S∋i} f(S) − mean_S f(S) over equal-size subsets of range(n).

    scores: (B, S) f of each subset in ``subsets`` -> (B, n) float64. With all C(n, k) subsets
    (as from :func:`enumerate_subsets`) this is exact; with drawn ones (:func:`sample_k_subsets`
    in the advantages module) both means are over the drawn subsets, and a sample in none of them
    gets 0. Shared by the polychromic SFT k-subset estimator and the polychromic GRPO advantage.
    All zeros when k = n.
    """
    # (S, n) incidence
    member = torch.zeros(len(subsets), n, dtype=torch.float64, device=scores.device)
    for row, s in enumerate(subsets):
        member[row, list(s)] = 1.0
    f = scores.to(torch.float64)
    mean_all = f.mean(dim=-1, keepdim=True)
    # (n,) subsets containing i: C(n − 1, k − 1) for all subsets
    count = member.sum(dim=0)
    # (B, n) mean over S∋i
    per_sample = torch.where(count > 0, f @ member / count.clamp(min=1.0), mean_all)
    return per_sample - mean_all


def compute_subset_advantage_scale(n: int, k: int) -> float:
    """k / (n − k): multiply k-subset advantages by it for an unbiased estimate of ∇E[D(Y_k)]."""
    if not 1 <= k < n:
        raise ValueError(f"the k-subset estimator needs 1 <= k < n, got k={k}, n={n}")
    return k / (n - k)


def compute_diversity_surrogate(
    # any shape: sequence log π_θ(y|x) of sampled completions (carries grad)
    sample_logp: torch.Tensor,
    # same shape: their diversity marginals; treated as constants
    advantages: torch.Tensor,
    # B, the whole batch's prompts the surrogate is averaged over
    num_groups: int,
    # same shape: sequence log π_old, when the samples are off-policy
    old_logp: torch.Tensor | None = None,
    ratio_clip: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D̂_θ's share from these samples, their weights w): (1/B) Σ sg(a) · w · log π_θ(y|x).

    A sum over samples, so any split of a batch's samples (ranks, micro-batches, groups cut in
    two) gives shares that add up to the batch's surrogate when each share divides by the
    whole batch's ``num_groups``. w = sg(min(exp(log π_θ − log π_old), ratio_clip)), else 1.
    """
    if ratio_clip <= 0:
        raise ValueError(f"ratio_clip must be > 0, got {ratio_clip}")
    adv = advantages.detach().to(sample_logp.dtype)
    if old_logp is None:
        weights = torch.ones_like(adv)
    else:
        weights = torch.exp(sample_logp.detach() - old_logp.detach()).clamp(max=ratio_clip)
    return (adv * weights * sample_logp).sum() / max(num_groups, 1), weights


def compute_polychromic_sft_loss(
    # () NLL of the reference completions (carries grad); None: a part without any
    nll: torch.Tensor | None,
    # (B, n) sequence log π_θ(y_i|x) of the sampled completions (carries grad)
    sample_logp: torch.Tensor | None,
    # (B, n) diversity marginals a_{b,i}; treated as constants
    advantages: torch.Tensor | None,
    lam: float,
    # (B, n) sequence log π_old of the samples, when they are off-policy
    old_logp: torch.Tensor | None = None,
    ratio_clip: float = 2.0,
    # the whole batch's B when these are one shard's groups (default B)
    num_groups: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = nll − λ · (1/B) Σ_b Σ_i sg(a_{b,i}) · w_{b,i} · log π_θ(y_{b,i}|x_b).

    w = sg(min(exp(log π_θ − log π_old), ratio_clip)) when ``old_logp`` is given (samples
    drawn by an older adapter version; a truncated per-sample ratio, which trades a
    little bias for bounded variance), else 1. Summing over i (not averaging) makes the
    gradient an unbiased estimate of ∇E[D] (module docstring; docs/algorithms.md §1).
    With λ = 0 the returned loss *is* ``nll``, so gradients equal plain SFT's exactly.

    One part of a step's batch (the learner's micro-batches, a rank's shard) is any subset of its
    references and samples: the samples then come flat (any shape, the same for every sample
    tensor; ``num_groups`` the whole batch's B), and the parts' losses add up to the batch's. A part
    without references (``nll`` None) gives −λ · surrogate, a zero at λ = 0 that still carries its
    samples' forward (a rank whose part holds only samples joins the gradient all-reduce); one
    without samples (``sample_logp`` None) gives ``nll``.

    Metrics (floats): ``nll`` (with references), and with samples ``diversity_surrogate`` (mean_b
    Σ_i a w log π, the term λ multiplies), ``adv_mean``, ``adv_abs_mean``, ``weight_mean`` and the
    sums ``adv_sum``, ``weight_sum`` (which add up over parts).
    """
    metrics: dict[str, float] = {} if nll is None else {"nll": float(nll.detach())}
    if sample_logp is None:
        if nll is None:
            raise ValueError("a part needs references (nll) or samples (sample_logp)")
        return nll, metrics
    if advantages is None or sample_logp.shape != advantages.shape or sample_logp.dim() == 0:
        shape = None if advantages is None else tuple(advantages.shape)
        raise ValueError(f"sample_logp and advantages must have one shape, got {tuple(sample_logp.shape)} and {shape}")
    if sample_logp.dim() != 2 and num_groups is None:
        raise ValueError(f"flat samples {tuple(sample_logp.shape)} need num_groups (they are (B, n) otherwise)")
    if old_logp is not None and old_logp.shape != sample_logp.shape:
        raise ValueError(f"old_logp must match sample_logp {tuple(sample_logp.shape)}, got {tuple(old_logp.shape)}")
    B = num_groups if num_groups is not None else sample_logp.shape[0]
    surrogate, weights = compute_diversity_surrogate(sample_logp, advantages, B, old_logp, ratio_clip)
    if nll is None:
        loss = -lam * surrogate
    else:
        loss = nll if lam == 0 else nll - lam * surrogate
    adv = advantages.detach()
    metrics.update(
        diversity_surrogate=float(surrogate.detach()),
        adv_mean=float(adv.mean()),
        adv_abs_mean=float(adv.abs().mean()),
        weight_mean=float(weights.mean()),
        adv_sum=float(adv.sum()),
        weight_sum=float(weights.sum()),
    )
    return loss, metrics


def compute_diversity_advantages(
    name: str, groups: list[list[str]], estimator: str, k: int, embedding_dtype: str = "float32"
) -> torch.Tensor:
    """(B, n) per-sample diversity marginals of each group (docs/algorithms.md §1): leave-one-out or k-subset.

    All the sets of all groups go through one ``compute_diversity_batch`` call, so an
    embedding-based diversity embeds every text once (its encoder's weights in ``embedding_dtype``).
    """
    from polyray.diversity import compute_diversity_batch

    n = len(groups[0])
    if estimator == "loo":
        subsets = [tuple(range(n))] + [tuple(j for j in range(n) if j != i) for i in range(n)]
    else:
        subsets = enumerate_subsets(n, k)
    values = compute_diversity_batch(
        name, [[g[i] for i in s] for g in groups for s in subsets], embedding_dtype=embedding_dtype
    )
    # (B, S)
    table = torch.tensor(values, dtype=torch.float64).view(len(groups), len(subsets))
    if estimator == "loo":
        return compute_loo_advantages(table[:, 0], table[:, 1:])
    return compute_subset_advantage_scale(n, k) * compute_subset_marginals(table, n, subsets)
