"""Run configuration: one pydantic model tree that mirrors the YAML files.

Built from the config models of the pieces it configures (tasks, models, advantage
estimators; names such as diversity functions come from their registries). Unknown keys
and bad values fail at load time with the dotted field path in the message
(:class:`~polyray.io.ConfigError`); ``--set a.b=c`` overrides are applied to the raw
mapping before validation so they get the same checks. Phases form a discriminated
union on ``type`` so a new training phase is a new model, not a new ``if``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from polyray.diversity import DiversityName
from polyray.io import StrictModel as _Model
from polyray.io import load_yaml_model
from polyray.models.source import ModelConfig
from polyray.objectives.advantages import AdvantageConfig, GroupAdvantageConfig
from polyray.objectives.grpo import Aggregation
from polyray.objectives.polychromic import MAX_SUBSETS
from polyray.tasks.code import CodeTaskConfig, CountdownCodeTaskConfig
from polyray.tasks.countdown import CountdownTaskConfig
from polyray.tasks.jsonl import JsonlTaskConfig

# Every task of the registry trains, but HumanEval: it is a test set, kept for evaluation only.
TaskConfig = Annotated[
    Union[CountdownTaskConfig, CountdownCodeTaskConfig, CodeTaskConfig, JsonlTaskConfig], Field(discriminator="type")
]


class SamplingConfig(_Model):
    temperature: float = Field(1.0, ge=0, description="Softmax temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(24, ge=1, description="Maximum new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the completion).")


class RolloutConfig(_Model):
    """vLLM rollout workers (one ``vllm.LLM`` each, LoRA enabled)."""

    num_workers: int = Field(1, ge=1, description="RolloutWorker actors in the pool.")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs reserved per rollout worker.")
    gpus_per_worker: float = Field(0, ge=0, description="Ray GPUs per rollout worker (0 on CPU).")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one worker's vLLM engine shards the model over (a model too large for one GPU);"
        " gpus_per_worker must equal it, so Ray places the worker on a node with that many free GPUs.",
    )
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank vLLM reserves for.")
    max_loras: int = Field(2, ge=1, description="Adapters resident at once in vLLM.")
    max_model_len: int = Field(128, ge=16, description="Prompt + completion token budget.")
    max_num_seqs: int = Field(128, ge=1, description="Sequences vLLM schedules at once.")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        description="Tokens per vLLM step (default max_num_seqs x max_model_len, so no prefill is split: "
        "vLLM on CPU cannot rewind the per-request sampling seed of a split prefill).",
    )
    kv_cache_gib: int = Field(1, ge=1, description="KV cache GiB on CPU (VLLM_CPU_KVCACHE_SPACE).")
    threads: int = Field(1, ge=1, description="Torch/OpenMP threads per worker (cap: cores are shared).")
    store_keep: int = Field(
        8, ge=2, description="Newest published adapter versions the run's adapter store keeps on disk (phase adapters are kept regardless)."
    )
    seed: int = Field(0, description="Mixed with the run seed and the worker index into each vLLM engine's seed.")
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs",
        description="Sampled-token log-probs: of the sampling distribution (training needs these) or of the model"
        " at T = 1 (what a likelihood-based selector ranks by).",
    )

    @model_validator(mode="after")
    def _tensor_parallel_gpus(self) -> "RolloutConfig":
        if self.tensor_parallel_size > 1 and self.gpus_per_worker != self.tensor_parallel_size:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} shards each worker's engine over that many GPUs:"
                f" set gpus_per_worker to {self.tensor_parallel_size} (it is {self.gpus_per_worker:g})"
            )
        return self

    @model_validator(mode="after")
    def _no_split_prefill_on_cpu(self) -> "RolloutConfig":
        budget = self.max_num_seqs * self.max_model_len
        if self.gpus_per_worker == 0 and self.max_num_batched_tokens is not None and self.max_num_batched_tokens < budget:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs x max_model_len"
                f" ({budget}) on CPU: vLLM on CPU cannot rewind a per-request sampling seed of a split prefill"
            )
        return self


class LoraConfig(_Model):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )


class LearnerConfig(_Model):
    """Ray Train learner (TorchTrainer, DDP over gloo on CPU / NCCL on GPU)."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs per learner worker.")
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL).")
    threads: int = Field(1, ge=1, description="Torch threads per learner worker.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory for long sequences or large models).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    max_failures: int = Field(
        2, ge=0, description="Worker-group restarts per phase after a learner failure (resumes from the last checkpoint)."
    )
    log_rollouts: bool = Field(
        False, description="Write every GRPO rollout (the reward's item and the reward the learner used) to rollouts.jsonl."
    )
    sync_check_every: int = Field(
        50, ge=0, description="Sync canary: check the first and every N-th adapter publish on a rollout worker (0 = off)."
    )


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


