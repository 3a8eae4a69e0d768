"""The learner's side of a phase type: the :class:`Phase` interface every phase implements, and the
registry of them by config ``type``.

A phase type is a config (a :class:`~polyray.config.phases.PhaseSpec`, which answers the run's checks,
memory plan and summary), a :class:`Phase` subclass naming that config in ``config_type`` (it registers
itself in :data:`PHASES` when its module is imported; :mod:`polyray.learner.phases` imports every module
of the package), and the objective its step computes (:mod:`polyray.objectives`). The loop
(:mod:`polyray.learner.loop`) asks a phase only what this class declares.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from polyray.config.phases import PhaseSpec
    from polyray.learner.phases.context import StepContext
    from polyray.tasks.base import Task

PHASES: dict[str, type[Phase]] = {}


class Phase(ABC):
    """One phase of training on one learner rank: ``step(step, version)`` leaves the step's gradient in the
    parameters and returns its metrics (:mod:`polyray.learner.phases`).

    A subclass sets ``config_type`` (registering it under that config's ``type``) and its class facts;
    its ``__init__(cfg, *, task, n_train, ctx, pool)`` keeps ``cfg`` and ``ctx``."""

    config_type: ClassVar[type[PhaseSpec]]
    # whether rank 0 needs ctx.reward_fn (it scores samples)
    uses_rewards: ClassVar[bool] = False
    # whether the adapter is published after every step (something samples it mid-phase), else at the end only
    publishes_every_step: ClassVar[bool] = False

    cfg: Any
    ctx: StepContext

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_type" in cls.__dict__:
            name = cls.config_type.model_fields["type"].default
            if name in PHASES:
                raise TypeError(f"phase type {name!r}: both {PHASES[name].__name__} and {cls.__name__}")
            PHASES[name] = cls

    @abstractmethod
    def __init__(self, cfg: Any, *, task: Task, n_train: int, ctx: StepContext, pool: Any = None) -> None:
        """Set up the phase on this rank: its data and, on rank 0, its rollouts from ``pool``."""

    @property
    def samples_ahead(self) -> bool:
        """Whether the next step's samples are drawn during this step's update (the publish after a step
        then need not wait for the workers' loads)."""
        return False

    @classmethod
    def reference_adapter_dir(cls, cfg: PhaseSpec, init_adapter: str | None) -> str | None:
        """The adapter to load as the frozen KL reference, or None (no KL term, or the adapter-disabled base).
        The phase-start reference of a phase that starts from a fresh LoRA (B = 0) is the base itself."""
        return init_adapter if cfg.kl_reference_kind() == "phase_start" else None

    @abstractmethod
    def step(self, step: int, version: int) -> dict[str, float]:
        """Forward and backward step ``step`` (0-based) micro-batch by micro-batch; ``version`` is the
        adapter version the learner holds (fresh samples are drawn under it). Returns the step's metrics."""


def phase_class(cfg: PhaseSpec) -> type[Phase]:
    """The learner class of phase config ``cfg``."""
    try:
        return PHASES[cfg.type]
    except KeyError:
        raise TypeError(f"phase type {cfg.type!r} has no learner class (known: {', '.join(sorted(PHASES))})") from None
