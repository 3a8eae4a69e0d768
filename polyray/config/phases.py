"""Training phases (``phases: [...]``), a union discriminated on ``type``: a new phase is a new model.

- ``sft``: NLL of the references;
- ``polychromic_sft``: NLL minus lambda times a score-function diversity term (docs/algorithms.md §1);
- ``grpo``: GRPO with a configurable advantage estimator (docs/algorithms.md §2-3), optionally with
  rehearsal of the phase-start policy's correct samples (``rehearsal``, docs/algorithms.md §3);
- ``expert_iteration``: SFT on the phase-start policy's own correct samples (docs/algorithms.md §3).
- ``dpo``: DPO on pairs of the policy's own samples ranked by the reward (docs/algorithms.md §10).

A phase type is two classes: its config here, a :class:`PhaseSpec`, which answers what the run's checks,
memory plan and ``polyray check`` ask of it (:meth:`~PhaseSpec.check_run`, :attr:`~PhaseSpec.trains_on_references`,
:meth:`~PhaseSpec.rank_sequences`, :meth:`~PhaseSpec.kl_reference_kind`, :meth:`~PhaseSpec.summary`), so that
no code outside the two branches on a phase's type; and its learner class
(:class:`polyray.learner.phases.base.Phase`), registered under the same ``type``
(``tests/unit/config/test_registries.py`` keeps the two sides equal). Every phase has its own
learning-rate schedule (``lr``, ``lr_schedule``, ``warmup_steps``, ``min_lr_ratio``; a fresh AdamW per
phase, so a phase's warm-up restarts from its own start).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from polyray.config.advantages import MAX_SUBSETS, AdvantageConfig, Aggregation, GroupAdvantageConfig
from polyray.config.names import DiversityName
from polyray.config.reward import PhaseRewardConfig
from polyray.config.sampling import SamplingConfig
from polyray.io import StrictModel

# The learning-rate schedule of a phase (docs/algorithms.md §7), built by polyray.learner.schedule. Shared
# by the phases through these annotated types; each phase declares them right after its ``lr``.
LRSchedule = Annotated[
    Literal["constant", "linear", "cosine"],
    Field(description="LR after warm-up: constant, or a linear / cosine decay to min_lr_ratio * lr at the phase end."),
]
WarmupSteps = Annotated[
    int, Field(ge=0, description="Steps of linear warm-up to lr at the start of the phase (0 = none; < steps).")
]
MinLRRatio = Annotated[
    float,
    Field(ge=0, le=1, description="Floor of a linear / cosine decay (and start of its warm-up), as a fraction of lr."),
]
# The learner ranks of a phase (each phase runs a Ray Train worker group of its own), declared by every phase.
LearnerWorkers = Annotated[
    Union[int, None],
    Field(
        ge=1,
        description="Ray Train workers (data-parallel ranks) of this phase; None: learner.num_workers. E.g. SFT on"
        " every core, and a phase that samples on fewer ranks, beside the rollout workers generating while it trains.",
    ),
]


def _warmup_ends_inside_the_phase(value: int, info: ValidationInfo) -> int:
    # absent when steps itself failed: that error is reported instead
    steps = info.data.get("steps")
    if steps is not None and value >= steps:
        raise ValueError(f"must be < steps ({steps}): the warm-up must end inside the phase")
    return value


def _floor_of_a_decay(value: float, info: ValidationInfo) -> float:
    if value > 0 and info.data.get("lr_schedule") == "constant":
        raise ValueError("must be 0 with lr_schedule constant: it is the floor of a linear or cosine decay")
    return value


def _check_sampling_phase(phase) -> None:
    if phase.async_rollouts and phase.max_lag < 1:
        raise ValueError("async_rollouts samples one adapter version behind the learner: set max_lag >= 1")
    if phase.sampling.temperature <= 0:
        raise ValueError("sampling.temperature must be > 0 in a training phase: its estimators need sampling log-probs")
    if phase.sampling.top_p < 1:
        raise ValueError(
            "sampling.top_p must be 1 in a training phase: the importance ratio and the score-function"
            " estimate need the full distribution softmax(logits / temperature)"
        )


def _ranks_named(phase) -> str:
    """The setting a phase's learner ranks come from, for an error message."""
    return "learner.num_workers" if phase.learner_workers is None else "learner_workers"


