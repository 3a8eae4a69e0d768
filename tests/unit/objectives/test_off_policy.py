"""The engine-mismatch correction (polyray.objectives.off_policy) against float64 loops, and the bias it
removes: a bandit whose engine samples from a perturbed policy, the GRPO gradient's expectation against the
exact on-policy gradient, by Monte Carlo with a confidence interval."""

from __future__ import annotations

import math

import pytest
import torch

from polyray.objectives.grpo import compute_grpo_loss
from polyray.objectives.off_policy import compute_is_weights, compute_mismatch

CAP = 2.0


def _case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    learner = -torch.rand(3, 6, generator=gen, dtype=torch.float64) * 3
    engine = learner + torch.randn(3, 6, generator=gen, dtype=torch.float64) * 0.6  # some ratios past 2 or 1/2
    engine[0] -= 0.9  # a sequence whose geometric-mean ratio (~e^0.9) passes the cap too
    engine[2, :3] += 0.9  # and tokens far below 1/C
    engine[1, 0] = learner[1, 0] - math.log(2.1)  # a ratio between C and 1.1 C
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float64)
    return learner, engine, mask


def _weights_loop(learner, engine, mask, mode: str, cap: float) -> list[list[float]]:
    out = []
    for i in range(learner.shape[0]):
        tokens = [t for t in range(learner.shape[1]) if mask[i, t] > 0]
        logs = {t: learner[i, t].item() - engine[i, t].item() for t in tokens}
        geometric = math.exp(sum(logs.values()) / len(tokens))
        row = []
        for t in range(learner.shape[1]):
            if t not in logs:
                row.append(0.0)
            elif mode == "none":
                row.append(1.0)
            elif mode == "tis":
                row.append(min(math.exp(logs[t]), cap))
            elif mode == "mis":
                r = math.exp(logs[t])
                row.append(r if 1 / cap <= r <= cap else 0.0)
            else:
                row.append(min(geometric, cap))
        out.append(row)
    return out


@pytest.mark.parametrize("mode", ["none", "tis", "mis", "seq_tis"])
def test_weights_match_a_float64_loop(mode):
    learner, engine, mask = _case()
    ratios = torch.exp(learner - engine)[mask > 0]
    assert (ratios > CAP).any() and (ratios < 1 / CAP).any()  # the case reaches both truncations
    weights = compute_is_weights(learner, engine, mask, mode, CAP)
    loop = torch.tensor(_weights_loop(learner, engine, mask, mode, CAP), dtype=torch.float64)
    torch.testing.assert_close(weights, loop, atol=1e-12, rtol=0)
    if mode != "none":  # a cap 10% off is told apart
        other = compute_is_weights(learner, engine, mask, mode, CAP * 1.1)
        assert not torch.allclose(other, weights, atol=1e-6)


def test_the_weighted_grpo_loss_matches_a_float64_loop():
    learner, engine, mask = _case(1)
    logp = (learner + 0.05).clone().requires_grad_(True)
    ref = learner - 0.1
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    weights = compute_is_weights(learner, engine, mask, "tis", CAP)
    loss, _ = compute_grpo_loss(logp, learner, ref, adv, mask, 0.2, 0.28, 0.05, "token_mean", is_weights=weights)
    total, count = 0.0, 0
    for i in range(3):
        for t in range(6):
            if mask[i, t] == 0:
                continue
            rho = math.exp(logp[i, t].item() - learner[i, t].item())
            a = adv[i].item()
            pg = -min(rho * a, min(max(rho, 0.8), 1.28) * a)
            d = ref[i, t].item() - logp[i, t].item()
            total += weights[i, t].item() * pg + 0.05 * (math.exp(d) - d - 1)
            count += 1
    assert loss.item() == pytest.approx(total / count, abs=1e-12)
    loss.backward()
    assert torch.all(logp.grad[mask == 0] == 0)


