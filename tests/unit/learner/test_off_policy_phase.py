"""GRPO's ``off_policy`` block on the learner: pi_old from the learner at the version each sample was drawn
under (the step's own forward for fresh samples, a forward under the kept weights for samples drawn one step
ahead), the engine-mismatch measures it logs, and the config's rules. The loss each correction mode trains on
is checked in test_phase_objectives.py, and its equality over ranks in test_ddp_scaling.py."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from support.phase_harness import FixedPool, build_policy, make_phase, tiny_model_dir
from polyray.config.phases import GRPOPhaseConfig
from polyray.models.batching import token_logprobs
from polyray.objectives.off_policy import compute_mismatch

pytestmark = [pytest.mark.slow]

ENGINE_LOGPROB = -6.0  # the stand-in engine's log-prob of every token: near the tiny policy's own


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("off-policy"))


def _ahead(off_policy: dict) -> GRPOPhaseConfig:
    return GRPOPhaseConfig(
        steps=3, prompts_per_step=3, group_size=3, kl_beta=0.0, async_rollouts=True, max_lag=1,
        sampling={"max_tokens": 5}, off_policy=off_policy,
    )  # fmt: skip


def _capture(phase) -> list:
    seen = []
    rollout = phase._rollout
    phase._rollout = lambda step, version: seen.append(rollout(step, version)) or seen[-1]
    return seen


def _update(model, scale: float = 0.05) -> None:
    """A stand-in optimizer step: every LoRA weight moved by a fixed pattern."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def test_samples_drawn_ahead_get_pi_old_from_the_weights_they_were_drawn_with(model_dir):
    model, tokenizer = build_policy(model_dir)
    pad = tokenizer.pad_token_id
    phase = make_phase(_ahead({"old_logprobs": "learner", "correction": "tis"}), model, tokenizer, 0, 1,
                       FixedPool(tokenizer, logprob=ENGINE_LOGPROB))  # fmt: skip
    seen = _capture(phase)
    first = phase.step(0, 1)  # its samples: version 1, the learner's own
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-12)
    drawn_with = copy.deepcopy(model)
    _update(model)
    updated = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics = phase.step(1, 2)  # the samples drawn ahead under version 1 reach the learner at version 2
    batch = seen[-1][0]
    assert set(batch.versions) == {1}

    packed = batch.pack(pad)
    with torch.no_grad():
        old, mask = token_logprobs(drawn_with, packed, 1.0, chunk_mib=0)
        new = token_logprobs(model, packed, 1.0, chunk_mib=0)[0]
    engine = batch.target_logprobs(old.shape[1], old.dtype)
    expected = compute_mismatch(old, engine, mask, cap=2.0)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    ratio = (torch.exp(new - old) * mask).sum() / mask.sum()
    assert metrics["ratio_mean"] == pytest.approx(float(ratio), rel=1e-6)
    assert abs(metrics["ratio_mean"] - 1) > 1e-4  # the update moved the policy: the lag is real
    for name, p in model.named_parameters():  # the forward under the kept weights left the policy's own
        if p.requires_grad:
            assert torch.equal(p.detach(), updated[name]), name


def test_pi_old_from_the_engine_still_measures_samples_drawn_ahead(model_dir):
    model, tokenizer = build_policy(model_dir)
    phase = make_phase(_ahead({"old_logprobs": "engine"}), model, tokenizer, 0, 1,
                       FixedPool(tokenizer, logprob=ENGINE_LOGPROB))  # fmt: skip
    seen = _capture(phase)
    fresh = phase.step(0, 1)
    assert fresh["mismatch_k3"] > 0 and fresh["is_weight_mean"] == 1.0
    drawn_with = copy.deepcopy(model)
    _update(model)
    metrics = phase.step(1, 2)
    batch = seen[-1][0]
    packed = batch.pack(tokenizer.pad_token_id)
    with torch.no_grad():
        old, mask = token_logprobs(drawn_with, packed, 1.0, chunk_mib=0)
        new = token_logprobs(model, packed, 1.0, chunk_mib=0)[0]
    engine = batch.target_logprobs(old.shape[1], old.dtype)
    assert metrics["mismatch_k3"] == pytest.approx(compute_mismatch(old, engine, mask)["mismatch_k3"], rel=1e-5)
    ratio = (torch.exp(new - engine) * mask).sum() / mask.sum()  # the clipped ratio's pi_old: the engine's
    assert metrics["ratio_mean"] == pytest.approx(float(ratio), rel=1e-6)


def test_measuring_off_takes_no_forward_under_old_weights(model_dir):
    model, tokenizer = build_policy(model_dir)
    cfg = _ahead({"old_logprobs": "engine", "measure": False})
    phase = make_phase(cfg, model, tokenizer, 0, 1, FixedPool(tokenizer, logprob=ENGINE_LOGPROB))
    phase.step(0, 1)
    _update(model)
    assert "mismatch_k3" not in phase.step(1, 2)
    assert phase._weights_at == {}


def test_weights_no_longer_held_are_a_clear_error(model_dir):
    model, tokenizer = build_policy(model_dir)
    phase = make_phase(_ahead({"old_logprobs": "learner"}), model, tokenizer, 0, 1, FixedPool(tokenizer))
    phase.step(0, 1)
    phase._weights_at.clear()  # as after a resume: the learner starts holding weights from its own version
    with pytest.raises(RuntimeError, match="adapter version 1 reached the learner at version 2"):
        phase.step(1, 2)


def test_a_correction_needs_the_learners_old_log_probs():
    with pytest.raises(ValidationError, match="(?s)off_policy.*set old_logprobs 'learner'"):
        GRPOPhaseConfig(off_policy={"correction": "tis"})
    with pytest.raises(ValidationError, match="(?s)off_policy.cap.*greater than 1"):
        GRPOPhaseConfig(off_policy={"old_logprobs": "learner", "correction": "mis", "cap": 1.0})
    assert GRPOPhaseConfig().off_policy.old_logprobs == "engine"  # the default until a measurement says otherwise
