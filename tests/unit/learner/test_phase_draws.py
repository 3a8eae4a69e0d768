"""Two phases of one run never replay each other: prompt draws, request seeds and reference
batches are keyed by the phase's name (unique in a run), not its type."""

from __future__ import annotations

import pytest
from support.phase_harness import FixedPool, build_policy, make_phase, tiny_model_dir

from polyray.config import GRPOPhaseConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig

pytestmark = [pytest.mark.slow]  # builds a tiny random model (a few seconds)


class RecordingPool(FixedPool):
    """FixedPool that keeps each submit's prompts and request seeds."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.calls = []

    def submit(self, request):
        self.calls.append((list(request.prompts), list(request.seeds)))
        return super().submit(request)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_policy(tiny_model_dir(tmp_path_factory.mktemp("draws")))


def _draws(policy, cfg, steps=(0, 1)):
    model, tokenizer = policy
    pool = RecordingPool(tokenizer)
    phase = make_phase(cfg, model, tokenizer, 0, 1, pool)
    for step in steps:
        phase._submit(step, 1)
    return pool.calls


def test_two_grpo_phases_draw_different_prompts_and_seeds(policy):
    first = _draws(policy, GRPOPhaseConfig(name="correct", prompts_per_step=4, group_size=2))
    second = _draws(policy, GRPOPhaseConfig(name="with_length", prompts_per_step=4, group_size=2))
    for (p1, s1), (p2, s2) in zip(first, second):
        assert p1 != p2 and not set(s1) & set(s2)
    assert first == _draws(policy, GRPOPhaseConfig(name="correct", prompts_per_step=4, group_size=2))  # reproducible


def test_polychromic_sft_does_not_replay_sfts_reference_batches(policy):
    model, tokenizer = policy
    sft = make_phase(SFTPhaseConfig(name="sft", batch_size=8), model, tokenizer, 0, 1, None)
    poly = make_phase(
        PolychromicSFTPhaseConfig(name="polychromic_sft", batch_size=8, prompts_per_step=2),
        model,
        tokenizer,
        0,
        1,
        RecordingPool(tokenizer),
    )
    assert sft.reference_batch(0).completion_ids != poly.reference_batch(0).completion_ids
    # its diversity samples come from a draw of their own, not the one its references use
    assert _draws(policy, PolychromicSFTPhaseConfig(name="p", prompts_per_step=2)) != _draws(
        policy, GRPOPhaseConfig(name="p", prompts_per_step=2, group_size=2)
    )
