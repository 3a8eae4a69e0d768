"""A run's rewards, decided before anything starts: what each phase scores with, and which
engagement models the run needs (trained first if missing).

One plan for the driver (its pre-flight checks, what to deploy, what to train) and the policy
evaluation (the engagement model that judges quality), so neither reaches into the engagement
model's or ``weighted_sum``'s internals. Nothing is loaded: a plan is names, parameters and paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyray.config import RunConfig, phase_reward
from polyray.config.tasks import JsonlTaskConfig
from polyray.io import ConfigError
from polyray.tasks.base import Task


@dataclass(frozen=True)
class PhaseReward:
    """The registry reward one phase scores its rollouts with (parameters over the task's defaults)."""

    index: int
    phase: str
    name: str
    params: dict[str, Any]
    # where it is set: "reward" (the run's) or "phases.<i>.reward"
    field: str


@dataclass(frozen=True)
class EngagementTraining:
    """What an engagement model directory is trained from when it holds no model: the rows of the task
    file at ``lines``, those of the ``posts`` (``train`` for a reward, ``held_out`` for the judge)."""

    path: Path
    posts: str
    # None: every row (a task without posts to split)
    lines: tuple[int, ...] | None


@dataclass(frozen=True)
class RewardPlan:
    # one per phase that scores rollouts
    rewards: list[PhaseReward] = field(default_factory=list)
    # the engagement model that judges the task's quality, if it does
    quality_model: Path | None = None
    # every engagement model the run reads
    engagement_models: list[Path] = field(default_factory=list)
    # per model: the rows that train it
    training: dict[Path, EngagementTraining] = field(default_factory=dict)


def scores_rollouts(phase) -> bool:
    """Whether a phase scores its rollouts with a reward: its config names one (``reward``)."""
    return "reward" in type(phase).model_fields


def quality_model(run: RunConfig, task: Task) -> Path | None:
    """The engagement model directory that judges the task's quality (quality ``engagement``): the
    held-out model, trained on posts GRPO's reward never saw (``task.eval_quality_model``), else None."""
    return task.eval_engagement_model_dir() if run.task.needs_engagement_model() else None


def plan(run: RunConfig, task: Task) -> RewardPlan:
    """Every phase's reward, checked (one :class:`ConfigError` naming the field), and the
    engagement models they and the task's quality read."""
    from polyray.reward.base import REWARD_FUNCTIONS, RewardError
    from polyray.reward.scorer import check_reward
    from polyray.reward.service import resolve_reward

    rewards = []
    for i, phase in enumerate(run.phases):
        if not scores_rollouts(phase):
            continue
        name, params = resolve_reward(phase_reward(run, phase), task)
        where = "reward" if phase.reward is None else f"phases.{i}.reward"
        try:
            check_reward(name, params, where)
        except RewardError as exc:
            raise ConfigError(str(exc)) from None
        if (
            getattr(phase, "advantage", None) is not None
            and phase.advantage.needs_binary_rewards()
            and not REWARD_FUNCTIONS[name].binary
        ):
            raise ConfigError(
                f"phases.{i}.advantage: {phase.advantage.type} needs a binary reward (each sample 0 or 1), but"
                f" {where}.name {name!r} is graded: use another estimator (group, rloo, ...) or a binary reward"
            )
        rewards.append(PhaseReward(i, phase.name, name, params, where))
    quality = quality_model(run, task)
    reward_models = []
    for reward in rewards:
        components = (
            reward.params["components"]
            if reward.name == "weighted_sum"
            else [{"name": reward.name, "params": reward.params}]
        )
        reward_models += [
            Path(c["params"]["model_path"])
            for c in components
            if c["name"] == "engagement" and "model_path" in c.get("params", {})
        ]
    models = list(dict.fromkeys(([quality] if quality is not None else []) + reward_models))
    # a reward model learns from the train posts only; the judge from the others (unless it is a reward's too)
    roles = {path: "train" if path in reward_models or path == _reward_dir(task) else "held_out" for path in models}
    lines = getattr(task, "engagement_lines", None)
    training = {
        path: EngagementTraining(path, role, tuple(lines(role)) if lines else None) for path, role in roles.items()
    }
    return RewardPlan(rewards, quality, models, training)


def _reward_dir(task: Task) -> Path | None:
    """The task's own reward model directory (where its ``engagement`` reward reads by default), if it has one."""
    return task.engagement_model_dir() if hasattr(task, "engagement_model_dir") else None


def models_to_train(reward_plan: RewardPlan, run: RunConfig) -> list[EngagementTraining]:
    """The plan's engagement model directories that hold no model yet, each with the rows of the task's
    file it is to be trained from first (checked now: every line must be a row, and the posts' rows
    must be enough to split). Only a JSONL task has a file to train one from."""
    from polyray.reward.engagement import is_engagement_model_dir, read_engagement_jsonl, select_rows
    from polyray.tasks.splits import SplitError, stratified_split

    missing = [p for p in reward_plan.engagement_models if not is_engagement_model_dir(p)]
    if missing and not isinstance(run.task, JsonlTaskConfig):
        raise ConfigError(f"reward: no engagement model in {missing[0]} (train one: polyray model train-reward)")
    occupied = [p for p in missing if p.is_dir() and any(p.iterdir())]
    if occupied:
        raise ConfigError(
            f"engagement model: {occupied[0]} holds files but no model; empty it or choose another directory"
        )
    if not missing:
        return []
    # every line must hold {prompt, response, engagement} to train it
    rows = read_engagement_jsonl(run.task.path)
    plans = [reward_plan.training.get(p, EngagementTraining(p, "all", None)) for p in missing]
    for t in plans:
        chosen = select_rows(rows, t.lines)
        try:
            stratified_split([r.engagement for r in chosen], run.task.seed)
        except SplitError:
            field = "task.eval_quality_model" if t.posts == "held_out" else "task.engagement_model"
            raise ConfigError(
                f"{field}: the {POSTS_LABEL[t.posts]} of {run.task.path} hold {len(chosen)} rows, too few to train"
                f" the engagement model into {t.path} (about 20 needed); add rows"
                + (
                    ", or judge with the reward model (task.eval_quality_model: reward, circular)"
                    if t.posts == "held_out"
                    else ""
                )
            ) from None
    return plans


POSTS_LABEL = {"train": "train posts", "held_out": "val and test posts", "all": "rows"}