def _check_lag(phase, store_keep: int) -> None:
    if phase.async_rollouts and phase.max_lag >= store_keep:
        raise ValueError(
            f"max_lag ({phase.max_lag}) must be < rollout.store_keep ({store_keep}):"
            " a lagging rollout samples a version the adapter store must still hold"
        )


KLReference = Literal["none", "base", "phase_start"]


class PhaseSpec(StrictModel):
    """What every phase type declares about itself for the code around the learner (preflight, the memory
    plan, ``polyray check``); each phase config overrides what differs from these defaults."""

    # whether the phase trains on the task's reference completions (preflight checks every train prompt has one)
    trains_on_references: ClassVar[bool] = False

    def check_run(self, learner_workers: int, store_keep: int) -> None:
        """Raise ValueError (naming this phase's field, without ``phases.N.``) when the phase does not fit
        its learner ranks (``learner_workers``, else the run's ``learner.num_workers``) or ``rollout.store_keep``."""

    @abstractmethod
    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        """(the most sequences one of ``ranks`` learner ranks trains on in a step, their longest length in
        tokens) for the memory plan, given the longest prompt + reference (``references``) and the longest
        prompt + sampled completion of this phase (``sampled``)."""

    def kl_reference_kind(self) -> KLReference:
        """The frozen policy a KL term holds the phase to: none, the adapter-disabled base, or the phase-start
        adapter (a second LoRA adapter on the learner when the phase starts from one)."""
        return "none"

    @abstractmethod
    def summary(self, ranks: int) -> list[str]:
        """The phase's clauses in ``polyray check``'s plan, after its steps (``ranks``: its learner ranks)."""

    def describe(self, ranks: int) -> str:
        """``polyray check``'s line for the phase: steps, the type's own clauses, LR, its learner ranks."""
        parts = [f"{self.steps} steps", *self.summary(ranks), f"lr {self.lr:g}"]
        if self.learner_workers is not None:
            parts.append(f"{ranks} learner rank{'s' if ranks > 1 else ''}")
        return ", ".join(parts)


def _shard(n: int, ranks: int) -> int:
    """The largest rank's share of ``n`` sequences."""
    return -(-n // ranks)


class SFTPhaseConfig(PhaseSpec):
    """Supervised fine-tuning: NLL of the canonical references."""

    type: Literal["sft"] = "sft"
    name: str = Field("sft", description="Phase name (output folder, results key).")
    steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step (split over learner ranks).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (the peak, after warm-up).")
    lr_schedule: LRSchedule = "constant"
    warmup_steps: WarmupSteps = 0
    min_lr_ratio: MinLRRatio = 0.0
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")
    learner_workers: LearnerWorkers = None

    trains_on_references: ClassVar[bool] = True

    _warmup_fits = field_validator("warmup_steps")(_warmup_ends_inside_the_phase)
    _floor_decays = field_validator("min_lr_ratio")(_floor_of_a_decay)

    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        return _shard(self.batch_size, ranks), references

    def summary(self, ranks: int) -> list[str]:
        return [f"batch {self.batch_size} ({_shard(self.batch_size, ranks)} per learner rank)"]

    def check_run(self, learner_workers: int, store_keep: int) -> None:
        if self.batch_size < learner_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be >= {_ranks_named(self)} ({learner_workers}): every rank"
                " trains on at least one reference"
            )


