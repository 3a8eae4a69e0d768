"""The Ray Train learner's settings (``learner``): ranks, LoRA shape, optimizer and failure handling."""

from __future__ import annotations

from pydantic import Field, model_validator

from polyray.io import StrictModel


# Float32 logits computed at once for token log-probs (learner.logits_chunk_mib; polyray.models.batching).
DEFAULT_CHUNK_MIB = 256


def chunk_positions(vocab_size: int, chunk_mib: float) -> int:
    """Positions per chunk: as many rows of ``vocab_size`` float32 logits as fit ``chunk_mib`` MiB (at least 1).
    Here, without torch, so the memory plan can size a chunk as the learner will."""
    return max(1, int(chunk_mib * 2**20) // (4 * vocab_size))


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )


class LearnerConfig(StrictModel):
    """Ray Train learner (TorchTrainer, DDP over gloo on CPU / NCCL on GPU)."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs per learner worker.")
    use_gpu: bool = Field(False, description="Train on GPUs (NCCL).")
    threads: int = Field(1, ge=1, description="Torch threads per learner worker.")
    keep_ranks: bool = Field(
        True,
        description="Keep the learner's rank processes (Ray actors, their imports done) across the run's phases;"
        " a phase forms its process group among them and checkpoints into the run's storage. False: one Ray"
        " Train TorchTrainer fit per phase, with fresh ranks.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass (less memory for long sequences or large models).",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Padded tokens (sequences x longest) per forward/backward pass; a rank's share of a step is"
        " split into micro-batches and their gradients accumulated (equal to the whole batch's). None: one pass.",
    )
    share_prompts: bool = Field(
        True,
        description="GRPO: run each prompt through the model once per group and its samples on its keys and values"
        " (prompt + G x completion tokens instead of G x (prompt + completion); the same log-probs up to float"
        " rounding). Not with gradient_checkpointing, which drops the key-value cache, nor on models with"
        " sliding-window or chunked attention or dynamic/longrope rotary scaling: there sequences run whole.",
    )
    pack_samples: bool = Field(
        True,
        description="GRPO with share_prompts: a prompt's samples run back to back in rows of the completion pass"
        " (up to 128 tokens, or the longest sample; a token attends to its prompt and its own sample alone)"
        " where those rows hold fewer padded tokens than one sample a row;"
        " the same log-probs up to float rounding. Under sdpa attention (transformers' default); other attention"
        " implementations run one sample a row.",
    )
    logits_chunk_mib: float = Field(
        DEFAULT_CHUNK_MIB,
        ge=0,
        description="Float32 logits computed at once for token log-probs (MiB): bounds the logits' memory whatever"
        " the batch. 0: the whole (sequences x tokens x vocabulary) logits tensor.",
    )
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GPU memory of one learner rank's GPU (GiB): a config whose memory plan needs more is refused"
        " at load, naming the field to change. None: unchecked.",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    max_failures: int = Field(
        2,
        ge=0,
        description="Worker-group restarts per phase after a learner failure (resumes from the last checkpoint);"
        " also the retries Ray Train gets to place the group, each waiting up to cluster.resource_wait_s.",
    )
    log_rollouts: bool = Field(
        False,
        description="Write every GRPO rollout (the reward's item and the reward the learner used) to rollouts.jsonl.",
    )
    publish_behind_step: bool = Field(
        True,
        description="Rollouts one step ahead: the learner goes on once an adapter publish has its version id; the"
        " rollout workers' loads and the store's write finish behind the next step, and the next publish waits"
        " for them (a phase's last publish, and one the sync canary checks, wait at once). False: every publish"
        " waits for them, as with synchronous rollouts.",
    )
    sync_check_every: int = Field(
        50,
        ge=0,
        description="Sync canary: check every N-th adapter publish on a rollout worker, in turn; also an attempt's"
        " first publish (or starting version) on every worker, a restarted worker at the next publish, and"
        " a phase's sampling temperature when it is not 1 (0 = off).",
    )

    @model_validator(mode="after")
    def _gpu_memory_on_gpu(self) -> "LearnerConfig":
        if self.gpu_memory_gib is not None and not self.use_gpu:
            raise ValueError("gpu_memory_gib is a learner rank's GPU memory: set use_gpu true, or leave it unset")
        return self
