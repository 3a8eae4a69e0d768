"""What every environment provides (:mod:`polyray.envs`): ``reset`` and ``step``, over text."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from polyray.tasks.base import Prompt, Task


@dataclass(frozen=True)
class Step:
    """An environment's answer to one model turn."""

    # what the model reads next; None: nothing more to say (the episode ends)
    observation: str | None
    # the episode's reward as of this turn (the final answer's, when the episode ends here)
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """One episode's environment on ``task``'s prompt; ``config`` is its entry of :mod:`polyray.config.envs`.

    Subclasses implement :meth:`reset` and :meth:`step`; the runner calls ``reset`` once, then ``step``
    after every model turn until ``done``, the turn limit or a budget ends the episode."""

    name: str = "env"

    def __init__(self, config: Any, task: Task):
        self.config, self.task = config, task

    @abstractmethod
    def reset(self, prompt: Prompt) -> str:
        """Start an episode on ``prompt``; returns the first observation, the text the model continues."""

    @abstractmethod
    def step(self, model_text: str) -> Step:
        """Read the model's turn ``model_text`` (its sampled tokens decoded once)."""