class SFTPhaseConfig(_Model):
    """Supervised fine-tuning: NLL of the canonical references."""

    type: Literal["sft"] = "sft"
    name: str = Field("sft", description="Phase name (output folder, results key).")
    steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step (split over learner ranks).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")


class PolychromicSFTPhaseConfig(SFTPhaseConfig):
    """Polychromic SFT: NLL of the references minus lambda times a score-function diversity term.

    docs/algorithms.md §1.

    Each step also samples ``n_samples`` completions for ``prompts_per_step`` training prompts under
    the current adapter; their set diversity drives the leave-one-out (or k-subset) advantages.
    """

    type: Literal["polychromic_sft"] = "polychromic_sft"  # steps, batch_size, lr, ... as in SFTPhaseConfig
    name: str = Field("polychromic_sft", description="Phase name (output folder, results key).")
    lam: float = Field(0.3, ge=0, description="Weight lambda of the diversity term (0 = plain SFT).")
    n_samples: int = Field(3, ge=2, description="Samples per prompt whose set diversity is scored (n).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts sampled per step for the diversity term.")
    diversity: DiversityName = Field("semantic", description="Set diversity function D.")
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


_MOVED_ADVANTAGE_KEYS = {"advantage_k": "advantage.k", "advantage_diversity": "advantage.diversity",
                         "scale_by_std": "advantage.scale_by_std"}


class PhaseRewardConfig(_Model):
    """A phase's own reward (e.g. correctness first, then correctness plus a length term)."""

    name: str = Field(..., description="Registry reward, or 'weighted_sum' with params {components: [...]}.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its parameters, over those the task supplies.")


