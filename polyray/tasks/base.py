"""What every task provides: prompts with references, and a judge for completions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Prompt:
    text: str
    reference: str  # one canonical completion (what SFT imitates)
    meta: dict[str, Any] = field(default_factory=dict)  # what the judge needs


@dataclass(frozen=True)
class Judgement:
    reward: float  # in [0, 1]; 1.0 means the completion passes
    reason: str


class Task(Protocol):
    name: str

    def prompts(self, split: str, count: int) -> list[Prompt]: ...

    def judge(self, prompt: Prompt, completion: str) -> Judgement: ...
