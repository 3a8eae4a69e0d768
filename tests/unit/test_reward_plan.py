"""The reward plan (polyray/reward/plan.py): every phase's reward checked before a run starts, and
the engagement models it reads, for the driver and the policy evaluation alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyray.config import load_config
from polyray.io import ConfigError
from polyray.reward.plan import models_to_train, plan, scores_rollouts
from polyray.tasks import build_task

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
REPLIES = ROOT / "configs" / "replies.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "engagement.jsonl"


def test_a_phase_scores_rollouts_exactly_when_the_learner_builds_a_reward_for_it():
    from polyray.learner.phases import PHASES

    run = load_config(QUICKSTART, ["phases.0.type=polychromic_sft"])
    for phase in [*run.phases, load_config(QUICKSTART).phases[0]]:
        assert scores_rollouts(phase) == PHASES[phase.type].uses_rewards, phase.type


def test_quickstart_plan_names_the_task_reward_per_grpo_phase():
    run = load_config(QUICKSTART)
    p = plan(run, build_task(run.task))
    assert [(r.phase, r.name, r.field) for r in p.rewards] == [("grpo", "countdown", "reward")]
    assert p.quality_model is None and p.engagement_models == [] and models_to_train(p, run) == []


def test_a_phase_reward_is_checked_and_named_by_its_field():
    run = load_config(QUICKSTART, ["phases.1.reward={name: length, params: {min_length: 0}}"])
    with pytest.raises(ConfigError, match=r"^phases\.1\.reward\.params: "):
        plan(run, build_task(run.task))


def test_weighted_sum_components_bring_their_engagement_models(tmp_path):
    model = tmp_path / "em"
    run = load_config(REPLIES, [f"task.path={FIXTURE}", "task.quality=rougeL", "reward.name=weighted_sum",
                                "reward.params={components: [{name: length, weight: 0.5}, "
                                f"{{name: engagement, weight: 1, params: {{model_path: {model}}}}}]}}"])  # fmt: skip
    p = plan(run, build_task(run.task))
    assert model in p.engagement_models
    assert model in models_to_train(p, run)  # missing: trained from the task's file, whose rows are checked


def test_a_countdown_run_cannot_train_an_engagement_model(tmp_path):
    run = load_config(QUICKSTART, ["reward.name=engagement", f"reward.params={{model_path: {tmp_path / 'em'}}}"])
    with pytest.raises(ConfigError, match="no engagement model in .*train one: polyray model train-reward"):
        models_to_train(plan(run, build_task(run.task)), run)


def test_a_directory_with_other_files_is_refused(tmp_path):
    (tmp_path / "em").mkdir()
    (tmp_path / "em" / "notes.txt").write_text("x")
    run = load_config(REPLIES, [f"task.path={FIXTURE}", f"reward.params={{model_path: {tmp_path / 'em'}}}"])
    with pytest.raises(ConfigError, match="holds files but no model"):
        models_to_train(plan(run, build_task(run.task)), run)
