"""The reward plan (polyray/reward/plan.py): every phase's reward checked before a run starts, and
the engagement models it reads, for the driver and the policy evaluation alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyray.config import load_config
from polyray.io import ConfigError
from polyray.reward.plan import models_to_train, plan, scores_rollouts
from polyray.tasks import build_task

ROOT = Path(__file__).resolve().parents[3]
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
    run = load_config(
        REPLIES,
        [
            f"task.path={FIXTURE}",
            "task.quality=rougeL",
            "reward.name=weighted_sum",
            "reward.params={components: [{name: length, weight: 0.5}, "
            f"{{name: engagement, weight: 1, params: {{model_path: {model}}}}}]}}",
        ],
    )
    p = plan(run, build_task(run.task))
    assert model in p.engagement_models
    training = models_to_train(p, run)  # missing: trained from the task's file, whose rows are checked
    assert [t.path for t in training] == [model] and training[0].posts == "train"  # a reward: train posts only


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


@pytest.mark.parametrize(
    "advantage", ["{type: passk, k: 4}", "{type: mix, early: {type: passk, k: 4}, late: {type: group}}"]
)
def test_passk_with_a_graded_reward_is_refused_before_the_run_starts(advantage):
    """pass@k advantages count correct samples: with a graded reward they would fail at GRPO step 0,
    after the earlier phases ran; the plan refuses them first, naming the field."""
    run = load_config(QUICKSTART, [f"phases.1.advantage={advantage}", "phases.1.reward={name: length}"])
    with pytest.raises(
        ConfigError, match=r"^phases\.1\.advantage: (passk|mix) needs a binary reward .* 'length' is graded"
    ):
        plan(run, build_task(run.task))
    run = load_config(QUICKSTART, [f"phases.1.advantage={advantage}"])  # countdown's reward is binary
    assert plan(run, build_task(run.task)).rewards[0].name == "countdown"


def test_binary_rewards_are_the_pass_fail_ones():
    from polyray.reward import REWARD_FUNCTIONS

    assert {name for name, cls in REWARD_FUNCTIONS.items() if cls.binary} == {"countdown", "code_exec"}


# ------------------------------------------------------------- replies: reward and judge apart
def _posts_of(lines) -> set[str]:
    """The posts (prompts) of the fixture's rows at ``lines``, read straight from the file."""
    import json

    rows = FIXTURE.read_text().splitlines()
    return {json.loads(rows[line - 1])["prompt"] for line in lines}


def _split_posts(run) -> dict[str, set[str]]:
    task = build_task(run.task)
    return {split: {p.meta["raw_prompt"] for p in task.prompts(split)} for split in ("train", "val", "test")}


def test_the_reward_model_learns_from_train_posts_and_the_judge_from_the_others(tmp_path):
    """Replies judged by engagement: GRPO's reward model is trained on the train posts' rows only, the
    model that judges evaluations on the val and test posts' rows only, into two cache entries."""
    from polyray.reward.engagement import read_engagement_jsonl, select_rows

    run = load_config(REPLIES)
    task = build_task(run.task)
    p = plan(run, task)
    reward_dir, judge_dir = task.engagement_model_dir(), task.eval_engagement_model_dir()
    assert p.rewards[-1].params["model_path"] == str(reward_dir) and p.quality_model == judge_dir
    assert reward_dir != judge_dir and reward_dir.parent == judge_dir.parent  # two cache keys, one cache
    assert "-train-" in reward_dir.name and "-held_out-" in judge_dir.name
    posts = _split_posts(run)
    assert posts["train"] and posts["val"] and posts["test"]
    reward_rows, judge_rows = p.training[reward_dir], p.training[judge_dir]
    assert (reward_rows.posts, judge_rows.posts) == ("train", "held_out")
    assert _posts_of(reward_rows.lines) == posts["train"]  # no val or test post
    assert _posts_of(judge_rows.lines) == posts["val"] | posts["test"]  # no train post
    assert not set(reward_rows.lines) & set(judge_rows.lines)
    assert len(reward_rows.lines) + len(judge_rows.lines) == len(FIXTURE.read_text().splitlines())
    chosen = select_rows(read_engagement_jsonl(FIXTURE), judge_rows.lines)  # what the trainer is given
    assert {r.prompt for r in chosen} == posts["val"] | posts["test"] and len(chosen) == len(judge_rows.lines)
    # another split seed draws other posts: other rows, other cache entries
    other = build_task(load_config(REPLIES, ["task.seed=1"]).task)
    assert other.engagement_model_dir() != reward_dir and other.eval_engagement_model_dir() != judge_dir


def test_judging_with_the_reward_model_is_a_choice_and_the_held_out_model_may_be_named(tmp_path):
    run = load_config(REPLIES, ["task.eval_quality_model=reward"])
    task = build_task(run.task)
    p = plan(run, task)
    assert p.quality_model == task.engagement_model_dir() and p.engagement_models == [p.quality_model]
    assert p.training[p.quality_model].posts == "train"  # one model, trained as the reward
    run = load_config(REPLIES, [f"task.eval_engagement_model={tmp_path / 'judge'}"])
    p = plan(run, build_task(run.task))
    assert p.quality_model == tmp_path / "judge" and p.training[tmp_path / "judge"].posts == "held_out"


def test_too_few_held_out_rows_are_refused_naming_the_field(tmp_path):
    """20 posts with one row each leave 6 rows to the val and test posts: too few to train the judge."""
    import json

    data = tmp_path / "small.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"post {i}", "response": f"reply {i}", "engagement": float(i)}) + "\n"
            for i in range(20)
        )
    )
    run = load_config(REPLIES, [f"task.path={data}", f"task.engagement_model={tmp_path / 'rm'}"])
    with pytest.raises(ConfigError, match=r"^task\.eval_quality_model: the val and test posts of .* hold 6 rows"):
        models_to_train(plan(run, build_task(run.task)), run)
