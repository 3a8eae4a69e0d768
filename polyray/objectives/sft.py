"""Supervised fine-tuning loss: token-mean NLL of the reference completions."""

from __future__ import annotations

import torch


def compute_sft_loss(logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """logp, mask: (N, T) next-token log-probs and completion mask -> (mean NLL over tokens, metrics)."""
    nll = -(logp * mask).sum() / mask.sum().clamp(min=1)
    return nll, {"nll": float(nll.detach())}
