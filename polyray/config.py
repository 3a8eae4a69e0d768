"""Experiment configuration: one pydantic model tree that mirrors the YAML files.

Unknown keys and bad values fail at load time with the dotted field path in the
message (:class:`ConfigError`); ``--set a.b=c`` overrides are applied to the raw
mapping before validation so they get the same checks. Phases form a discriminated
union on ``type`` so a new training phase is a new model, not a new ``if``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Model):
    """The embedded base model polyray builds and pretrains itself (Qwen3 architecture)."""

    vocab_size: int = Field(384, ge=300, le=65536, description="BPE vocabulary size (byte-level, 256 base symbols).")
    hidden_size: int = Field(128, ge=32, description="Transformer width.")
    num_layers: int = Field(4, ge=1, le=48, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Query heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(32, ge=32, description="Per-head width; vLLM's CPU attention needs >= 32.")
    intermediate_size: int = Field(384, ge=16, description="MLP inner width.")
    max_positions: int = Field(128, ge=32, description="Maximum sequence length.")
    pretrain_steps: int = Field(1500, ge=0, description="Full fine-tuning steps on the task's pretrain split.")
    pretrain_batch_size: int = Field(64, ge=1, description="Sequences per pretraining step.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate for pretraining.")
    pretrain_noise: float = Field(0.5, ge=0, lt=1, description="Share of pretraining completions that miss the target.")
    pretrain_prompts: int = Field(5000, ge=100, description="Distinct prompts in the pretraining corpus.")
    seed: int = Field(0, description="Seed for tokenizer corpus, init and pretraining order.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class ModelConfig(_Model):
    """Which base model to fine-tune."""

    source: str = Field(
        "embedded",
        description="'embedded' (build/cached tiny model), a local HF model directory, or a Hugging Face id.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Build settings when source is 'embedded'.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype for learner and rollouts.")


class CountdownTaskConfig(_Model):
    """Countdown-style arithmetic: numbers + target -> an expression using the numbers."""

    type: Literal["countdown"] = "countdown"
    num_numbers: int = Field(3, ge=2, le=6, description="Numbers given per prompt.")
    max_number: int = Field(16, ge=2, le=100, description="Numbers are drawn from 1..max_number.")
    min_operands: int = Field(2, ge=1, description="Fewest numbers the generating expression uses.")
    max_target: int = Field(99, ge=1, description="Largest target.")
    seed: int = Field(0, description="Prompt generator seed (splits stay disjoint for any seed).")
    n_train: int = Field(512, ge=1, description="Training prompts (SFT references, GRPO prompts).")
    n_val: int = Field(32, ge=1, description="Validation prompts.")
    n_test: int = Field(64, ge=1, description="Held-out test prompts for evaluation.")


TaskConfig = Annotated[Union[CountdownTaskConfig], Field(discriminator="type")]


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
    seed: int = Field(0, description="vLLM sampling seed.")


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
    lora: LoraConfig = Field(default_factory=LoraConfig)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    max_failures: int = Field(
        2, ge=0, description="Worker-group restarts per phase after a learner failure (resumes from the last checkpoint)."
    )


def _check_async(phase) -> None:
    if phase.async_rollouts and phase.max_lag < 1:
        raise ValueError("async_rollouts samples one adapter version behind the learner: set max_lag >= 1")


class SFTPhaseConfig(_Model):
    """Supervised fine-tuning: NLL of the canonical references."""

    type: Literal["sft"] = "sft"
    name: str = Field("sft", description="Phase name (output folder, results key).")
    steps: int = Field(60, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step (split over learner ranks).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")


DiversityName = Literal["semantic", "distinct_1", "distinct_2", "self_bleu", "vendi", "countdown_expr"]


class PolychromicSFTPhaseConfig(SFTPhaseConfig):
    """Polychromic SFT: NLL of the references minus lambda times a score-function diversity term (ALGORITHMS.md 1).

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
        _check_async(self)
        return self


