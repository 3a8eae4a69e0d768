"""A learner phase's input: what the driver hands every rank, through Ray Train or a plain process group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from polyray.config import PhaseConfig, RunConfig

if TYPE_CHECKING:
    from polyray.learner.logs import StepLogs
    from polyray.rollout.pool import RolloutPool
    from polyray.storage import RunStorage, StoredDir


class Probe(Protocol):
    """What the learner asks of the driver's diversity-dynamics probe (:class:`polyray.eval.dynamics.DynamicsProbe`)."""

    def due(self, step: int, last: bool) -> bool:
        """Whether the probe measures after step ``step`` (1-based; ``last``: the phase's last step)."""

    def __call__(self, step: int, version: int) -> dict[str, Any] | None:
        """The probe's row for adapter ``version`` after ``step`` (None: nothing to sample with)."""


@dataclass(frozen=True)
class LearnerJob:
    """One phase of a run for the learner's ranks (:func:`polyray.learner.loop.run_worker`), built by keyword.

    ``model_dir`` and ``init_adapter`` are as the driver shared them: paths, or references into
    ``cluster.storage`` that each rank copies to its own node (:meth:`local_model_dir`)."""

    run: RunConfig
    phase_index: int
    # the base model
    model_dir: str | StoredDir
    # the run directory; None with cluster.storage (the adapter goes to storage)
    output_dir: str | None = None
    # None: no rollout workers
    pool: RolloutPool | None = None
    # the adapter version the incoming weights were published as
    start_version: int = 0
    # the incoming adapter (None: a fresh LoRA)
    init_adapter: str | StoredDir | None = None
    # None: written into output_dir by this process
    logs: StepLogs | None = None
    # the driver's diversity-dynamics probe
    dynamics: Probe | None = None
    storage: RunStorage | None = None
    # what polyray.learner.checkpoints recovered of Ray Train's record
    recovered_checkpoint: str | None = None

    @property
    def phase(self) -> PhaseConfig:
        return self.run.phases[self.phase_index]

    def local_model_dir(self) -> str:
        """The base model on this rank's node (copied from storage once per node)."""
        from polyray.storage import node_path

        return node_path(self.model_dir)

    def local_init_adapter(self) -> str | None:
        """The incoming adapter on this rank's node, or None."""
        from polyray.storage import node_path

        return node_path(self.init_adapter) if self.init_adapter is not None else None
