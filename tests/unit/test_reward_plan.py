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


@pytest.mark.parametrize("advantage", ["{type: passk, k: 4}", "{type: mix, early: {type: passk, k: 4}, late: {type: group}}"])
def test_passk_with_a_graded_reward_is_refused_before_the_run_starts(advantage):
    """pass@k advantages count correct samples: with a graded reward they would fail at GRPO step 0,
    after the earlier phases ran; the plan refuses them first, naming the field."""
    run = load_config(QUICKSTART, [f"phases.1.advantage={advantage}", "phases.1.reward={name: length}"])
    with pytest.raises(ConfigError, match=r"^phases\.1\.advantage: (passk|mix) needs a binary reward .* 'length' is graded"):
        plan(run, build_task(run.task))
    run = load_config(QUICKSTART, [f"phases.1.advantage={advantage}"])  # countdown's reward is binary
    assert plan(run, build_task(run.task)).rewards[0].name == "countdown"


def test_binary_rewards_are_the_pass_fail_ones():
    from polyray.reward import REWARD_FUNCTIONS

    assert {name for name, cls in REWARD_FUNCTIONS.items() if cls.binary} == {"countdown", "code_exec"}