def test_mismatch_measures_hand_values():
    learner = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -1.0, -3.0]], dtype=torch.float64)
    engine = torch.tensor([[-1.0, -1.0, -0.5], [-0.2, -2.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    m = compute_mismatch(learner, engine, mask, CAP)
    # d = learner - engine on the 5 tokens: 0, -1, 0, 0, +1; k3 = e^d - d - 1
    k3 = [0.0, math.exp(-1) + 1 - 1, 0.0, 0.0, math.e - 2]
    assert m["mismatch_k3"] == pytest.approx(sum(k3) / 5, abs=1e-12)
    assert m["mismatch_abs"] == pytest.approx(2 / 5, abs=1e-12)
    assert m["mismatch_seq_max"] == pytest.approx(max(sum(k3[:3]) / 3, sum(k3[3:]) / 2), abs=1e-12)
    assert m["mismatch_out_frac"] == pytest.approx(2 / 5, abs=1e-12)  # |d| = 1 > log 2, twice
    assert compute_mismatch(learner, learner, mask)["mismatch_k3"] == 0.0


# The bandit: 4 arms, the learner's policy softmax(θ), the engine's softmax(θ + δ) (its kernels' error), a
# fixed baseline (its advantages have zero mean under any policy, so the on-policy gradient is exact).
THETA = torch.tensor([0.5, -0.3, 0.1, 0.0], dtype=torch.float64)
DELTA = torch.tensor([0.45, -0.35, -0.3, 0.15], dtype=torch.float64)
REWARD = torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=torch.float64)
BASELINE = 0.4


def _gradient(old: str, correction: str, batch: int, gen: torch.Generator) -> torch.Tensor:
    """∇θ of GRPO's loss on ``batch`` one-token samples the engine drew, π_old from the ``old`` side."""
    theta = THETA.clone().requires_grad_(True)
    engine_logits = THETA + DELTA
    arms = torch.multinomial(torch.softmax(engine_logits, 0), batch, replacement=True, generator=gen)
    logp = torch.log_softmax(theta, 0)[arms].unsqueeze(-1)  # (N, 1)
    engine = torch.log_softmax(engine_logits, 0)[arms].unsqueeze(-1)
    learner_old = logp.detach()
    mask = torch.ones_like(logp)
    weights = compute_is_weights(learner_old, engine, mask, correction, CAP)
    old_logp = learner_old if old == "learner" else engine
    loss, _ = compute_grpo_loss(logp, old_logp, None, REWARD[arms] - BASELINE, mask, is_weights=weights)
    (grad,) = torch.autograd.grad(loss, theta)
    return -grad  # the loss descends: its negative gradient estimates ∇θ E[r]


@pytest.mark.parametrize(
    ("old", "correction", "unbiased"),
    [("engine", "none", False), ("learner", "none", False), ("learner", "tis", True), ("learner", "mis", True)],
)
def test_the_correction_removes_the_engines_bias(old, correction, unbiased):
    """The exact gradient of E_π[r] is π ⊙ (r - E_π[r]). Drawn from the engine, GRPO's gradient is biased by a
    measurable margin without the correction (π_old from the engine: its ratio is clipped at ±0.2; from the
    learner: the samples are simply the engine's), and matches within its confidence interval with it (no
    ratio here reaches the cap, so truncation adds no bias)."""
    pi, engine_pi = torch.softmax(THETA, 0), torch.softmax(THETA + DELTA, 0)
    ratios = pi / engine_pi
    assert ratios.max() < CAP and ratios.min() > 1 / CAP and (ratios - 1).abs().max() > 0.3  # the premise
    exact = pi * (REWARD - (pi * REWARD).sum())
    gen = torch.Generator().manual_seed(7)
    draws = torch.stack([_gradient(old, correction, 4000, gen) for _ in range(50)])  # 50 independent batches
    mean, se = draws.mean(0), draws.std(0, unbiased=True) / math.sqrt(len(draws))
    z = ((mean - exact) / se).abs()
    if unbiased:
        assert z.max() < 4.0, (mean, exact, se)  # every arm within 4 standard errors
    else:
        assert z.max() > 8.0, (mean, exact, se)  # the bias stands far outside the noise
