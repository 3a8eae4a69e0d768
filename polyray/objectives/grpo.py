"""GRPO: clipped policy-ratio loss with a k3 KL to a reference policy, and its token aggregations.

docs/algorithms.md §2. Pure functions over tensors; no distributed state. Shapes:
B prompts, G samples per prompt, N = B*G sequences, T token positions.

References: DeepSeekMath (arXiv 2402.03300) for GRPO and the k3 KL estimator,
DAPO (arXiv 2503.14476) for clip-higher and token-mean aggregation,
Dr. GRPO (arXiv 2503.20783) for dropping the std normaliser and the L_max norm.
"""

from __future__ import annotations

import torch

from polyray.config.advantages import Aggregation


def compute_k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(d) - d - 1 with d = ref - theta. (N, T).

    With ``mask``, d is zeroed outside it *before* the exponential, so prompt and padding
    positions (whose log-probs may be extreme) give exactly 0 instead of inf * 0 = NaN.
    """
    d = ref_logp - logp
    if mask is not None:
        d = torch.where(mask > 0, d, torch.zeros_like(d))
    return torch.exp(d) - d - 1


def aggregate_token_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    max_len: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
):
    """Reduce a (N, T) per-token loss over the completion ``mask`` to a scalar.

    - ``seq_mean_token_mean``: mean over each sequence's tokens, then over sequences;
    - ``token_mean``: sum over all tokens / number of tokens (DAPO's global token mean);
    - ``seq_mean_token_sum_norm``: sum over tokens / (N * L_max), L_max = ``max_len`` or T.

    When ``per_token`` is one shard of a larger batch, ``num_sequences`` / ``num_tokens`` are the
    whole batch's counts: the shards' results then *sum* to the whole batch's loss, whatever the
    split (default: this shard's own counts). Values outside ``mask`` never enter (``where``, not a product).
    """
    masked = torch.where(mask > 0, per_token, torch.zeros_like(per_token))
    n_seq = num_sequences if num_sequences is not None else per_token.shape[0]
    if mode == "seq_mean_token_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seq, 1)
    if mode == "token_mean":
        n_tok = num_tokens if num_tokens is not None else mask.sum()
        return masked.sum() / (n_tok.clamp(min=1) if torch.is_tensor(n_tok) else max(n_tok, 1))
    if mode == "seq_mean_token_sum_norm":
        L = max_len if max_len is not None else per_token.shape[-1]
        return masked.sum() / (max(n_seq, 1) * L)
    raise ValueError(f"unknown aggregation {mode!r}")


def compute_grpo_loss(
    # (N, T) log pi_theta of the sampled tokens (carries grad)
    logp: torch.Tensor,
    # (N, T) log pi_old (the sampling policy), no grad
    old_logp: torch.Tensor,
    # (N, T) log pi_ref (phase-start adapter or base), no grad; None when beta == 0
    ref_logp: torch.Tensor | None,
    # (N,) one advantage per sequence
    advantages: torch.Tensor,
    # (N, T) 1 on completion tokens
    mask: torch.Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_beta: float = 0.0,
    aggregation: Aggregation = "seq_mean_token_mean",
    max_len: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    # (N, T) no grad: the engine-mismatch correction (off_policy)
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss plus beta * k3 KL, aggregated per ``aggregation``.

    l_{i,t} = -w_{i,t} min(rho A_i, clip(rho, 1 - eps_low, 1 + eps_high) A_i) + beta KL_{i,t}, with
    w = ``is_weights`` (:func:`polyray.objectives.off_policy.compute_is_weights`; 1 when None).
    ``num_sequences`` / ``num_tokens``: whole-batch counts when this is one shard (see
    :func:`aggregate_token_loss`). Exponents are masked before ``exp`` (finite outside the
    completion whatever the logits). Returns (loss, metrics) where metrics are floats for logging.
    """
    log_ratio = torch.where(mask > 0, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    kl = compute_k3_kl(logp, ref_logp, mask) if ref_logp is not None else torch.zeros_like(logp)
    if kl_beta:
        per_token = per_token + kl_beta * kl
    loss = aggregate_token_loss(per_token, mask, aggregation, max_len, num_sequences, num_tokens)
    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "kl": float((kl * mask).sum() / n_tok),
            "clip_frac": float(((clipped != unclipped).float() * mask).sum() / n_tok),
            "ratio_mean": float((ratio * mask).sum() / n_tok),
        }
    return loss, metrics
