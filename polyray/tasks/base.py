"""What every task provides: prompts with references, and a judge for completions.

The correctness rule lives here, once: a completion counts as correct (for pass@k,
DER and the collapse point) when its reward is >= the task's ``success_threshold``
(1.0 for the verifiable tasks; configurable for graded JSONL tasks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    text: str
    reference: str  # one canonical completion (what SFT imitates)
    meta: dict[str, Any] = field(default_factory=dict)  # what the judge needs


@dataclass(frozen=True)
class Judgement:
    reward: float  # 1.0 means the completion passes (verifiable tasks); graded tasks: their quality
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)  # graded tasks: every reference metric


def is_correct(reward: float, threshold: float = 1.0) -> bool:
    """The one correctness rule: reward at or above the task's success threshold."""
    return reward >= threshold


class Task(ABC):
    """Base of every task: ``prompts(split, count)`` and ``judge(prompt, completion)``.

    ``judge_groups`` judges every completion of every prompt; tasks override it to batch
    (JSONL: one encoder call) or to run in parallel (HumanEval: sandboxes on threads).
    """

    name: str = "task"
    success_threshold: float = 1.0
    graded: bool = False  # reward is a quality score (pass@k counts rewards >= threshold), not pass/fail
    quality_name: str = "reward"  # what the reward measures, for tables
    data_warning: str | None = None  # e.g. bad lines of the user's file that were skipped
    supports_few_shot: bool = True  # has a train split to draw in-context examples from
    stop_sequences: tuple[str, ...] = ()

    @abstractmethod
    def prompts(self, split: str, count: int) -> list[Prompt]: ...

    @abstractmethod
    def judge(self, prompt: Prompt, completion: str) -> Judgement: ...

    def judge_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Judgement]]:
        """``judge`` of each completion; ``groups[i]`` are prompt i's completions."""
        out = []
        for p, g in zip(prompts, groups):
            out.append([self.judge(p, t) for t in g])
            if on_done:
                on_done(len(g))
        return out

    def is_correct(self, reward: float) -> bool:
        return is_correct(reward, self.success_threshold)
