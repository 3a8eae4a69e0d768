"""Advantage estimators for GRPO-family updates: one registry of pure functions.

docs/algorithms.md §3. Every estimator is a pure function from rewards (B, G) — B
prompts, G samples each — to advantages (B, G). Each has its own config model (a member
of the :data:`AdvantageConfig` union, keyed by ``type``), and :data:`ADVANTAGE_ESTIMATORS`
maps the type to its config model and to a function ``(config, rewards, texts) -> (B, G)``
that passes the config's parameters on: the learner calls :func:`compute_advantages`
and never looks at the type itself.

- ``group``: (r − mean) / (std + eps) (DeepSeekMath GRPO, arXiv 2402.03300);
  ``scale_by_std=False`` is Dr. GRPO (arXiv 2503.20783).
- ``rloo``: r_i − mean_{j≠i} r_j (Ahmadian et al. 2024, arXiv 2402.14740).
- ``passk``: the analytic pass@k advantage for binary rewards (Chen et al. 2025,
  arXiv 2508.10751).
- ``polychromic``: set-marginal advantage mean_{S∋i} f(S) − mean_S f(S) over k-subsets
  with f(S) = mean reward × diversity (Hamid et al. 2025, arXiv 2509.25424); with
  ``set_fn="max"`` it is σ times the pass@k advantage.

Also :func:`dynamic_sampling_mask` (DAPO, arXiv 2503.14476). Clip-higher (separate
ε_low / ε_high) lives in :func:`polyray.objectives.grpo.compute_grpo_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal, Union

import torch
from pydantic import Field

from polyray.diversity import DiversityName
from polyray.io import StrictModel
from polyray.objectives.polychromic import MAX_SUBSETS, compute_subset_marginals, enumerate_subsets

SubsetDiversity = Callable[[int, tuple[int, ...]], float]  # (prompt index b, sorted sample indices) -> d(S)


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
    table = torch.zeros(n + 1, 2, dtype=torch.float64)  # [c] -> (A_neg, A_pos)
    total, total_minus = math.comb(n, k), math.comb(n - 1, k - 1)
    for c in range(n + 1):
        rho = 1.0 - math.comb(n - c, k) / total
        sigma = math.sqrt(max(rho * (1.0 - rho), 0.0)) + eps
        # a wrong sample's subsets all fail when the other k−1 are wrong too: C(n−c−1, k−1) of them
        all_wrong = math.comb(n - c - 1, k - 1) if c < n else 0
        table[c, 1] = (1.0 - rho) / sigma
        table[c, 0] = (1.0 - rho - all_wrong / total_minus) / sigma
    correct = rewards.to(torch.long)  # (B, G)
    c = correct.sum(dim=-1, keepdim=True).expand_as(correct)  # (B, G)
    return table.to(rewards.device)[c, correct].to(rewards.dtype)


def compute_polychromic_advantages(
    rewards: torch.Tensor,
    k: int,
    set_fn: Literal["mean_diversity", "max"] = "mean_diversity",
    diversity: SubsetDiversity | None = None,
    distances: torch.Tensor | None = None,
    max_subsets: int = MAX_SUBSETS,
) -> torch.Tensor:
    """Set-marginal advantages A_i = mean_{S∋i,|S|=k} f(S) − mean_{|S|=k} f(S) (arXiv 2509.25424).

    ``set_fn="mean_diversity"``: f(S) = (mean_{j∈S} r_j) · d(S), with d(S) from exactly one of
      - ``diversity(b, S)``: any set diversity of prompt b's samples S (called per subset), or
      - ``distances`` (B, G, G): d(S) = mean pairwise distance within S (vectorised);
    needs k >= 2 (a single sample has no diversity).
    ``set_fn="max"``: f(S) = max_{j∈S} r_j; for 0/1 rewards this equals
      σ · ``compute_passk_advantages(rewards, k)`` with σ = sqrt(ρ(1−ρ)) + eps.

    No normalisation is applied. rewards (B, G) -> (B, G), same dtype; C(G, k) <= max_subsets.
    """
    B, G = _check_2d(rewards, "polychromic")
    subsets = enumerate_subsets(G, k, max_subsets)
    idx = torch.tensor(subsets, dtype=torch.long, device=rewards.device)  # (S, k)
    r = rewards.to(torch.float64)
    in_set = r[:, idx]  # (B, S, k)
    if set_fn == "max":
        if diversity is not None or distances is not None:
            raise ValueError("set_fn='max' takes no diversity or distances")
        f = in_set.max(dim=-1).values  # (B, S)
    elif set_fn == "mean_diversity":
        if (diversity is None) == (distances is None):
            raise ValueError("set_fn='mean_diversity' needs exactly one of diversity= or distances=")
        if k < 2:
            raise ValueError("set_fn='mean_diversity' needs k >= 2: a single sample has no diversity")
        if distances is not None:
            if distances.shape != (B, G, G):
                raise ValueError(f"distances must be (B, G, G) = {(B, G, G)}, got {tuple(distances.shape)}")
            p, q = torch.triu_indices(k, k, offset=1, device=rewards.device)  # pairs within a subset
            dist = distances.to(torch.float64)
            b = torch.arange(B, device=rewards.device)[:, None, None]
            d = dist[b, idx[None, :, p], idx[None, :, q]].mean(dim=-1)  # (B, S)
        else:
            d = torch.tensor([[float(diversity(bi, s)) for s in subsets] for bi in range(B)], dtype=torch.float64)
            d = d.to(rewards.device)
        f = in_set.mean(dim=-1) * d  # (B, S)
    else:
        raise ValueError(f"unknown set_fn {set_fn!r}; expected 'mean_diversity' or 'max'")
    return compute_subset_marginals(f, G, subsets).to(rewards.dtype)


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


class GroupAdvantageConfig(StrictModel):
    """(r − mean) / (std + eps) per group; ``scale_by_std: false`` is Dr. GRPO."""

    type: Literal["group"] = "group"
    scale_by_std: bool = Field(True, description="Divide by the group std (off = Dr. GRPO).")


class RlooAdvantageConfig(StrictModel):
    """r_i − mean of the other samples' rewards."""

    type: Literal["rloo"] = "rloo"


