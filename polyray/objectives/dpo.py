"""DPO on the policy's own samples: the sigmoid preference loss of Rafailov et al. (2023) on pairs ranked by
the reward (docs/algorithms.md §10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dpo_loss(
    # (P,) sequence log pi_theta of each pair's preferred completion (carries grad)
    chosen_logp: torch.Tensor,
    # (P,) the same of its dispreferred completion (carries grad)
    rejected_logp: torch.Tensor,
    # (P,) sequence log pi_ref of the preferred completion, no grad
    ref_chosen_logp: torch.Tensor,
    # (P,) the same of the dispreferred one, no grad
    ref_rejected_logp: torch.Tensor,
    *,
    beta: float,
    num_pairs: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = (1/P) Σ_p −log σ(β · [(log π_θ(y⁺) − log π_ref(y⁺)) − (log π_θ(y⁻) − log π_ref(y⁻))]).

    ``num_pairs``: the whole batch's P when these are one shard's pairs (the shards' losses then sum to
    the batch's mean); default this shard's own. The metrics are sums over the pairs, for whole-batch
    means: ``margin`` (the bracket, times β), ``accuracy`` (pairs whose margin is > 0), ``chosen_reward``
    and ``rejected_reward`` (β times each side's log-ratio to the reference)."""
    chosen = beta * (chosen_logp - ref_chosen_logp)
    rejected = beta * (rejected_logp - ref_rejected_logp)
    margin = chosen - rejected
    n = num_pairs if num_pairs is not None else max(len(margin), 1)
    loss = -F.logsigmoid(margin).sum() / n
    metrics = {
        "margin": float(margin.detach().sum()),
        "accuracy": float((margin.detach() > 0).sum()),
        "chosen_reward": float(chosen.detach().sum()),
        "rejected_reward": float(rejected.detach().sum()),
    }
    return loss, metrics
