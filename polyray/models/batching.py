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

    def rows(self, start: int, end: int) -> PackedBatch:
        """Sequences [start, end) of the batch (views of the same tensors)."""
        return PackedBatch(self.input_ids[start:end], self.attention_mask[start:end], self.completion_mask[start:end])


def pack_sequences(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device | str | None = None
) -> PackedBatch:
    """Right-padded (B, T) tensors, built on the CPU and moved to ``device`` (the model's) in one copy each."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("no sequences to pack")
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
    if device is not None:
        input_ids, attention_mask, completion_mask = (t.to(device) for t in (input_ids, attention_mask, completion_mask))
    return PackedBatch(input_ids, attention_mask, completion_mask)


def next_token_logits(model, batch: PackedBatch) -> torch.Tensor:
    """(B, T-1, V) float32 logits predicting tokens 1..T-1."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()


def gather_logprobs(logits: torch.Tensor, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1) log-prob of each target token under softmax(logits / temperature)."""
    if temperature <= 0:
        raise ValueError(f"log-probs need a temperature > 0, got {temperature}")
    scaled = logits if temperature == 1.0 else logits / temperature
    targets = batch.input_ids[:, 1:]
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model, batch: PackedBatch, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token: returns (logp (B, T-1), mask (B, T-1)) aligned to targets.

    ``temperature``: the log-probs of the sampling distribution softmax(logits / T), as the
    sampler (vLLM in ``processed_logprobs`` mode) reports them for the tokens it drew.
    """
    return gather_logprobs(next_token_logits(model, batch), batch, temperature), batch.completion_mask[:, 1:]