class PolychromicSFTPhaseConfig(SFTPhaseConfig):
    """Polychromic SFT: NLL of the references minus lambda times a score-function diversity term.

    docs/algorithms.md §1.

    Each step also samples ``n_samples`` completions for ``prompts_per_step`` training prompts under
    the current adapter; their set diversity drives the leave-one-out (or k-subset) advantages.
    """

    # steps, batch_size, lr, lr_schedule, ... as in SFTPhaseConfig
    type: Literal["polychromic_sft"] = "polychromic_sft"
    name: str = Field("polychromic_sft", description="Phase name (output folder, results key).")
    lam: float = Field(0.3, ge=0, description="Weight lambda of the diversity term (0 = plain SFT).")
    n_samples: int = Field(3, ge=2, description="Samples per prompt whose set diversity is scored (n).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts sampled per step for the diversity term.")
    diversity: DiversityName = Field("semantic", description="Set diversity function D.")
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Weights of the sentence encoder an embedding diversity (semantic, vendi) scores the samples with"
        " while training: bfloat16 is about 2.6x faster on a CPU with AVX512-BF16 or AMX (slower on one without),"
        " its cosines within 0.01 of float32's, and trained models shown equivalent on validation pass@k"
        " (configs/experiments/bf16_encoder.yaml). auto: bfloat16 where the CPU has it natively, else float32"
        " (the phase logs which). Evaluation always embeds in float32.",
    )
    estimator: Literal["loo", "subset"] = Field(
        "loo", description="Advantage of each sample: leave-one-out marginal, or k-subset marginal."
    )
    subset_k: int = Field(2, ge=1, description="Subset size for estimator=subset (must be < n_samples).")
    ratio_clip: float = Field(2.0, ge=1, description="Clip of the importance weight pi/pi_old of the samples.")
    max_lag: int = Field(0, ge=0, description="Allowed adapter-version lag of samples behind the learner.")
    async_rollouts: bool = Field(
        False, description="Generate step t+1's samples during step t's update (one version stale; needs max_lag >= 1)."
    )
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig())

    @model_validator(mode="after")
    def _subset_smaller_than_n(self) -> "PolychromicSFTPhaseConfig":
        if self.estimator == "subset" and self.subset_k >= self.n_samples:
            raise ValueError(f"subset_k ({self.subset_k}) must be < n_samples ({self.n_samples})")
        if self.estimator == "subset" and math.comb(self.n_samples, self.subset_k) > MAX_SUBSETS:
            raise ValueError(
                f"C(n_samples, subset_k) = {math.comb(self.n_samples, self.subset_k)} subsets exceeds {MAX_SUBSETS}"
            )
        _check_sampling_phase(self)
        return self

    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        # whole sample groups per rank, beside its share of the references
        shard = _shard(self.batch_size, ranks) + _shard(self.prompts_per_step, ranks) * self.n_samples
        return shard, max(references, sampled)

    def summary(self, ranks: int) -> list[str]:
        diversity = f"diversity term: {self.prompts_per_step} prompts x {self.n_samples} samples, lambda {self.lam:g}"
        return [*super().summary(ranks), diversity]

    def check_run(self, learner_workers: int, store_keep: int) -> None:
        super().check_run(learner_workers, store_keep)
        if self.prompts_per_step < learner_workers:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be >= {_ranks_named(self)} ({learner_workers}):"
                " every rank trains on whole sample groups"
            )
        _check_lag(self, store_keep)


class SelfSamplesConfig(StrictModel):
    """A buffer of the phase-start policy's own correct samples, drawn once when the phase starts:
    ``samples_per_prompt`` per training prompt, scored by the phase's reward (docs/algorithms.md §3)."""

    samples_per_prompt: int = Field(32, ge=1, description="Samples drawn per training prompt for the buffer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the buffer's draws.")
    threshold: float = Field(1.0, description="A sample enters the buffer when its reward is >= this (1.0: binary).")


class RehearsalConfig(SelfSamplesConfig):
    """GRPO plus gamma x the NLL of a batch of buffered correct samples (the step's prompts first)."""

    gamma: float = Field(..., gt=0, description="Weight of the rehearsal NLL added to the GRPO loss.")
    batch_size: int | None = Field(
        None, ge=1, description="Buffered samples per step (None: prompts_per_step), the step's prompts first."
    )


class OffPolicyConfig(StrictModel):
    """Where GRPO's old policy comes from, and the importance correction for the rollout engine's
    disagreement with the learner on the sampled tokens (docs/training.md, "GRPO's engine mismatch")."""

    old_logprobs: Literal["engine", "learner"] = Field(
        "engine",
        description="pi_old of the clipped ratio: the log-probs the rollout engine returned with the samples, or the"
        " learner's own at the sampling version (free when the samples are fresh; with async_rollouts one no-grad"
        " forward per step under the adapter they were drawn with).",
    )
    correction: Literal["none", "tis", "mis", "seq_tis"] = Field(
        "none",
        description="Weight on the policy-gradient term for r = pi_learner,old / pi_engine: tis min(r, cap) per token;"
        " mis r, or 0 outside [1/cap, cap]; seq_tis min(geometric mean of the sequence's r, cap). Needs"
        " old_logprobs learner.",
    )
    cap: float = Field(2.0, gt=1, description="C: the truncation of tis and seq_tis, the band [1/C, C] of mis.")
    measure_every: int = Field(
        10,
        ge=0,
        description="Log the engine's disagreement with the learner (mismatch_* in metrics.jsonl and the dashboard):"
        " on every step whose samples are fresh (free: the step's own forward), and on samples drawn ahead every"
        " N-th step, which takes one no-grad forward under the weights they were drawn with (every step with"
        " old_logprobs learner, which takes it anyway). 0: fresh samples only.",
    )

    @model_validator(mode="after")
    def _correction_on_the_learner_ratio(self) -> "OffPolicyConfig":
        if self.correction != "none" and self.old_logprobs != "learner":
            raise ValueError(
                f"correction {self.correction!r} weighs pi_learner,old / pi_engine: set old_logprobs 'learner'"
                " (with 'engine' the clipped ratio already holds the engine's log-probs)"
            )
        return self