class PassKAdvantageConfig(StrictModel):
    """The analytic pass@k advantage for binary rewards."""

    type: Literal["passk"] = "passk"
    k: int = Field(4, ge=1, description="k of pass@k (<= group_size).")


class PolychromicAdvantageConfig(StrictModel):
    """Set-marginal advantage of f(S) = mean reward × diversity over k-subsets."""

    type: Literal["polychromic"] = "polychromic"
    k: int = Field(4, ge=2, description="Subset size (2 <= k <= group_size; a single sample has no diversity).")
    diversity: DiversityName = Field("countdown_expr", description="Set diversity d(S).")


def _group(cfg: GroupAdvantageConfig, rewards: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    return compute_group_advantages(rewards, scale_by_std=cfg.scale_by_std)


def _rloo(cfg: RlooAdvantageConfig, rewards: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    return compute_rloo_advantages(rewards)


def _passk(cfg: PassKAdvantageConfig, rewards: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    return compute_passk_advantages(rewards, cfg.k)


def _polychromic(cfg: PolychromicAdvantageConfig, rewards: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    from polyray.diversity import compute_diversity

    return compute_polychromic_advantages(
        rewards, cfg.k, diversity=lambda b, S: compute_diversity(cfg.diversity, [texts[b][i] for i in S])
    )


ADVANTAGE_ESTIMATORS: dict[str, tuple[type[StrictModel], Callable[..., torch.Tensor]]] = {
    "group": (GroupAdvantageConfig, _group),
    "rloo": (RlooAdvantageConfig, _rloo),
    "passk": (PassKAdvantageConfig, _passk),
    "polychromic": (PolychromicAdvantageConfig, _polychromic),
}
"""type -> (config model, function (config, rewards (B, G), texts (B, G)) -> advantages (B, G))."""

AdvantageConfig = Annotated[
    Union[tuple(model for model, _ in ADVANTAGE_ESTIMATORS.values())], Field(discriminator="type")
]


def compute_advantages(cfg, rewards: torch.Tensor, texts: list[list[str]]) -> torch.Tensor:
    """Advantages (B, G) of ``rewards`` (B, G) by the estimator ``cfg`` configures; ``texts`` are the completions."""
    return ADVANTAGE_ESTIMATORS[cfg.type][1](cfg, rewards, texts)
