"""A full ``polyray run``: the :class:`RunConfig` tree that mirrors the YAML file, and its loader.

Assembled from the pieces' config models (one module each in this package); unknown keys
and bad values fail at load time with the dotted field path (:class:`~polyray.io.ConfigError`),
and ``--set a.b=c`` overrides edit the raw mapping before validation so they get the same
checks. The rules that span sections (unique phase names, each phase's fit to the learner and
the adapter store, LoRA rank within the rollout workers' reserve, a task that trains) are
validators here; everything else is checked by the section it belongs to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from polyray.config.cluster import ClusterConfig
from polyray.config.envs import EnvConfig
from polyray.config.eval import DynamicsConfig, EvalConfig
from polyray.config.generation import GenerationConfig
from polyray.config.learner import LearnerConfig
from polyray.config.model import ModelConfig
from polyray.config.phases import GRPOPhaseConfig, PhaseConfig, SFTPhaseConfig
from polyray.config.reward import RewardConfig, custom_function_params
from polyray.config.rollout import RolloutConfig
from polyray.config.tasks import TASK_CONFIGS, CountdownTaskConfig, TrainTaskConfig
from polyray.config.tracking import TrackingConfig
from polyray.io import StrictModel, load_yaml_model

# the phases that train on multi-turn episodes (their losses read a sample's loss mask)
EPISODE_PHASES = ("grpo", "polychromic_sft")


class RunConfig(StrictModel):
    """A full ``polyray run``: base model, task, rollouts, learner, phases, evaluation."""

    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (runs/<name>/).")
    seed: int = Field(0, description="Seed for LoRA init, data order and sampling.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TrainTaskConfig = Field(default_factory=CountdownTaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [SFTPhaseConfig(), GRPOPhaseConfig()], description="Training phases, in order."
    )
    init_adapter: str | None = Field(
        None,
        description="A saved LoRA adapter of the same base model (e.g. another run's adapters/sft) that the first"
        " phase starts from instead of a fresh LoRA; 'base' then evaluates it.",
    )
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    env: EnvConfig | None = Field(
        None,
        description="A multi-turn environment (polyray.envs): GRPO and polychromic SFT then sample episodes,"
        " the model trying again after the environment's feedback, and evaluations report pass@k by turn.",
    )

    def phase_workers(self, index: int) -> int:
        """Learner ranks of phase ``index``: its ``learner_workers``, else ``learner.num_workers``."""
        workers = self.phases[index].learner_workers
        return self.learner.num_workers if workers is None else workers

    @property
    def engine_dtype(self) -> str:
        """The rollout and evaluation engines' weights dtype: ``rollout.dtype``, or ``model.dtype`` for auto."""
        return self.rollout.engine_dtype(self.model.dtype)

    @property
    def most_learner_workers(self) -> int:
        """The most learner ranks any phase runs at once (phases run one after another); no phase: the default."""
        return max([self.phase_workers(i) for i in range(len(self.phases))], default=self.learner.num_workers)

    @model_validator(mode="before")
    @classmethod
    def _trainable_task(cls, data: Any) -> Any:
        task = data.get("task") if isinstance(data, dict) else None
        kind = task.get("type") if isinstance(task, dict) else None
        model = TASK_CONFIGS.get(kind) if isinstance(kind, str) else None
        if model is not None and model.eval_only:
            raise ValueError(model.eval_only)
        return data

    @model_validator(mode="after")
    def _unique_phase_names(self) -> "RunConfig":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"phase names must be unique and not 'base': {names}")
        for i, phase in enumerate(self.phases):
            try:
                phase.check_run(self.phase_workers(i), self.rollout.store_keep)
            except ValueError as exc:
                raise ValueError(f"phases.{i}.{exc}") from None
        if self.learner.lora.r > self.rollout.max_lora_rank:
            raise ValueError(f"learner.lora.r ({self.learner.lora.r}) exceeds rollout.max_lora_rank")
        return self

    @model_validator(mode="after")
    def _no_dropout_with_sampling(self) -> "RunConfig":
        # with LoRA dropout the learner's log-probs of a sample are those of a random sub-network:
        # ratios are not 1 and the KL not 0 at lag 0, although nothing changed
        sampling = [i for i, p in enumerate(self.phases) if hasattr(p, "sampling")]
        if self.learner.lora.dropout > 0 and sampling:
            raise ValueError(
                f"learner.lora.dropout ({self.learner.lora.dropout:g}) must be 0 with a phase that trains on its own"
                f" samples (phases.{sampling[0]} is {self.phases[sampling[0]].type}): dropout changes the learner's"
                " log-probs of a sample, so importance ratios and the KL would be off even at lag 0"
            )
        return self

    @model_validator(mode="after")
    def _sampling_logprobs_for_training(self) -> "RunConfig":
        # raw_logprobs are log-probs at T = 1; a training phase's importance ratios, clip fractions,
        # unlikeliness ranks and polychromic weights need those of the tempered sampling distribution.
        if self.rollout.logprobs_mode != "raw_logprobs":
            return self
        for i, phase in enumerate(self.phases):
            sampling = getattr(phase, "sampling", None)
            if sampling is not None and sampling.temperature != 1:
                raise ValueError(
                    f"rollout.logprobs_mode 'raw_logprobs' gives log-probs at temperature 1, but phases.{i}"
                    f".sampling.temperature is {sampling.temperature:g}: its learner needs the sampling"
                    " distribution's (set rollout.logprobs_mode: processed_logprobs)"
                )
        return self

    @model_validator(mode="after")
    def _env_fits_the_run(self) -> "RunConfig":
        env = self.env
        if env is None:
            return self
        if env.tasks and self.task.type not in env.tasks:
            raise ValueError(
                f"env.type {env.type!r} runs on a task of type {' or '.join(map(repr, env.tasks))}, not"
                f" task.type {self.task.type!r}"
            )
        if env.max_tokens >= env.max_total_tokens:
            raise ValueError(
                f"env.max_tokens ({env.max_tokens}) must be below env.max_total_tokens ({env.max_total_tokens}):"
                " a turn and the prompt before it must fit an episode's history"
            )
        if env.max_total_tokens >= self.rollout.max_model_len:
            raise ValueError(
                f"env.max_total_tokens ({env.max_total_tokens}) must be below rollout.max_model_len"
                f" ({self.rollout.max_model_len}): an episode's whole history is one engine prompt"
            )
        for i, phase in enumerate(self.phases):
            if hasattr(phase, "sampling") and phase.type not in EPISODE_PHASES:
                raise ValueError(
                    f"phases.{i}: a {phase.type} phase does not train on multi-turn episodes (env is set);"
                    f" those that do: {', '.join(EPISODE_PHASES)}"
                )
        return self


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The run config at ``path`` (defaults when None) with overrides applied."""
    return load_yaml_model(path, list(overrides), RunConfig)


def phase_reward(run: "RunConfig", phase) -> RewardConfig:
    """The reward config a phase scores with: the run's, with the phase's own name and params if it sets them."""
    own = getattr(phase, "reward", None)
    return run.reward if own is None else run.reward.model_copy(update={"name": own.name, "params": own.params})


def custom_reward_functions(*runs: "RunConfig") -> list[str]:
    """Every custom reward function (``module:function``, ``/abs/file.py:function``) the runs' phases
    score with, a ``weighted_sum``'s components too: what the reward service's replicas must import."""
    rewards = [phase_reward(run, phase) for run in runs for phase in run.phases if "reward" in type(phase).model_fields]
    return list(dict.fromkeys(p["function"] for r in rewards for _, p in custom_function_params(r.name, r.params)))
