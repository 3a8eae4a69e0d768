"""Supervised fine-tuning loss: token-mean NLL of the reference completions."""

from __future__ import annotations

import torch


def compute_sft_loss(
    logp: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """logp, mask: (N, T) next-token log-probs and completion mask -> (mean NLL over tokens, metrics).

    ``num_tokens``: the whole batch's completion tokens when this is one shard of it (the
    shards' losses then sum to the batch's token-mean NLL); default this shard's own.
    """
    n_tok = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    nll = -torch.where(mask > 0, logp, torch.zeros_like(logp)).sum() / n_tok
    return nll, {"nll": float(nll.detach())}
