"""Every name a config accepts is a registry's key, and every registry key is a name a config accepts.

The config package (``polyray/config/``) declares the names as Literals so a config loads
without importing the registries (torch, the sandbox, embeddings); these tests keep the two
sides equal, so a new task, phase, estimator, reward or diversity function added to one side
only fails here until the other side names it too.
"""

from __future__ import annotations

from typing import Annotated, Union, get_args, get_origin

import pytest

from polyray.config.advantages import AdvantageConfig
from polyray.config.names import DiversityName, RewardName
from polyray.config.phases import PhaseConfig
from polyray.config.tasks import TASK_CONFIGS, TaskConfig


def union_members(union) -> tuple[type, ...]:
    """The models of an ``Annotated[Union[...], Field(discriminator=...)]``."""
    if get_origin(union) is Annotated:
        union = get_args(union)[0]
    assert get_origin(union) is Union, union
    return get_args(union)


def discriminator_names(union) -> dict[str, type]:
    """``type`` literal -> member model, over every member of ``union`` (a model may accept several)."""
    names: dict[str, type] = {}
    for model in union_members(union):
        for name in get_args(model.model_fields["type"].annotation):
            assert name not in names, f"{name!r} is the type of both {names[name].__name__} and {model.__name__}"
            names[name] = model
    return names


def test_task_types_are_the_task_registry():
    from polyray.tasks import TASKS

    assert set(discriminator_names(TaskConfig)) == set(TASKS)
    assert discriminator_names(TaskConfig) == TASK_CONFIGS


def test_phase_types_are_the_learner_phases():
    from polyray.learner.phases import PHASES

    assert set(discriminator_names(PhaseConfig)) == set(PHASES)


def test_advantage_types_are_the_estimator_registry():
    from polyray.objectives.advantages import ADVANTAGE_ESTIMATORS

    names = discriminator_names(AdvantageConfig)
    assert set(names) == set(ADVANTAGE_ESTIMATORS)
    assert {t: model for t, (model, _) in ADVANTAGE_ESTIMATORS.items()} == names  # one config model per estimator


def test_reward_names_are_the_reward_registry():
    from polyray.reward import REWARD_FUNCTIONS

    assert set(get_args(RewardName)) == set(REWARD_FUNCTIONS)


def test_diversity_names_are_the_diversity_registry():
    from polyray.diversity import DIVERSITY_FUNCTIONS

    assert set(get_args(DiversityName)) == set(DIVERSITY_FUNCTIONS)


def test_selector_names_are_the_selector_registry_but_its_generic_entry():
    from polyray.config.names import SelectorName
    from polyray.eval.metrics import SELECTORS

    assert set(get_args(SelectorName)) == set(SELECTORS) - {"scores"}


def test_evaluation_job_takes_every_task_type():
    from polyray.config.eval import EVAL_TASK_CONFIGS, EvalTaskConfig
    from polyray.tasks import TASKS

    assert set(discriminator_names(EvalTaskConfig)) == set(EVAL_TASK_CONFIGS) == set(TASKS)
    for name, entry in EVAL_TASK_CONFIGS.items():
        assert issubclass(entry, TASK_CONFIGS[name])  # the task's own fields and checks


def test_a_registry_key_without_a_config_name_fails(monkeypatch):
    """The comparison is of both sides: a registry that gains a key no longer matches."""
    from polyray.diversity import DIVERSITY_FUNCTIONS

    monkeypatch.setitem(DIVERSITY_FUNCTIONS, "new_metric", lambda texts: 0.0)
    with pytest.raises(AssertionError):
        test_diversity_names_are_the_diversity_registry()


def test_task_bound_pieces_are_registered_with_the_tasks():
    """A diversity or answer key that reads one task's answers is declared in polyray.tasks, the one place the
    evaluation, the interpolation and the advantages ask."""
    import typing

    from polyray.config.advantages import RepeatPenaltyAdvantageConfig
    from polyray.diversity import DIVERSITY_FUNCTIONS
    from polyray.tasks import ANSWER_KEYS, TASK_DIVERSITIES, TASKS, answer_key, diversities_for

    assert all(name in DIVERSITY_FUNCTIONS and task in TASKS for name, task in TASK_DIVERSITIES.items())
    assert diversities_for(["semantic", "countdown_expr"], "countdown") == ["semantic", "countdown_expr"]
    assert diversities_for(["semantic", "countdown_expr"], "replies") == ["semantic"]
    allowed = typing.get_args(RepeatPenaltyAdvantageConfig.model_fields["answer"].annotation)
    assert set(ANSWER_KEYS) == set(allowed)
    assert answer_key("  3 +\n 9 ", "text") == "3 + 9"
    assert (
        answer_key("(3+9)", "countdown_expr")
        == answer_key("3 + 9", "countdown_expr")
        != answer_key("9+3", "countdown_expr")
    )


def test_env_types_are_the_environment_registry():
    from polyray.config.envs import ENV_CONFIG_MODELS
    from polyray.envs import ENVS

    types = [name for model in ENV_CONFIG_MODELS for name in get_args(model.model_fields["type"].annotation)]
    assert sorted(types) == sorted(ENVS) and len(set(types)) == len(types)
