"""The learner's adapter publisher: which adapter version every rank holds, and rank 0's publishes.

Rollout workers sample from the adapter versions the learner publishes to the pool (which
persists them in the run's adapter store). Only rank 0 publishes, but every rank tracks the
version it holds: it labels the step's metrics and checkpoints, and the ranks must agree on it.
A run's versions count up from 0 (base, no adapter) across all its phases and restarts
(docs/design.md, "How an adapter version flows"). The store, not the learner, numbers them:
each publish gets the next id the store hands out (which never repeats), and rank 0 broadcasts
it to the other ranks.
"""

from __future__ import annotations

import time
from typing import Any

from polyray.learner.phases import StepContext, broadcast_from_rank0


class AdapterPublisher:
    """``version``: the adapter version the learner holds, the same on every rank.

    ``pool``: the rollout pool (None: nothing to publish to; versions still count, as labels);
    only rank 0's is used. ``canary``: rank 0's :class:`~polyray.learner.sync.SyncCanary`, whose
    measurements :meth:`take_canary_metrics` hands to the next step's metrics.
    """

    def __init__(self, pool, phase: str, ctx: StepContext, canary=None):
        self.pool = pool if ctx.rank == 0 else None
        self.phase, self.ctx, self.canary = phase, ctx, canary
        self.version = 0
        self.canary_metrics: dict[str, float] = {}
        # rank 0: the last publish, while its loads may still be running (publish(wait=False))
        self.pending = None

    def start(
        self, version: int, step: int, *, holds_published: bool, publishes_every_step: bool, finished: bool = False
    ) -> None:
        """Begin an attempt at the phase at ``step`` holding adapter ``version``.

        ``finished``: the attempt resumes from the phase's last checkpoint (a worker or driver died
        between it and the final adapter's save). Its weights are the phase's last publish, which
        completed before that checkpoint was written, so it publishes nothing and holds ``version``:
        the phase hands over the version its checkpoint names.

        ``holds_published``: the weights are the incoming adapter, in the store as ``version``
        (a fresh start from a previous phase's adapter). Otherwise (a resume from a checkpoint,
        a fresh LoRA) or when the store has moved past ``version`` (a lost attempt published
        past it), a phase whose rollouts sample the learner publishes its starting weights
        first, under a fresh id, and the canary checks that publish. When nothing is published
        because the workers already serve the weights the learner starts from, the canary checks
        that version instead: the rollouts (and the step-0 dynamics measurement) sample it before
        the attempt's first publish."""
        if finished:
            self.version = version
            return
        # A lost attempt may have published past this attempt's checkpoint; until this attempt
        # publishes, it holds the newest version as far as lag and labels go.
        newest = broadcast_from_rank0(self.pool.newest_version() if self.pool is not None else None, self.ctx) or 0
        self.version = max(version, newest)
        # the store's newest is the learner's weights
        serves_start = holds_published and newest == version
        if publishes_every_step and not serves_start:
            self.publish(step)
        # rank 0, no collective
        elif serves_start and self.pool is not None and self.canary is not None:
            self.canary_metrics.update(self.canary.after_start(self.ctx.model, self.pool, version))

    def publish(self, step: int, wait: bool = True) -> float:
        """Every rank (a collective when there are several): move to the next version. Rank 0 publishes
        the adapter (``step``: the phase's steps done) under the id the store hands out, runs the
        canary when due, and broadcasts the id. Returns the seconds the step spent on it (0 on other
        ranks).

        ``wait=False`` (rollouts one step ahead): rank 0 returns once the id is handed out and the
        workers' loads are queued; the loads finish behind the next step (a worker samples the
        version it is asked for only after loading it: its calls run in order), and the next
        publish first waits for them, raising their errors. A publish the canary is due to check
        waits all the same: the check compares the workers with the learner's weights as published."""
        version, seconds = self._publish_on_rank0(step, wait) if self.pool is not None else (None, 0.0)
        version = broadcast_from_rank0(version, self.ctx)
        # no store to number them (no pool): versions count on by one, as labels of the weights
        self.version = self.version + 1 if version is None else version
        return seconds

    def _publish_on_rank0(self, step: int, wait: bool) -> tuple[int, float]:
        from polyray.learner.lora import extract_adapter

        started = time.perf_counter()
        self.settle()
        pending = self.pool.start_publish(extract_adapter(self.ctx.model), self.phase, step)
        if wait or (self.canary is not None and self.canary.checks_next()):
            incarnations = pending.result()
            if self.canary is not None:
                self.canary_metrics.update(
                    self.canary.after_publish(self.ctx.model, self.pool, pending.version, incarnations)
                )
        else:
            self.pending = pending
        return pending.version, time.perf_counter() - started

    def settle(self) -> None:
        """Rank 0: wait for a publish that returned before its loads finished (none: nothing to do)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            incarnations = pending.result()
            if self.canary is not None:
                self.canary.after_unchecked(incarnations)

    def take_canary_metrics(self) -> dict[str, Any]:
        """The canary's measurements since the last call (empty when none was due)."""
        metrics, self.canary_metrics = self.canary_metrics, {}
        return metrics
