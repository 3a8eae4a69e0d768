"""The sync canary's verdict (polyray.learner.sync.stale_reason), in float64 on log-prob vectors built
to a known distance: what it lets pass (kernel noise) and what it stops (a worker off the published
weights, or nearer a policy it could be stuck on)."""

from __future__ import annotations

import pytest
import torch

from polyray.learner.sync import NEARER, NOISE, TOLERANCE, rms, stale_reason

TOKENS = 32


def _logprobs(gen: torch.Generator, n: int = TOKENS) -> torch.Tensor:
    return -torch.rand(n, generator=gen, dtype=torch.float64) * 8  # a probe's log-probs, in (-8, 0]


def _at(gen: torch.Generator, size: float, n: int = TOKENS) -> torch.Tensor:
    """A random direction of RMS ``size``."""
    d = torch.randn(n, generator=gen, dtype=torch.float64)
    return d * (size / rms(d))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_noise_within_four_thirds_of_noise_never_fails_whatever_the_references(dtype):
    """The second rule's false alarms: none while the noise stays under 4/3 x NOISE, for references at
    any distance and direction, the adversarial ones (on the noise's own line) included."""
    tolerance, noise = TOLERANCE[dtype], NOISE[dtype]
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for _ in range(400):
        learner = _logprobs(gen)
        e = _at(gen, float(torch.rand(1, generator=gen)) * 4 / 3 * noise * 0.999)
        served = learner + e
        references = {f"random {k}": learner + _at(gen, k * noise) for k in (0.5, 2.01, 2.5, 3, 5, 10, 50)}
        references |= {f"along the noise {c}": learner + c * e for c in (0.5, 1.0, 1.2, 1.5, 2.0, 3.0)}
        references |= {f"against the noise {c}": learner - c * e for c in (0.5, 1.0, 1.5, 2.0)}
        assert stale_reason(learner, served, references, tolerance, noise) is None
        checked += 1
    assert checked == 400


def test_the_bound_is_tight_just_past_four_thirds():
    """Past 4/3 x NOISE a reference on the noise's line at 2 x NOISE + is nearer than half the gap: the
    rule fires, as the triangle inequality says it can (the bound the docs quote is not loose)."""
    noise = NOISE["bfloat16"]
    gen = torch.Generator().manual_seed(1)
    learner = _logprobs(gen)
    e = _at(gen, 1.45 * noise)
    reference = learner + e * (2.05 * noise / rms(e))  # 2.05 x NOISE from the learner, beyond the served
    reason = stale_reason(learner, learner + e, {"v7": reference}, TOLERANCE["bfloat16"], noise)
    assert reason is not None and "it serves v7" in reason


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("moved", [2.3, 2.6])
def test_a_worker_serving_a_reference_is_caught_once_the_weights_moved_past_its_noise(dtype, moved):
    """A stale worker: it serves the reference's weights (plus its kernels' noise, NOISE / 2) while the
    learner moved ``moved`` x NOISE from them: short of the tolerance, which alone lets it pass."""
    tolerance, noise = TOLERANCE[dtype], NOISE[dtype]
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        reference = _logprobs(gen)
        learner = reference + _at(gen, moved * noise)
        served = reference + _at(gen, noise / 2)
        reason = stale_reason(learner, served, {"the base model": reference}, tolerance, noise)
        assert reason is not None and reason.endswith("it serves the base model, not the published adapter")
        assert stale_reason(learner, served, {}, tolerance, noise) is None


def test_weights_that_did_not_move_are_not_judged_against_their_old_self():
    """Learner and reference closer than 2 x NOISE: the worker cannot be told stale from fresh, and
    passes whichever it is nearer."""
    noise = NOISE["bfloat16"]
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        reference = _logprobs(gen)
        learner = reference + _at(gen, 1.9 * noise)
        served = reference + _at(gen, 0.1 * noise)  # nearer the reference by far
        assert rms(served - reference) < NEARER * rms(served - learner)
        assert stale_reason(learner, served, {"v1": reference}, TOLERANCE["bfloat16"], noise) is None


def test_far_from_the_learner_fails_whatever_it_is_near():
    """Another adapter, garbage, NaN, or a different token count: the first rule."""
    gen = torch.Generator().manual_seed(4)
    learner = _logprobs(gen)
    for dtype in ("float32", "bfloat16"):
        tolerance, noise = TOLERANCE[dtype], NOISE[dtype]
        far = learner + _at(gen, 1.01 * tolerance)
        assert "away from the learner's weights" in stale_reason(learner, far, {}, tolerance, noise)
        assert stale_reason(learner, learner + _at(gen, 0.99 * tolerance), {}, tolerance, noise) is None
    nan = learner.clone()
    nan[3] = float("nan")
    assert "away from" in stale_reason(learner, nan, {}, 1.0, 0.1)
    assert "for 31 tokens where the probe has 32" in stale_reason(learner, learner[:-1], {}, 1.0, 0.1)


def test_rms_against_a_direct_computation():
    gaps = torch.tensor([0.3, -0.4, 0.0, 1.2], dtype=torch.float64)
    assert rms(gaps) == pytest.approx((sum(g * g for g in gaps.tolist()) / 4) ** 0.5, rel=1e-15)
    assert rms(torch.tensor([], dtype=torch.float64)) == 0.0
