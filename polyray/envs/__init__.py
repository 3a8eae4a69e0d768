"""Multi-turn environments: the model acts, the environment answers, the model tries again.

An :class:`Environment` is one episode's counterpart: :meth:`~Environment.reset` gives the first
observation (the prompt as the model sees it), :meth:`~Environment.step` reads one model turn as text
and answers with a :class:`Step`: the next observation (None when the episode is over), the reward so
far, and whether it is done. Environments see and return text only; the episode runner
(:mod:`polyray.rollout.episodes`) keeps the history as token ids, enforces every limit of the
environment's config (:class:`polyray.config.envs.EnvConfigBase`), and turns an environment's error,
an oversized or non-text observation or a hang into that one episode's failure.

One registry, :data:`ENVS`, keyed by the config's ``type``; each environment is built on the run's
task (its prompts and its judge), one instance per episode.
"""

from __future__ import annotations

from typing import Any, Callable

from polyray.envs.base import Environment, Step
from polyray.envs.code_feedback import CodeFeedbackEnv
from polyray.envs.countdown_retry import CountdownRetryEnv
from polyray.tasks.base import Task

# type -> its class; "custom" names the user's own (its config's ``environment``)
ENVS: dict[str, type[Environment] | None] = {
    "countdown_retry": CountdownRetryEnv,
    "code_feedback": CodeFeedbackEnv,
    "custom": None,
}


class EnvError(ValueError):
    """An environment that cannot be built; the message names the config field."""


def load_environment(ref: str) -> type[Environment]:
    """The :class:`Environment` subclass ``ref`` ('file.py:ClassName' or 'module:ClassName') names."""
    from polyray.config.functions import import_module_of, split_ref

    where, name = split_ref(ref)
    cls = getattr(import_module_of(ref), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise EnvError(f"env.environment {ref!r}: {name!r} in {where} is not a subclass of polyray.envs.Environment")
    return cls


def env_factory(config: Any, task: Task) -> Callable[[], Environment]:
    """A maker of fresh environments of ``config`` (its ``type`` is a key of :data:`ENVS`) on ``task``."""
    cls = ENVS[config.type] or load_environment(config.environment)
    return lambda: cls(config, task)


__all__ = [
    "ENVS",
    "CodeFeedbackEnv",
    "CountdownRetryEnv",
    "EnvError",
    "Environment",
    "Step",
    "env_factory",
    "load_environment",
]
