"""Task registry: a task config's ``type`` picks the class that builds prompts and judges."""

from __future__ import annotations

from polyray.tasks.base import Judgement, Prompt, Task
from polyray.tasks.countdown_task import CountdownTask

TASKS: dict[str, type] = {"countdown": CountdownTask}


def build_task(config) -> Task:
    """``config`` is a task config model; its ``type`` must be a key of :data:`TASKS`."""
    return TASKS[config.type](config)


__all__ = ["Judgement", "Prompt", "Task", "TASKS", "build_task"]
