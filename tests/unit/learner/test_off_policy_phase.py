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


@pytest.mark.parametrize(
    "layout",
    [{}, {"micro_batch_tokens": 24}, {"share_prompts": True}, {"share_prompts": True, "micro_batch_tokens": 24}],
    ids=["whole", "micro_batches", "shared_prompts", "shared_prompts_micro_batches"],
)
def test_samples_drawn_ahead_get_pi_old_from_the_weights_they_were_drawn_with(model_dir, layout):
    model, tokenizer = build_policy(model_dir)
    pad = tokenizer.pad_token_id
    cfg = _ahead({"old_logprobs": "learner", "correction": "tis"})
    pool = FixedPool(tokenizer, logprob=ENGINE_LOGPROB)
    phase = make_phase(cfg, model, tokenizer, rank=0, world=1, pool=pool, **layout)
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
    cfg = _ahead({"old_logprobs": "engine", "measure_every": 1})
    phase = make_phase(cfg, model, tokenizer, rank=0, world=1, pool=FixedPool(tokenizer, logprob=ENGINE_LOGPROB))
    seen = _capture(phase)
    assert phase.step(0, 1)["mismatch_k3"] > 0
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


@pytest.mark.parametrize("every", [0, 2])
def test_drawn_ahead_samples_are_measured_every_nth_step(model_dir, every):
    model, tokenizer = build_policy(model_dir)
    cfg = _ahead({"old_logprobs": "engine", "measure_every": every}).model_copy(update={"steps": 4})
    phase = make_phase(cfg, model, tokenizer, rank=0, world=1, pool=FixedPool(tokenizer, logprob=ENGINE_LOGPROB))
    measured = []
    for step in range(4):
        measured.append("mismatch_k3" in phase.step(step, step + 1))
        _update(model)
    assert measured == ([True, False, False, False] if every == 0 else [True, False, True, False])
    assert (phase._weights_at == {}) == (every == 0)  # no weights kept when no step scores under them


def test_weights_no_longer_held_are_a_clear_error(model_dir):
    model, tokenizer = build_policy(model_dir)
    cfg = _ahead({"old_logprobs": "learner"})
    phase = make_phase(cfg, model, tokenizer, rank=0, world=1, pool=FixedPool(tokenizer))
    phase.step(0, 1)
    phase._weights_at.clear()  # a broken bookkeeping: the samples' weights are gone
    with pytest.raises(RuntimeError, match="adapter version 1 reached the learner at version 2"):
        phase.step(1, 2)


def test_rows_of_each_version_take_that_versions_log_probs(model_dir):
    """A part mixing fresh samples and samples of two older versions: each row from its own version."""
    from polyray.learner.batch import TrainBatch

    model, tokenizer = build_policy(model_dir)
    cfg = _ahead({"old_logprobs": "learner"}).model_copy(update={"max_lag": 2})
    phase = make_phase(cfg, model, tokenizer, rank=0, world=1, pool=FixedPool(tokenizer))
    part = TrainBatch([[1], [2], [3]], [[4, 5], [6], [7, 8]], [[0.0, 0.0], [0.0], [0.0, 0.0]], torch.zeros(3), None,
                      versions=[5, 3, 4])  # fmt: skip
    logp = torch.full((3, 2), -1.0)
    older = {3: torch.full((3, 2), -3.0), 4: torch.full((3, 2), -4.0)}
    got = phase._learner_old(part, logp, older, version=5)
    assert got[:, 0].tolist() == [-1.0, -3.0, -4.0]
    assert phase._learner_old(part, logp, {}, version=5) is None  # older rows and nothing to score them with


def test_a_correction_needs_the_learners_old_log_probs():
    with pytest.raises(ValidationError, match="(?s)off_policy.*set old_logprobs 'learner'"):
        GRPOPhaseConfig(off_policy={"correction": "tis"})
    with pytest.raises(ValidationError, match="(?s)off_policy.cap.*greater than 1"):
        GRPOPhaseConfig(off_policy={"old_logprobs": "learner", "correction": "mis", "cap": 1.0})
    assert GRPOPhaseConfig().off_policy.old_logprobs == "engine"  # the default until a measurement says otherwise