class GRPOPhaseConfig(_Model):
    """GRPO on rollouts from the pool (ALGORITHMS.md section 2)."""

    type: Literal["grpo"] = "grpo"
    name: str = Field("grpo", description="Phase name (output folder, results key).")
    steps: int = Field(40, ge=1, description="Optimizer steps (one rollout batch each).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per rollout batch.")
    group_size: int = Field(8, ge=2, description="Samples per prompt (G).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    clip_eps_low: float = Field(0.2, ge=0, description="Lower ratio clip epsilon.")
    clip_eps_high: float = Field(0.2, ge=0, description="Upper ratio clip epsilon (DAPO clip-higher: 0.28).")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the k3 KL to the adapter-disabled base.")
    scale_by_std: bool = Field(True, description="Divide group advantages by the group std (off = Dr. GRPO).")
    advantage: Literal["group", "rloo", "passk", "polychromic"] = Field(
        "group", description="Advantage estimator (ALGORITHMS.md 2)."
    )
    advantage_k: int = Field(4, ge=1, description="k of the passk / polychromic estimators (<= group_size).")
    advantage_diversity: DiversityName = Field(
        "countdown_expr", description="Diversity d(S) inside the polychromic set advantage."
    )
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = Field(
        "seq_mean_token_mean", description="Token-loss aggregation: GRPO, DAPO token mean, Dr. GRPO."
    )
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal.")
    max_lag: int = Field(0, ge=0, description="Allowed adapter-version lag of samples behind the learner.")
    async_rollouts: bool = Field(
        False, description="Generate step t+1's rollouts during step t's update (one version stale; needs max_lag >= 1)."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    checkpoint_every: int = Field(20, ge=1, description="Steps between checkpoints.")

    @model_validator(mode="after")
    def _k_fits_group(self) -> "GRPOPhaseConfig":
        if self.advantage in ("passk", "polychromic") and self.advantage_k > self.group_size:
            raise ValueError(f"advantage_k ({self.advantage_k}) must be <= group_size ({self.group_size})")
        _check_async(self)
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
        if max(self.ks, default=1) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        return self


class RewardConfig(_Model):
    """Where GRPO rewards come from: the Ray Serve reward service, or the task's judge in-process."""

    endpoint: bool = Field(
        False, description="Score through the reward service's DeploymentHandle (started with the run if absent)."
    )
    name: str = Field("countdown", description="Reward function of the service (GET /v1/rewards lists them).")
    app_name: str = Field("reward", description="Serve application name of the reward service.")
    http_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve HTTP on this port (None: in-cluster handle only)."
    )
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per reward replica.")


class ClusterConfig(_Model):
    """Where to run. ``address`` None starts a local Ray cluster."""

    address: str | None = Field(None, description="Ray address ('auto' to join a running cluster).")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs for a local cluster (default: enough for all actors)."
    )
    dashboard: bool = Field(False, description="Start the Ray dashboard with a local cluster.")
    worker_logs: bool = Field(False, description="Forward worker stdout/stderr (vLLM, Ray Train) to the driver.")


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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _unique_phase_names(self) -> "RunConfig":
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"phase names must be unique and not 'base': {names}")
        for i, phase in enumerate(self.phases):
            if phase.type == "polychromic_sft" and phase.prompts_per_step < self.learner.num_workers:
                raise ValueError(
                    f"phases.{i}.prompts_per_step ({phase.prompts_per_step}) must be >= learner.num_workers"
                    f" ({self.learner.num_workers}): every rank trains on whole sample groups"
                )
        if self.learner.lora.r > self.rollout.max_lora_rank:
            raise ValueError(f"learner.lora.r ({self.learner.lora.r}) exceeds rollout.max_lora_rank")
        return self


def _format_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        reason = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        parts.append(f"{path}: {reason}{shown}")
    return f"{source}: " + "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. learner.lr=1e-4")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"--set {item}: {'.'.join(path[: i + 1])} is not a valid list index") from None
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {item}: {'.'.join(path[: i + 1])} is not a section")
        if isinstance(node, list):
            try:
                node[int(path[-1])] = value
            except (ValueError, IndexError):
                raise ConfigError(f"--set {item}: {'.'.join(path)} is not a valid list index") from None
        else:
            node[path[-1]] = value
    return data


def load_yaml_model(path: str | Path | None, overrides: list[str], model: type[BaseModel]) -> Any:
    """Read YAML (or ``{}`` when ``path`` is None), apply ``--set`` overrides, validate as ``model``."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The run config at ``path`` (defaults when None) with overrides applied."""
    return load_yaml_model(path, list(overrides), RunConfig)


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
