"""``compute_dpo_loss`` against the DPO loss written out in float64 Python floats, with its analytic gradient."""

from __future__ import annotations

import math
import random

import pytest
import torch

from polyray.objectives.dpo import compute_dpo_loss


def reference(chosen, rejected, ref_chosen, ref_rejected, beta):
    """(mean of -log sigmoid(beta * margin), d loss / d chosen_i) in plain float64 arithmetic."""
    margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    n = len(margins)
    loss = sum(math.log1p(math.exp(-m)) for m in margins) / n
    grad_chosen = [-beta / (1 + math.exp(m)) / n for m in margins]  # d/dm -log sigma(m) = -sigma(-m)
    return loss, grad_chosen, margins


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_loss_and_gradient_equal_the_float64_reference(beta):
    rng = random.Random(int(beta * 100))
    values = [[rng.uniform(-40, -5) for _ in range(7)] for _ in range(4)]
    chosen, rejected, ref_chosen, ref_rejected = (torch.tensor(v, dtype=torch.float64) for v in values)
    chosen.requires_grad_(True)
    loss, metrics = compute_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    loss.backward()
    want, grad_chosen, margins = reference(*values, beta)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(chosen.grad, torch.tensor(grad_chosen, dtype=torch.float64), rtol=1e-10, atol=0)
    assert metrics["margin"] == pytest.approx(sum(margins), rel=1e-12)
    assert metrics["accuracy"] == sum(m > 0 for m in margins)
    assert metrics["chosen_reward"] - metrics["rejected_reward"] == pytest.approx(sum(margins), rel=1e-9)


def test_the_policy_equal_to_its_reference_costs_log_2():
    x = torch.tensor([-3.0, -9.0])
    loss, metrics = compute_dpo_loss(x, x + 1, x, x + 1, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2))
    assert metrics["accuracy"] == 0 and metrics["margin"] == 0


def test_shards_over_the_whole_batch_count_sum_to_the_whole_loss():
    g = torch.Generator().manual_seed(0)
    c, r, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    whole = compute_dpo_loss(c, r, rc, rr, beta=0.3)[0]
    parts = [compute_dpo_loss(c[s], r[s], rc[s], rr[s], beta=0.3, num_pairs=6)[0] for s in (slice(0, 2), slice(2, 6))]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-12)
