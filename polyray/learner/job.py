"""A learner phase's input: what the driver hands every rank (:class:`LearnerJob`), through Ray Train or a plain
process group, and what each rank makes of it on its own node (:class:`NodeInputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from polyray.config import LearnerConfig, ModelConfig, PhaseConfig, RewardConfig, RunConfig, TrainTaskConfig

if TYPE_CHECKING:
    from polyray.learner.logs import StepLogs
    from polyray.reward.service import RewardFn
    from polyray.rollout.pool import RolloutPool
    from polyray.storage import RunStorage, StoredDir
    from polyray.tasks.base import Task


class Probe(Protocol):
    """What the learner asks of the driver's diversity-dynamics probe (:class:`polyray.eval.dynamics.DynamicsProbe`)."""

    def due(self, step: int, last: bool) -> bool:
        """Whether the probe measures after step ``step`` (1-based; ``last``: the phase's last step)."""

    def __call__(self, step: int, version: int) -> dict[str, Any] | None:
        """The probe's row for adapter ``version`` after ``step`` (None: nothing to sample with)."""


@dataclass(frozen=True)
class NodeInputs:
    """What one rank makes of its job on its own node (:meth:`LearnerJob.on_node`): the inputs a phase
    reads from disk or from the cluster, resolved before the rank's set-up starts."""

    # the base model, on this node
    model_dir: str
    # the incoming adapter, on this node (None: a fresh LoRA)
    init_adapter: str | None
    # the run's task, its prompts formatted for the model
    task: Task
    # rank 0's reward function when the phase scores samples, else None
    reward_fn: RewardFn | None


@dataclass(frozen=True, kw_only=True)
class LearnerJob:
    """One phase of a run for the learner's ranks (:func:`polyray.learner.loop.run_worker`): the parts of the
    run it trains by, built from the run by :meth:`for_phase`.

    ``model_dir`` and ``init_adapter`` are as the driver shared them: paths, or references into
    ``cluster.storage`` that each rank copies to its own node (:meth:`on_node`)."""

    phase: PhaseConfig
    learner: LearnerConfig
    # the phase's ranks
    workers: int
    seed: int
    run_name: str
    model: ModelConfig
    # the rollout engines' weights dtype, which the sync canary's tolerance follows
    engine_dtype: str
    task: TrainTaskConfig
    # what the phase scores its samples with, when it does
    reward: RewardConfig
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
    # the run's multi-turn environment (polyray.config.envs): its sampling phases draw episodes
    env: Any = None

    @classmethod
    def for_phase(cls, run: RunConfig, phase_index: int, *, model_dir: str | StoredDir, **rest: Any) -> LearnerJob:
        """Phase ``phase_index`` of ``run``; ``rest``: the job's other fields, by name."""
        from polyray.config import phase_reward

        phase = run.phases[phase_index]
        return cls(
            phase=phase,
            learner=run.learner,
            workers=run.phase_workers(phase_index),
            seed=run.seed,
            run_name=run.name,
            model=run.model,
            engine_dtype=run.engine_dtype,
            task=run.task,
            reward=phase_reward(run, phase),
            model_dir=model_dir,
            env=run.env,
            **rest,
        )

    def on_node(self, rank: int) -> NodeInputs:
        """This job's inputs on the calling rank's node: the base model and incoming adapter copied from
        storage (once per node), the task formatted for the model, and on rank 0 the reward function."""
        from polyray.learner.phases import phase_class
        from polyray.models.source import format_for_model
        from polyray.reward.service import build_reward_fn
        from polyray.storage import node_path
        from polyray.tasks import build_task

        model_dir = node_path(self.model_dir)
        init_adapter = node_path(self.init_adapter) if self.init_adapter is not None else None
        task = format_for_model(build_task(self.task), self.model, model_dir)
        scores = rank == 0 and phase_class(self.phase).uses_rewards
        reward_fn = build_reward_fn(self.reward, task, run=self.run_name) if scores else None
        return NodeInputs(model_dir=model_dir, init_adapter=init_adapter, task=task, reward_fn=reward_fn)