class RolloutPhaseSpec(PhaseSpec):
    """A phase that samples its batch from the rollout pool at every step (GRPO, DPO): the fields of its
    rollouts and its schedule; each type sets its own defaults and adds its loss's fields after these."""

    type: str
    name: str
    steps: int = Field(40, ge=1, description="Optimizer steps (one rollout batch each).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per rollout batch.")
    group_size: int = Field(8, ge=2, description="Samples per prompt (G).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (the peak, after warm-up).")
    lr_schedule: LRSchedule = "constant"
    warmup_steps: WarmupSteps = 0
    min_lr_ratio: MinLRRatio = 0.0
    max_lag: int = Field(0, ge=0, description="Allowed adapter-version lag of samples behind the learner.")
    async_rollouts: bool = Field(
        False,
        description="Generate step t+1's rollouts during step t's update (one version stale; needs max_lag >= 1).",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")
    learner_workers: LearnerWorkers = None
    reward: PhaseRewardConfig | None = Field(
        None, description="This phase's reward, instead of the run's reward.name and reward.params."
    )

    _warmup_fits = field_validator("warmup_steps")(_warmup_ends_inside_the_phase)
    _floor_decays = field_validator("min_lr_ratio")(_floor_of_a_decay)

    @model_validator(mode="after")
    def _lag_for_async(self) -> "RolloutPhaseSpec":
        if self.async_rollouts and self.max_lag < 1:
            raise ValueError("async_rollouts samples one adapter version behind the learner: set max_lag >= 1")
        return self

    def check_run(self, learner_workers: int, store_keep: int) -> None:
        _check_lag(self, store_keep)


class GRPOPhaseConfig(RolloutPhaseSpec):
    """GRPO on rollouts from the pool (docs/algorithms.md §2-3)."""

    type: Literal["grpo"] = "grpo"
    name: str = Field("grpo", description="Phase name (output folder, results key).")
    clip_eps_low: float = Field(0.2, ge=0, description="Lower ratio clip epsilon.")
    clip_eps_high: float = Field(0.2, ge=0, description="Upper ratio clip epsilon (DAPO clip-higher: 0.28).")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the k3 KL to the reference policy.")
    kl_reference: Literal["phase_start", "base"] = Field(
        "phase_start",
        description="KL reference: the policy at the start of this phase (a frozen copy of the incoming adapter),"
        " or the adapter-disabled base model.",
    )
    kl_reference_logprobs: Literal["learner", "rollouts"] = Field(
        "learner",
        description="Where the KL reference's log-probs come from: a no-grad forward on each learner rank, or the"
        " rollout workers, which score each sample under the reference right after drawing it (vLLM prompt"
        " log-probs; with async_rollouts off the learner's path). 'rollouts' needs sampling.temperature 1.",
    )
    advantage: AdvantageConfig = Field(
        default_factory=GroupAdvantageConfig,
        description="Advantage estimator and its parameters, e.g. {type: passk, k: 4} (docs/algorithms.md §3).",
    )
    aggregation: Aggregation = Field(
        "seq_mean_token_mean", description="Token-loss aggregation: GRPO, DAPO token mean, Dr. GRPO."
    )
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose advantages are all zero.")
    off_policy: OffPolicyConfig = Field(
        default_factory=OffPolicyConfig,
        description="pi_old and the engine-mismatch correction, e.g. {old_logprobs: learner, correction: tis}.",
    )
    rehearsal: RehearsalConfig | None = Field(
        None,
        description="Rehearse the phase-start policy's correct samples: e.g. {gamma: 0.3} adds 0.3 x their NLL"
        " to every step's loss (docs/algorithms.md §3). None: plain GRPO.",
    )

    @property
    def rehearsal_batch(self) -> int:
        """Buffered samples per step (0: no rehearsal)."""
        if self.rehearsal is None:
            return 0
        return self.rehearsal.batch_size or self.prompts_per_step

    @model_validator(mode="after")
    def _k_fits_group(self) -> "GRPOPhaseConfig":
        self.advantage.check_group(self.group_size)
        _check_sampling_phase(self)
        if self.kl_reference_logprobs == "rollouts" and self.sampling.temperature != 1:
            raise ValueError(
                f"kl_reference_logprobs 'rollouts' needs sampling.temperature 1 (got {self.sampling.temperature:g}):"
                " vLLM scores a given sequence at temperature 1 only; use 'learner'"
            )
        return self

    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        # rehearsal samples go in micro-batches of their own
        return _shard(max(self.prompts_per_step * self.group_size, self.rehearsal_batch), ranks), sampled

    def kl_reference_kind(self) -> KLReference:
        return self.kl_reference if self.kl_beta > 0 else "none"

    def summary(self, ranks: int) -> list[str]:
        sequences = self.prompts_per_step * self.group_size
        return [f"{self.prompts_per_step} prompts x {self.group_size} samples per step = {sequences} sequences"]


class ExpertIterationPhaseConfig(SFTPhaseConfig):
    """SFT on the phase-start policy's own correct samples (expert iteration; docs/algorithms.md §3).

    When the phase starts, the rollout workers draw ``buffer.samples_per_prompt`` samples per training
    prompt from the incoming adapter; the correct ones are the buffer, and each step's batch is drawn
    from it uniformly over prompts, then over a prompt's samples."""

    # steps, batch_size, lr, ... as in SFTPhaseConfig
    type: Literal["expert_iteration"] = "expert_iteration"
    name: str = Field("expert_iteration", description="Phase name (output folder, results key).")
    buffer: SelfSamplesConfig = Field(default_factory=SelfSamplesConfig)
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="The buffer's draws (their temperature is buffer.temperature)."
    )
    reward: PhaseRewardConfig | None = Field(
        None, description="This phase's reward, instead of the run's reward.name and reward.params."
    )

    trains_on_references: ClassVar[bool] = False

    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        return _shard(self.batch_size, ranks), sampled

    def summary(self, ranks: int) -> list[str]:
        buffer = f"buffer: {self.buffer.samples_per_prompt} samples per training prompt, the correct kept"
        return [*super().summary(ranks), buffer]