class GRPOPhaseConfig(_Model):
    """GRPO on rollouts from the pool (docs/algorithms.md §2-3)."""

    type: Literal["grpo"] = "grpo"
    name: str = Field("grpo", description="Phase name (output folder, results key).")
    steps: int = Field(40, ge=1, description="Optimizer steps (one rollout batch each).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per rollout batch.")
    group_size: int = Field(8, ge=2, description="Samples per prompt (G).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    clip_eps_low: float = Field(0.2, ge=0, description="Lower ratio clip epsilon.")
    clip_eps_high: float = Field(0.2, ge=0, description="Upper ratio clip epsilon (DAPO clip-higher: 0.28).")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the k3 KL to the reference policy.")
    kl_reference: Literal["phase_start", "base"] = Field(
        "phase_start",
        description="KL reference: the policy at the start of this phase (a frozen copy of the incoming adapter),"
        " or the adapter-disabled base model.",
    )
    advantage: AdvantageConfig = Field(
        default_factory=GroupAdvantageConfig,
        description="Advantage estimator and its parameters, e.g. {type: passk, k: 4} (docs/algorithms.md §3).",
    )
    aggregation: Aggregation = Field(
        "seq_mean_token_mean", description="Token-loss aggregation: GRPO, DAPO token mean, Dr. GRPO."
    )
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose advantages are all zero.")
    max_lag: int = Field(0, ge=0, description="Allowed adapter-version lag of samples behind the learner.")
    async_rollouts: bool = Field(
        False, description="Generate step t+1's rollouts during step t's update (one version stale; needs max_lag >= 1)."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")
    reward: PhaseRewardConfig | None = Field(
        None, description="This phase's reward, instead of the run's reward.name and reward.params."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if isinstance(data.get("advantage"), str):
                raise ValueError(f"advantage is a section now: advantage: {{type: {data['advantage']}}}")
            for old, new in _MOVED_ADVANTAGE_KEYS.items():
                if old in data:
                    raise ValueError(f"{old} moved to {new} (e.g. advantage: {{type: passk, k: 4}})")
        return data

    @model_validator(mode="after")
    def _k_fits_group(self) -> "GRPOPhaseConfig":
        estimators = [self.advantage] if self.advantage.type != "mix" else [self.advantage.early, self.advantage.late]
        for est in estimators:
            k = getattr(est, "k", None)
            if k is not None and k > self.group_size:
                raise ValueError(f"advantage.k ({k}) must be <= group_size ({self.group_size})")
            too_many = est.type == "polychromic" and math.comb(self.group_size, k) > est.max_subsets
            if too_many and est.sample_subsets is None:
                raise ValueError(
                    f"C(group_size, advantage.k) = {math.comb(self.group_size, k)} subsets exceeds max_subsets"
                    f" ({est.max_subsets}): set advantage.sample_subsets for a Monte-Carlo estimate"
                )
        _check_sampling_phase(self)
        return self


PhaseConfig = Annotated[
    Union[SFTPhaseConfig, PolychromicSFTPhaseConfig, GRPOPhaseConfig], Field(discriminator="type")
]


class EvalConfig(_Model):
    """Evaluation after each phase: unbiased pass@k on the test prompts."""

    n_samples: int = Field(10, ge=1, description="Samples per prompt (n >= max k).")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="k values for pass@k.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    few_shot: int = Field(
        0, ge=0, le=8, description="In-context examples (train prompts + references) prepended to each prompt."
    )
    diversity: list[DiversityName] = Field(
        default_factory=lambda: ["countdown_expr", "distinct_1", "self_bleu", "semantic"],
        description="Set diversity metrics of each prompt's samples, averaged over prompts.",
    )

    @model_validator(mode="after")
    def _n_covers_k(self) -> "EvalConfig":
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        if max(self.ks) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        return self


class DynamicsConfig(_Model):
    """Diversity dynamics: every ``every`` steps, sample a fixed validation set and log diversity and pass@k."""

    every: int = Field(0, ge=0, description="Steps between measurements (0 = off).")
    n_prompts: int = Field(16, ge=1, description="Fixed validation prompts measured each time.")
    n_samples: int = Field(8, ge=2, description="Samples per prompt.")
    metrics: list[DiversityName] = Field(
        default_factory=lambda: ["distinct_1", "self_bleu", "countdown_expr"], description="Diversity metrics logged."
    )
    ks: list[int] = Field(default_factory=lambda: [1, 4], description="k values of the logged pass@k.")

    @model_validator(mode="after")
    def _n_covers_k(self) -> "DynamicsConfig":
        if any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if max(self.ks, default=1) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        return self


class RewardConfig(_Model):
    """Where GRPO rewards come from: the Ray Serve reward service, or the task's judge in-process."""

    endpoint: bool = Field(
        False, description="Score through the reward service's DeploymentHandle (started with the run if absent)."
    )
    name: str | None = Field(
        None,
        description="Registry reward that scores GRPO rollouts (GET /v1/rewards lists them; None: the task's own,"
        " e.g. countdown, code_exec, engagement); 'weighted_sum' adds several: params {components: [{name, weight,"
        " params}]}.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the reward, over those the task supplies (checked at run start)."
    )
    app_name: str = Field("reward", description="Serve application name of the reward service.")
    http_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve HTTP on this port (None: in-cluster handle only)."
    )
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per reward replica.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds the learner waits for one scoring call.")
    retries: int = Field(
        5, ge=0, description="Times a scoring call is retried when its replica died or timed out (Serve restarts replicas)."
    )


def phase_reward(run: "RunConfig", phase) -> RewardConfig:
    """The reward config a phase scores with: the run's, with the phase's own name and params if it sets them."""
    own = getattr(phase, "reward", None)
    return run.reward if own is None else run.reward.model_copy(update={"name": own.name, "params": own.params})


class ClusterConfig(_Model):
    """Where to run. ``address`` None starts a local Ray cluster."""

    address: str | None = Field(None, description="Ray address ('auto' to join a running cluster).")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs for a local cluster (default: enough for all actors)."
    )
    dashboard: bool = Field(True, description="Start the Ray dashboard with a local cluster (its URL is printed).")
    metrics_export_port: int | None = Field(
        None, ge=1, le=65535, description="Prometheus endpoint of a local cluster's node (default: Ray picks one)."
    )
    worker_logs: bool = Field(False, description="Forward worker stdout/stderr (vLLM, Ray Train) to the driver.")


