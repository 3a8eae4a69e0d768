"""GRPO math against hand-computed float64 values and plain-Python loops."""

import math

import pytest
import torch

from polyray.objectives.advantages import compute_group_advantages
from polyray.objectives.grpo import (
    aggregate_token_loss,
    compute_grpo_loss,
    compute_k3_kl,
)


def test_group_advantages_match_float64_loop():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.4, 0.4], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = compute_group_advantages(rewards)
    for b, row in enumerate(rewards.tolist()):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / (len(row) - 1))
        for g, r in enumerate(row):
            assert adv[b, g].item() == pytest.approx((r - mean) / (std + 1e-6), abs=1e-12)
    # hand value: [1,0,0,1] -> mean .5, std sqrt(1/3)
    assert adv[0, 0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-6), abs=1e-12)
    assert torch.all(adv[2] == 0)  # identical rewards carry no signal
    dr = compute_group_advantages(rewards, scale_by_std=False)
    assert dr[1].tolist() == pytest.approx([0.2 - 0.475, 0.9 - 0.475, 0.4 - 0.475, 0.4 - 0.475])


def test_k3_kl_hand_values():
    logp = torch.tensor([[-1.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.5]], dtype=torch.float64)
    kl = compute_k3_kl(logp, ref)
    # d = -0.5: e^-0.5 + 0.5 - 1 = 0.10653065971263342
    assert kl[0, 0].item() == pytest.approx(0.10653065971263342, abs=1e-15)
    assert kl[0, 1].item() == 0.0
    assert torch.all(compute_k3_kl(torch.randn(3, 5), torch.randn(3, 5)) >= 0)


def _hand_case():
    # Two sequences, three token slots; the second sequence has 2 real tokens.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, -0.1], [-0.3, -1.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.2, -1.8, -0.5], [-0.4, -1.2, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    return logp, old, ref, adv, mask


def _per_token_reference(eps_low, eps_high, beta):
    """Float64 loop over tokens: -min(rho A, clip(rho) A) + beta k3."""
    logp, old, ref, adv, mask = _hand_case()
    out = []
    for i in range(2):
        row = []
        for t in range(3):
            rho = math.exp(logp[i, t].item() - old[i, t].item())
            a = adv[i].item()
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
            d = ref[i, t].item() - logp[i, t].item()
            row.append(-min(rho * a, clipped * a) + beta * (math.exp(d) - d - 1))
        out.append(row)
    return out, mask.tolist()


@pytest.mark.parametrize("eps_low,eps_high,beta", [(0.2, 0.2, 0.0), (0.2, 0.28, 0.04), (0.1, 0.1, 0.5)])
def test_clipped_loss_all_aggregations(eps_low, eps_high, beta):
    per_tok, mask = _per_token_reference(eps_low, eps_high, beta)
    seq_mean = sum(sum(v * m for v, m in zip(r, mr)) / sum(mr) for r, mr in zip(per_tok, mask)) / 2
    tok_mean = sum(v * m for r, mr in zip(per_tok, mask) for v, m in zip(r, mr)) / sum(map(sum, mask))
    sum_norm = sum(v * m for r, mr in zip(per_tok, mask) for v, m in zip(r, mr)) / (2 * 3)
    expected = {"seq_mean_token_mean": seq_mean, "token_mean": tok_mean, "seq_mean_token_sum_norm": sum_norm}
    for mode, value in expected.items():
        logp, old, ref, adv, mask_t = _hand_case()
        loss, metrics = compute_grpo_loss(logp, old, ref, adv, mask_t, eps_low, eps_high, beta, aggregation=mode)
        assert loss.item() == pytest.approx(value, abs=1e-12), mode
    # the first token of seq 0 has rho = e^0.5 > 1 + eps with A > 0: clipped, so no gradient there
    logp, old, ref, adv, mask_t = _hand_case()
    loss, metrics = compute_grpo_loss(logp, old, ref, adv, mask_t, eps_low, eps_high, 0.0)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() < 0  # unclipped, A > 0: descending raises log-prob
    assert metrics["clip_frac"] > 0


def test_hand_computed_number():
    """One fully hand-worked value: seq_mean_token_mean, eps 0.2, beta 0."""
    # seq 0: rho = [e^.5, 1, e^-.4]; A = 1 -> terms [-min(1.6487, 1.2), -1, -min(.6703, .8)] = [-1.2, -1, -.67032]
    # seq 1: rho = [1, e^-.2]; A = -2 -> -min(-2 rho, -2 clip) = 2 max(rho, clip): [2, 2*.8187308] -> clip(.8187)=.8187
    s0 = (-1.2 - 1.0 - math.exp(-0.4)) / 3
    s1 = (2.0 + 2 * max(math.exp(-0.2), 0.8)) / 2
    logp, old, ref, adv, mask = _hand_case()
    loss, _ = compute_grpo_loss(logp, old, None, adv, mask, 0.2, 0.2, 0.0)
    assert loss.item() == pytest.approx((s0 + s1) / 2, abs=1e-12)


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError):
        aggregate_token_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_extreme_logits_at_padded_positions_stay_finite(aggregation):
    """Prompt/padding positions may hold any log-prob; exp() must never see them (inf * 0 = NaN)."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    logp = torch.tensor([[-1e4, -0.5, -1.2, -1e4], [-3e4, -5e3, -0.7, -1e5]], requires_grad=True)
    old = torch.tensor([[0.0, -0.6, -1.0, 0.0], [0.0, 0.0, -0.9, 0.0]])
    ref = torch.tensor([[0.0, -0.4, -1.1, 50.0], [0.0, 0.0, -0.8, 0.0]])
    loss, metrics = compute_grpo_loss(
        logp, old, ref, torch.tensor([1.0, -0.5]), mask, kl_beta=0.1, aggregation=aggregation
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())
    assert logp.grad[mask == 0].abs().max() == 0  # masked positions get no gradient at all
    # and equal to the loss of the completion tokens alone
    same, _ = compute_grpo_loss(
        torch.where(mask > 0, logp.detach(), torch.zeros_like(logp)),
        old,
        torch.where(mask > 0, ref, 0.0),
        torch.tensor([1.0, -0.5]),
        mask,
        kl_beta=0.1,
        aggregation=aggregation,
    )
    assert float(loss.detach()) == pytest.approx(float(same))