class DPOPhaseConfig(RolloutPhaseSpec):
    """DPO on the policy's own samples (online DPO; docs/algorithms.md §10): each step samples ``group_size``
    completions for ``prompts_per_step`` training prompts, pairs each prompt's best-rewarded completion with
    its worst, and trains on the sigmoid preference loss against a frozen reference. A prompt whose samples
    all score the same gives no pair."""

    type: Literal["dpo"] = "dpo"
    name: str = Field("dpo", description="Phase name (output folder, results key).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per rollout batch (at most one pair each).")
    group_size: int = Field(4, ge=2, description="Samples per prompt, of which the best and the worst make its pair.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (the peak, after warm-up).")
    beta: float = Field(
        0.1, gt=0, description="DPO's beta: how far the policy's log-ratios may move from the reference's."
    )
    reference: Literal["phase_start", "base"] = Field(
        "phase_start",
        description="The frozen reference: the policy at the start of this phase (a copy of the incoming adapter),"
        " or the adapter-disabled base model.",
    )

    def rank_sequences(self, ranks: int, *, references: int, sampled: int) -> tuple[int, int]:
        # whole pairs per rank
        return 2 * _shard(self.prompts_per_step, ranks), sampled

    def kl_reference_kind(self) -> KLReference:
        return self.reference

    def summary(self, ranks: int) -> list[str]:
        draws = f"{self.prompts_per_step} prompts x {self.group_size} samples per step"
        return [f"{draws}, the best and the worst of each paired, beta {self.beta:g}"]


PhaseConfig = Annotated[
    Union[SFTPhaseConfig, PolychromicSFTPhaseConfig, GRPOPhaseConfig, ExpertIterationPhaseConfig, DPOPhaseConfig],
    Field(discriminator="type"),
]
