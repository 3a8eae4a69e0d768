"""The rollout engine's and the learner's disagreement on the sampled tokens: its measures, and the importance
weights that correct GRPO's policy-gradient term for it.

The engine (vLLM) samples token y from π_vllm; the learner, at the same weights, gives it π_learner. Their
kernels, their rounding (bfloat16 above all) and the sampler make the two differ, so a sample is drawn off
the learner's policy even at lag 0. Taking π_old from the engine folds that gap into GRPO's ratio (it is
not 1 at a step's start, and clipping fires on it); taking π_old from the learner makes the ratio exact,
and the gap is corrected by a weight w on the policy-gradient term, with r = π_learner,old / π_vllm per
token:

- ``tis`` (truncated importance sampling, Yao et al. 2025, "Your efficient RL framework secretly brings
  you off-policy RL training"): w = min(r, C);
- ``mis`` (masked importance sampling): w = r where 1/C ≤ r ≤ C, else 0 (the token is dropped);
- ``seq_tis``: one weight per sequence from the geometric mean of its tokens' ratios (GSPO's
  sequence-level ratio), min(exp(mean log r), C), on each of its tokens;
- ``none``: w = 1.

The weights carry no gradient. Pure functions over (N, T) tensors: N sequences, T token positions,
``mask`` 1 on completion tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from polyray.objectives.grpo import compute_k3_kl

Correction = Literal["none", "tis", "mis", "seq_tis"]


def compute_is_weights(
    # (N, T) log π_learner,old of the sampled tokens
    learner_logp: torch.Tensor,
    # (N, T) log π_vllm, as the engine sampled them
    engine_logp: torch.Tensor,
    # (N, T)
    mask: torch.Tensor,
    correction: Correction,
    cap: float = 2.0,
) -> torch.Tensor:
    """(N, T) importance weights of ``correction`` with cap C = ``cap`` (> 1); 0 outside ``mask``, no grad."""
    if cap <= 1:
        raise ValueError(f"cap must be above 1, got {cap}")
    with torch.no_grad():
        inside = mask > 0
        log_r = torch.where(inside, learner_logp - engine_logp, torch.zeros_like(learner_logp))
        if correction == "none":
            weights = torch.ones_like(log_r)
        elif correction == "tis":
            weights = torch.exp(log_r).clamp(max=cap)
        elif correction == "mis":
            bound = math.log(cap)
            weights = torch.where(log_r.abs() <= bound, torch.exp(log_r), torch.zeros_like(log_r))
        elif correction == "seq_tis":
            mean = log_r.sum(-1) / mask.sum(-1).clamp(min=1)
            weights = torch.exp(mean).clamp(max=cap).unsqueeze(-1).expand_as(log_r)
        else:
            raise ValueError(f"unknown correction {correction!r}")
        return torch.where(inside, weights, torch.zeros_like(weights))


def compute_mismatch(
    learner_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> dict[str, float]:
    """How far the engine's log-probs are from the learner's on the sampled tokens (both at the sampling
    version), as means over ``mask``'s tokens:

    - ``mismatch_k3``: KL(π_vllm ‖ π_learner) by the k3 estimator on the engine's own samples, r - 1 - log r;
    - ``mismatch_abs``: mean |log π_learner - log π_vllm|;
    - ``mismatch_seq_max``: the largest sequence's mean k3;
    - ``mismatch_out_frac``: share of tokens whose ratio r falls outside [1/C, C] (what ``mis`` drops)."""
    sums, seq_max = mismatch_sums(learner_logp, engine_logp, mask, cap)
    n_tok = max(float(mask.sum()), 1.0)
    return {
        "mismatch_k3": sums["mismatch_k3"] / n_tok,
        "mismatch_abs": sums["mismatch_abs"] / n_tok,
        "mismatch_seq_max": seq_max,
        "mismatch_out_frac": sums["mismatch_out_frac"] / n_tok,
    }


def mismatch_sums(
    learner_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> tuple[dict[str, float], float]:
    """:func:`compute_mismatch`'s measures as sums over ``mask``'s tokens (what one micro-batch adds to the
    batch's), and the largest sequence's mean k3 (0 with no sequence)."""
    with torch.no_grad():
        inside = mask > 0
        d = torch.where(inside, learner_logp - engine_logp, torch.zeros_like(learner_logp)).double()
        k3 = compute_k3_kl(engine_logp.double(), learner_logp.double(), mask)
        per_seq = k3.sum(-1) / mask.sum(-1).clamp(min=1)
        sums = {
            "mismatch_k3": float(k3.sum()),
            "mismatch_abs": float(d.abs().sum()),
            "mismatch_out_frac": float(((d.abs() > math.log(cap)) & inside).sum()),
        }
        return sums, float(per_seq.max()) if per_seq.numel() else 0.0
