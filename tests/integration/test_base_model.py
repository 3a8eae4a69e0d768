"""The embedded base model is a sensible starting point: some skill, and room for k candidates to help."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def test_base_model_passk_on_held_out_prompts(pool, run_config):
    from polyray.config import EvalConfig
    from polyray.eval.policy_eval import evaluate_policy
    from polyray.tasks import build_task

    task = build_task(run_config.task)
    prompts = task.prompts("test", 96)
    result = evaluate_policy(pool, task, prompts, EvalConfig(n_samples=8, ks=[1, 8]), version=0, seed=0)
    p1, p8 = result.pass_at_k[1].mean, result.pass_at_k[8].mean
    # 96 prompts x 8 samples: the standard error of pass@1 is below 0.02, far inside these bounds.
    assert 0.05 <= p1 <= 0.6, result
    assert p8 >= 1.5 * p1, result
