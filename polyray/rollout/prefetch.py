"""Rank 0's rollouts for a sampling phase, step by step, synchronous or one step ahead (generation and
scoring overlapping the update)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from polyray.tasks.base import Prompt


@dataclass
class Rollout:
    """A step's samples, scored, and what the step waited for: ``rollout_s`` for the samples,
    ``score_s`` for their scoring (0 when both were done before the step asked)."""

    prompts: list[Prompt]
    groups: list
    # what the phase's ``score(prompts, groups)`` returned
    scored: Any
    rollout_s: float
    score_s: float


class RolloutPrefetch:
    """Rank 0's rollouts, step by step. ``submit(step, version)`` starts a step's generation under
    adapter ``version`` and returns (prompts, pending); ``score(prompts, groups)`` scores its samples
    (GRPO: rewards; polychromic SFT: diversity advantages).

    Synchronous (``ahead=False``): submit, wait and score at the step itself (samples lag 0).
    Ahead: step t+1 is submitted when step t starts, so its generation overlaps step t's
    update and its samples are one version stale (lag 1; importance ratios correct for it). Its
    samples are also scored as soon as they arrive, in a background thread, so the reward calls
    or the diversity model overlap the update as well (``score`` must be safe to call from that
    thread). Scoring does not depend on when it runs:
    the same samples get the same scores either way.
    """

    def __init__(self, submit, ahead: bool, steps: int, score):
        self.submit, self.ahead, self.steps, self.score = submit, ahead, steps, score
        # step -> its collection's result
        self.pending: dict[int, Callable[[], tuple]] = {}
        # the collection started last (ahead): the next one waits for it
        self._last: Future | None = None

    def get(self, step: int, version: int) -> Rollout:
        job = self.pending.pop(step, None) or self._start(step, version)
        if self.ahead and step + 1 < self.steps:
            self.pending[step + 1] = self._start(step + 1, version)
        asked = time.perf_counter()
        prompts, groups, scored, sampled = job()
        done = time.perf_counter()
        # samples that arrived before the step asked: no wait for them
        sampled = min(max(sampled, asked), done)
        return Rollout(prompts, groups, scored, rollout_s=sampled - asked, score_s=done - sampled)

    def _start(self, step: int, version: int) -> Callable[[], tuple]:
        """Submit a step's generation; its collection (wait, then score) runs when the step asks for it
        (synchronous), or ahead in a thread of its own that first waits for the previous step's, so
        collections run one at a time, in step order. The threads are daemons: one still waiting for
        samples when its phase fails never holds up the process's exit."""
        prompts, pending = self.submit(step, version)
        if not self.ahead:
            return partial(self._collect, prompts, pending)
        job, before = Future(), self._last

        def collect():
            if before is not None:
                wait([before])
            try:
                job.set_result(self._collect(prompts, pending))
            # raised in the step that asks for it
            except BaseException as e:
                job.set_exception(e)

        threading.Thread(target=collect, name=f"polyray-rollout-score-{step}", daemon=True).start()
        self._last = job
        return job.result

    def _collect(self, prompts, pending):
        """(prompts, groups, their scores, when the samples arrived)."""
        groups = pending.result()
        sampled = time.perf_counter()
        return prompts, groups, self.score(prompts, groups), sampled


def rollout_rate(got: Rollout) -> dict[str, float]:
    """``rollout_tokens_per_s``: the step's completion tokens per second it waited for them; left out
    when it did not wait (samples ready one step ahead), where the rate says nothing."""
    if got.rollout_s <= 0:
        return {}
    return {"rollout_tokens_per_s": sum(len(s.token_ids) for g in got.groups for s in g) / got.rollout_s}
