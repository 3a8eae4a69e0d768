"""Training phases as stage functions: each step is generate -> score -> advantages -> update.

One file per phase (:mod:`.sft`, :mod:`.polychromic_sft`, :mod:`.grpo`, :mod:`.rehearsal`), each step calling the one
objective of :mod:`polyray.objectives` that its unit tests check; :mod:`.base` declares the
:class:`~.base.Phase` interface and the registry :data:`PHASES` (config ``type`` -> class, filled as each
module is imported), :mod:`.context` holds what they share and :mod:`.sampling` the base of those that sample.

A phase object owns what a step needs (data; for sampling phases, its rollouts on rank 0)
and exposes ``step(step_index, version) -> metrics``, which leaves the step's gradient in the
parameters; ``version`` is the adapter version the learner holds, the one fresh samples are
drawn under. The optimizer step, DDP, publishing and checkpointing live in
:mod:`polyray.learner.loop`; the math lives in :mod:`polyray.objectives`.

Every rank sees the same step data: rank 0 draws it (for GRPO, rolls out and scores)
and broadcasts it as a :class:`~polyray.learner.batch.TrainBatch`; each rank then trains on
its shard of sequences (shard ``rank::world``).
Each shard's loss is normalised by the *whole* batch's counts (tokens, sequences, groups)
and multiplied by the world size, so after DDP averages the gradients the step equals the
one-rank full-batch step, whatever the number of learner workers or an uneven split
(docs/algorithms.md §2). A rank's shard goes through the model in micro-batches of at most
``learner.micro_batch_tokens`` padded tokens (:meth:`StepContext.accumulate`); every loss is a
sum of per-sequence terms over whole-batch counts, so the accumulated gradient is the shard's,
and DDP all-reduces once, on the last micro-batch. A rank whose shard is empty contributes a
zero loss that still touches every parameter, so DDP's all-reduce matches across ranks. Every
tensor a phase builds is created on the model's device.
"""

from __future__ import annotations

import importlib
import pkgutil

from polyray.learner.phases.base import PHASES, Phase, phase_class
from polyray.learner.phases.context import RolloutLog, StepContext, broadcast_from_rank0
from polyray.learner.phases.grpo import GRPOPhase
from polyray.learner.phases.polychromic_sft import PolychromicSFTPhase
from polyray.learner.phases.rehearsal import ExpertIterationPhase
from polyray.learner.phases.sampling import SamplingPhase, check_lag
from polyray.learner.phases.sft import SFTPhase, encode_references

# every module of the package, so a new phase's module registers its class without an edit here
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PHASES",
    "ExpertIterationPhase",
    "GRPOPhase",
    "Phase",
    "PolychromicSFTPhase",
    "RolloutLog",
    "SFTPhase",
    "SamplingPhase",
    "StepContext",
    "broadcast_from_rank0",
    "check_lag",
    "encode_references",
    "phase_class",
]
