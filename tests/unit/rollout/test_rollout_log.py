"""rollouts.jsonl labels each rollout with the adapter version it was sampled under.

With rollouts ahead (``async_rollouts``), step t+1's samples are drawn under the version the
learner held at step t, one older than the version it holds when it trains on them; the log
must say which weights produced the text, not which weights trained on it.
"""

from __future__ import annotations

import pytest
from support.phase_harness import FixedPool, build_policy, make_phase, tiny_model_dir

from polyray.config import GRPOPhaseConfig
from polyray.io import read_log_jsonl
from polyray.learner.logs import LogFiles, StepLogs
from polyray.learner.phases import RolloutLog

pytestmark = [pytest.mark.slow]  # builds a tiny random model (a few seconds)


@pytest.mark.parametrize("ahead", [False, True])
def test_rollouts_are_logged_under_the_version_that_sampled_them(tmp_path, ahead):
    from polyray.config.tasks import CountdownTaskConfig
    from polyray.tasks import build_task

    model, tokenizer = build_policy(tiny_model_dir(tmp_path))
    cfg = GRPOPhaseConfig(
        steps=3,
        prompts_per_step=2,
        group_size=2,
        async_rollouts=ahead,
        max_lag=1 if ahead else 0,
        sampling={"max_tokens": 4},
    )
    phase = make_phase(cfg, model, tokenizer, 0, 1, FixedPool(tokenizer))  # FixedPool stamps the requested version
    log = tmp_path / "rollouts.jsonl"
    phase.ctx.rollout_log = RolloutLog(
        StepLogs(LogFiles(tmp_path)), cfg.name, build_task(CountdownTaskConfig(n_train=64))
    )
    held = {0: 5, 1: 6, 2: 7}  # the version the learner holds at each step (one publish per step)
    for step, version in held.items():
        model.zero_grad()
        phase.step(step, version)
    rows = read_log_jsonl(log)
    assert len(rows) == 3 * 2 * 2
    for row in rows:
        sampled_under = held[row["step"] - 1] - (1 if ahead and row["step"] > 1 else 0)
        assert row["version"] == sampled_under, row
