"""Prompt + completion token lists -> padded tensors, and per-token log-probs under a model.

Sequences are right-padded; ``completion_mask`` marks the completion tokens (the ones
that carry loss). Shapes: B sequences, T = longest prompt+completion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    completion_mask: torch.Tensor  # (B, T) float, 1 on completion tokens


def pack_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> PackedBatch:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lengths)
    B = len(prompts)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    completion_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, :n] = 1
        completion_mask[i, len(p) : n] = 1.0
    return PackedBatch(input_ids, attention_mask, completion_mask)


def token_logprobs(model, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token: returns (logp (B, T-1), mask (B, T-1)) aligned to targets."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    targets = batch.input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, batch.completion_mask[:, 1:]