class GenerationConfig(_Model):
    """``polyray run --serve-generation``: the live policy behind an OpenAI-compatible endpoint
    (``polyray/generation/``) at ``http://<host>:<http_port><route_prefix>/v1``."""

    host: str = Field("127.0.0.1", description="HTTP host of Serve's proxy (0.0.0.0: every interface).")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    route_prefix: str = Field(
        "/generation", pattern=r"^/.", description="Where the app is mounted (the reward service has '/')."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Generation service settings (polyray.generation.api.GenerationServiceConfig: limits,"
        " replicas, API key, ...); the model, engine settings and adapter store come from the run.",
    )


class TrackingConfig(_Model):
    """Experiment tracking (``polyray/tracking.py``): each ``polyray run`` is one tracking run (its
    steps, validation probes and evaluations); a sweep or experiment logs one per trial through Ray
    Tune's logger callbacks. Needs ``pip install 'polyray[tracking]'``."""

    backend: Literal["none", "mlflow", "wandb"] = Field("none", description="Where to log: none, mlflow or wandb.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db).",
    )
    experiment: str = Field("polyray", min_length=1, description="MLflow experiment / W&B project.")
    mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode (default: $WANDB_MODE, else online); offline writes ./wandb for `wandb sync`."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on every tracking run.")


class RunConfig(_Model):
    """A full ``polyray run``: base model, task, rollouts, learner, phases, evaluation."""

    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (runs/<name>/).")
    seed: int = Field(0, description="Seed for LoRA init, data order and sampling.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=CountdownTaskConfig)
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

    @model_validator(mode="before")
    @classmethod
    def _trainable_task(cls, data: Any) -> Any:
        task = data.get("task") if isinstance(data, dict) else None
        if isinstance(task, dict) and task.get("type") == "humaneval":
            raise ValueError(
                "task.type 'humaneval' is an evaluation set (its problems are HumanEval's test split) and does not"
                " train: train on a 'code' task (a JSONL of {prompt, test, entry_point}) and evaluate HumanEval"
                " with polyray evaluate"
            )
        return data

    @model_validator(mode="after")
    def _unique_phase_names(self) -> "RunConfig":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"phase names must be unique and not 'base': {names}")
        for i, phase in enumerate(self.phases):
            if phase.type in ("sft", "polychromic_sft") and phase.batch_size < self.learner.num_workers:
                raise ValueError(
                    f"phases.{i}.batch_size ({phase.batch_size}) must be >= learner.num_workers"
                    f" ({self.learner.num_workers}): every rank trains on at least one reference"
                )
            if phase.type == "polychromic_sft" and phase.prompts_per_step < self.learner.num_workers:
                raise ValueError(
                    f"phases.{i}.prompts_per_step ({phase.prompts_per_step}) must be >= learner.num_workers"
                    f" ({self.learner.num_workers}): every rank trains on whole sample groups"
                )
            if getattr(phase, "async_rollouts", False) and phase.max_lag >= self.rollout.store_keep:
                raise ValueError(
                    f"phases.{i}.max_lag ({phase.max_lag}) must be < rollout.store_keep ({self.rollout.store_keep}):"
                    " a lagging rollout samples a version the adapter store must still hold"
                )
        if self.learner.lora.r > self.rollout.max_lora_rank:
            raise ValueError(f"learner.lora.r ({self.learner.lora.r}) exceeds rollout.max_lora_rank")
        return self


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The run config at ``path`` (defaults when None) with overrides applied."""
    return load_yaml_model(path, list(overrides), RunConfig)
