"""What a run checks and prepares before anything starts: its inputs (data, splits, rewards, the
live generation service's settings), its memory plan, and the config its workers get."""

from __future__ import annotations

import json
from pathlib import Path

from polyray.config import RunConfig
from polyray.io import ConfigError
from polyray.models.source import offline_model_dir
from polyray.reward.plan import models_to_train
from polyray.reward.plan import plan as plan_rewards
from polyray.storage import share_model
from polyray.tracking import check_tracking


def check_inputs(run: RunConfig) -> list:
    """Everything about ``run`` that can be checked before anything starts: the user's data is read
    (a bad line, an empty file, a train prompt SFT has no reference for: one error naming
    file:line), the splits are drawn, the evaluation settings fit the task, and every phase's
    reward is checked. Returns the engagement models to train first
    (:class:`~polyray.reward.plan.EngagementTraining`)."""
    from polyray.tasks import build_task

    check_tracking(run.tracking)
    check_generation(run)
    task = build_task(run.task)
    _draw_splits(task, run)
    if any(p.trains_on_references for p in run.phases):
        task.check_references()
    if run.init_adapter and not (Path(run.init_adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"init_adapter: {run.init_adapter} is not a saved LoRA adapter (no adapter_config.json)")
    if run.eval.few_shot and not task.supports_few_shot:
        raise ConfigError(f"eval.few_shot: task {task.name!r} has no few-shot format (set eval.few_shot: 0)")
    if run.eval.few_shot and run.env is not None:
        raise ConfigError("eval.few_shot: a multi-turn run's evaluations are episodes, without examples (set it to 0)")
    if run.env is not None and run.env.type == "custom":
        from polyray.envs import EnvError, load_environment
        from polyray.config.functions import FunctionRefError

        # now, not at the first episode after the phases before it
        try:
            load_environment(run.env.environment)
        except (EnvError, FunctionRefError) as exc:
            raise ConfigError(str(exc)) from None
    if run.env is not None and run.env.type == "code_feedback":
        from polyray.sandbox import WeakSandboxError, require_isolation

        policy = run.task.sandbox
        # now, not as every episode's error
        try:
            require_isolation(
                policy.min_isolation, policy.allow_weak_sandbox, "task.sandbox", policy.require_memory_cap
            )
        except WeakSandboxError as exc:
            raise ConfigError(str(exc)) from None
    plan_memory(run, offline_model_dir(run.model, run.task))
    return models_to_train(plan_rewards(run, task), run)


# what was drawn: an experiment's runs share their task, and are drawn once
_DRAWN: set[str] = set()


def _draw_splits(task, run: RunConfig) -> None:
    """Every split at its configured size, and the other draws a run makes (dynamics' validation
    prompts, few-shot examples), once per task and sizes: a generator's range too narrow for them is
    an error now, not in a trial (a data task's split is what its file holds: it reads the file here)."""
    extra = {"dynamics.n_prompts": ("val", run.dynamics.n_prompts if run.dynamics.every else 0)}
    extra["eval.few_shot"] = ("train", run.eval.few_shot if task.supports_few_shot else 0)
    # the task's content is in the key: a data file edited between an experiment's runs is drawn again
    key = json.dumps([run.task.model_dump(mode="json"), task.corpus_key(), extra], sort_keys=True, default=str)
    if key in _DRAWN:
        return
    # a data task's splits, which need no size
    task.prompts("test", 1)
    for split in ("train", "val", "test"):
        if task.split_size(split):
            task.prompts(split)
    for field, (split, count) in extra.items():
        if count > (task.split_size(split) or 0):
            try:
                task.prompts(split, count)
            # it names the split's size, not the field asking for more
            except ConfigError as exc:
                raise ConfigError(f"{field}: cannot draw {count} {split} prompts: {exc}") from None
    _DRAWN.add(key)


def plan_memory(run: RunConfig, model_dir: Path | None) -> list[str]:
    """The memory plan's header lines (:mod:`polyray.learner.memory`); a config whose learner rank or
    rollout worker cannot fit its declared GPU memory is refused (one ConfigError line naming the field).

    For the model in ``model_dir`` (its config.json; its tokenizer bounds the sequence lengths by the
    training prompts), or, before the model is at hand, the embedded model's settings or a known model's
    published ones (:data:`polyray.models.shapes.KNOWN_CONFIGS`: refused before its download) with lengths
    bounded by ``rollout.max_model_len``; nothing (an empty list) for another hub model not yet downloaded:
    :func:`prepare_inputs` plans it once it is."""
    from polyray.learner.memory import bound_lengths, check_run, longest_sequences
    from polyray.models.shapes import KNOWN_CONFIGS
    from polyray.models.source import model_config

    config = model_config(run.model, model_dir) or (KNOWN_CONFIGS.get(run.model.source) if model_dir is None else None)
    if config is None:
        return []
    lengths = bound_lengths(run, *longest_sequences(run, model_dir)) if model_dir is not None else bound_lengths(run)
    return check_run(run, config, lengths)


def check_generation(run: RunConfig) -> None:
    """``generation.args`` validate as the service's settings (the run fills in the model)."""
    from pydantic import ValidationError

    from polyray.config.services import GenerationServiceConfig
    from polyray.io import format_validation_error

    try:
        GenerationServiceConfig.model_validate({"model_dir": ".", **run.generation.args})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "generation.args")) from None


def worker_config(run: RunConfig) -> RunConfig:
    """The config learner ranks (and through them reward replicas) get: ``run`` itself, or with
    ``cluster.storage`` its data file and every engagement model it reads put into storage and named by
    their references there (each worker copies them to its own node), in place of the driver's paths."""
    if run.cluster.storage is None:
        return run
    from polyray.tasks import build_task
    from polyray.tasks.data import is_hub

    shared: dict[str, str] = {}
    path = getattr(run.task, "path", None)
    if path and not is_hub(path):
        shared[path] = str(share_model(run.cluster.storage, path, "data"))
    task = build_task(run.task)
    for model in plan_rewards(run, task).engagement_models:
        shared[str(model)] = str(share_model(run.cluster.storage, model, "engagement"))
    data = _replace_strings(run.model_dump(mode="json"), shared)
    for key, default in (
        ("engagement_model", "engagement_model_dir"),
        ("eval_engagement_model", "eval_engagement_model_dir"),
    ):
        local = str(getattr(task, default)()) if hasattr(task, default) else None
        # the cache entry (per file, seed and rows)
        if data["task"].get(key, "") is None and local in shared:
            data["task"][key] = shared[local]
    return RunConfig.model_validate(data)


def _replace_strings(value, replace: dict[str, str]):
    """``value`` (JSON data) with every string that is a key of ``replace`` replaced by its value."""
    if isinstance(value, dict):
        return {k: _replace_strings(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_strings(v, replace) for v in value]
    return replace.get(value, value) if isinstance(value, str) else value
