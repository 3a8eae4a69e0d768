"""Multi-turn environments' config models, keyed by ``type`` (the registry: :data:`polyray.envs.ENVS`).

Every environment shares the episode limits of :class:`EnvConfigBase`; the episode runner
(:mod:`polyray.rollout.episodes`) enforces them, whatever the environment does.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, field_validator

from polyray.config.functions import resolve_ref, split_ref
from polyray.io import StrictModel


class EnvConfigBase(StrictModel):
    """The limits of one episode: turns, tokens and time; an observation's size."""

    # the task types the environment runs on (empty: any)
    tasks: ClassVar[tuple[str, ...]] = ()

    max_turns: int = Field(3, ge=1, le=32, description="Most model turns per episode.")
    max_tokens: int = Field(24, ge=1, description="Most tokens the model writes in one turn.")
    max_total_tokens: int = Field(
        256,
        ge=2,
        description="Most tokens of an episode's whole history (prompt, model turns, observations): a turn that"
        " could pass it is not started, and the episode ends with the reward it has.",
    )
    max_seconds: float = Field(
        120.0, gt=0, description="Wall-clock budget of an episode, generation and environment steps alike."
    )
    max_observation_chars: int = Field(
        4096, ge=1, description="Longest observation an environment may return: a longer one fails its episode."
    )


class CountdownRetryEnvConfig(EnvConfigBase):
    """Countdown with retries: a wrong answer is told what it evaluates to (or why it is invalid)."""

    type: Literal["countdown_retry"] = "countdown_retry"
    # the task types it runs on
    tasks: ClassVar[tuple[str, ...]] = ("countdown",)


class CodeFeedbackEnvConfig(EnvConfigBase):
    """Code with feedback: each answer runs the problem's public tests in the sandbox; a failure is shown
    (trimmed) and the model revises. The reward is the hidden tests' (the task's judge) on the answer."""

    type: Literal["code_feedback"] = "code_feedback"
    # the task types it runs on
    tasks: ClassVar[tuple[str, ...]] = ("code", "countdown_code")

    max_feedback_chars: int = Field(
        600, ge=40, description="Longest failure report shown to the model: longer ones keep their head and tail."
    )


class CustomEnvConfig(EnvConfigBase):
    """The user's own :class:`polyray.envs.Environment` subclass, on any task."""

    type: Literal["custom"] = "custom"
    environment: str = Field(
        description="The class: 'path/to/file.py:ClassName' (made absolute when the config loads) or"
        " 'module:ClassName'. Built once per episode with (this config, the run's task)."
    )

    @field_validator("environment")
    @classmethod
    def _reference(cls, v: str) -> str:
        split_ref(v)
        return resolve_ref(v)


ENV_CONFIG_MODELS: tuple[type[EnvConfigBase], ...] = (CountdownRetryEnvConfig, CodeFeedbackEnvConfig, CustomEnvConfig)
"""Every environment's config model (``tests/unit/config/test_registries.py`` keeps their types equal to
the environment registry's keys)."""

EnvConfig = Annotated[Union[ENV_CONFIG_MODELS], Field(discriminator="type")]
"""Any environment of the registry."""
