"""Reward "countdown": the quickstart task's exact verifier as a reward function.

The judge needs the prompt's numbers and target. In-cluster callers pass them as
``metadata={"numbers": [...], "target": N}`` (that is ``Prompt.meta``); an HTTP user
usually only has the prompt text, so when the metadata is absent they are parsed from
the prompt in the task's own format (``nums 3 4 9 target 12\\nexpr:``). An item with
neither gets score 0 and a reason, not an error, so one bad item cannot fail a batch.
"""

from __future__ import annotations

from typing import Any

from polyray.reward.base import ParameterisedReward, RewardItem, RewardResult, register
from polyray.tasks import countdown


def problem_from_item(item: RewardItem) -> tuple[list[int], int] | str:
    """(numbers, target) from metadata, else from the prompt text; a reason string if neither works."""
    meta = item.metadata
    if "numbers" in meta or "target" in meta:
        numbers, target = meta.get("numbers"), meta.get("target")
        if not isinstance(numbers, list) or not all(type(n) is int for n in numbers) or type(target) is not int:
            return "metadata must have numbers: list[int] and target: int"
        return numbers, target
    parsed = countdown.parse_prompt(item.prompt)
    return parsed or "no metadata {numbers, target} and the prompt is not 'nums ... target N'"


@register("countdown")
class CountdownReward(ParameterisedReward):
    """1.0 when the completion is an expression over the given numbers that equals the target."""

    binary = True

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        return [self._score(item) for item in items]

    @staticmethod
    def _score(item: RewardItem) -> RewardResult:
        problem = problem_from_item(item)
        if isinstance(problem, str):
            return RewardResult(score=0.0, detail={"reason": problem})
        numbers, target = problem
        judgement = countdown.judge(item.completion, numbers, target)
        detail: dict[str, Any] = {"reason": judgement.reason}
        return RewardResult(score=judgement.reward, detail=detail)
