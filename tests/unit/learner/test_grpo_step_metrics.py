"""A GRPO step logs the step size its estimator asks for (mean |A|) and, for ``mix``, each
component's share by magnitude; a scale-matched estimator's mean |A| is group's on the same rewards."""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import FixedPool, build_policy, make_phase, tiny_model_dir
from polyray.config.phases import GRPOPhaseConfig
from polyray.objectives.advantages import compute_group_advantages


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("grpo-metrics"))


def _binary_reward(seen: list):
    def reward(prompts, texts):  # one correct sample in most groups, a uniform last group
        r = torch.tensor(
            [
                [float(j == b % len(g)) if b < len(texts) - 1 else 1.0 for j in range(len(g))]
                for b, g in enumerate(texts)
            ],
            dtype=torch.float64,
        )
        seen.append(r)
        return r

    return reward


def _step(model_dir, advantage: dict) -> tuple[dict, torch.Tensor]:
    cfg = GRPOPhaseConfig(steps=4, prompts_per_step=3, group_size=4, advantage=advantage, sampling={"max_tokens": 5})
    model, tokenizer = build_policy(model_dir)
    seen: list = []
    phase = make_phase(cfg, model, tokenizer, 0, 1, FixedPool(tokenizer), reward_fn=_binary_reward(seen))
    return phase.step(2, 1), seen[0]


def test_scale_matched_estimator_steps_like_group(model_dir):
    metrics, rewards = _step(model_dir, {"type": "passk", "k": 2, "match_group_scale": True})
    group_size = float(compute_group_advantages(rewards).abs().mean())
    assert metrics["adv_abs_mean"] == pytest.approx(group_size, rel=1e-6)
    plain, _ = _step(model_dir, {"type": "passk", "k": 2})
    assert plain["adv_abs_mean"] < 0.8 * group_size  # without matching, pass@k asks for a smaller step


def test_mix_logs_each_components_share_by_magnitude(model_dir):
    metrics, _ = _step(
        model_dir,
        {"type": "mix", "early": {"type": "passk", "k": 2}, "late": {"type": "group"}, "start": 0.0, "end": 1.0},
    )
    early, late = metrics["mix_early_share"], metrics["mix_late_share"]
    assert early + late == pytest.approx(1.0)
    assert late > 0.5  # w = 0.5 at step 2 of 4, and group's advantages are the larger
    assert "mix_early_share" not in _step(model_dir, {"type": "group"})[0]
    annealed, _ = _step(model_dir, {"type": "anneal", "k": 2, "start": 0.0, "end": 1.0})
    assert annealed["mix_late_share"] == pytest.approx(0.5)  # both parts scale-matched: shares are the weights
