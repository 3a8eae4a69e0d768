"""The learner's adapter publisher: which adapter version every rank holds, and rank 0's publishes.

Rollout workers sample from the adapter versions the learner publishes to the pool (which
persists them in the run's adapter store). Only rank 0 publishes, but every rank tracks the
version it holds: it labels the step's metrics and checkpoints, and the ranks must agree on it.
A run's versions count up from 0 (base, no adapter) across all its phases and restarts
(docs/design.md, "Adapter versions").
"""

from __future__ import annotations

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

    def start(self, version: int, step: int, holds_published: bool, publishes_every_step: bool) -> None:
        """Begin an attempt at the phase at ``step`` holding adapter ``version``.

        ``holds_published``: the weights are the incoming adapter, in the store as ``version``
        (a fresh start from a previous phase's adapter). Otherwise (a resume from a checkpoint,
        a fresh LoRA) or when the store has moved past ``version`` (a lost attempt published
        past it), a phase whose rollouts sample the learner publishes its starting weights
        first, under a fresh id."""
        # Version ids never repeat (an id means one set of weights): every attempt at this phase, fresh
        # or resumed, numbers its publishes after the newest id the run's adapter store handed out; a
        # lost attempt may have published past this attempt's checkpoint.
        newest = broadcast_from_rank0(self.pool.newest_version() if self.pool is not None else None, self.ctx) or 0
        self.version = max(version, newest)
        if publishes_every_step and not (holds_published and newest == version):
            self.publish(step)

    def publish(self, step: int) -> float:
        """Every rank: move to the next version. Rank 0 publishes the adapter under it (``step``:
        the phase's steps done) and runs the canary when due. Returns the seconds the publish took."""
        self.version += 1
        if self.pool is None:
            return 0.0
        from polyray.learner.lora import extract_adapter

        seconds = self.pool.publish(self.version, extract_adapter(self.ctx.model), self.phase, step)
        if self.canary is not None:
            self.canary_metrics.update(self.canary.after_publish(self.ctx.model, self.pool, self.version))
        return seconds

    def take_canary_metrics(self) -> dict[str, Any]:
        """The canary's measurements since the last call (empty when none was due)."""
        metrics, self.canary_metrics = self.canary_metrics, {}
        return metrics
