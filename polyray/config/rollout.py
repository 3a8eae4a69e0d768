"""The rollout workers' settings (``rollout``): one vLLM engine per worker, LoRA enabled.

Also what the evaluation job's engines use. Checks that need only these fields (tensor
parallelism needs as many GPUs; no split prefill on CPU; engines sharing a GPU fit it together)
are validators here. A worker with GPUs (``gpus_per_worker`` > 0) runs vLLM on CUDA, with vLLM's
GPU defaults unless set; without, on CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from polyray.io import StrictModel

MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
"""The LoRA sizes vLLM reserves for (vLLM's ``MaxLoRARanks``): any other value stops the engine at launch."""

VLLM_GPU_MEMORY_UTILIZATION = 0.92
"""vLLM's default share of a GPU's memory for one engine (its ``CacheConfig.gpu_memory_utilization``)."""


def gpu_share_error(gpus: float, utilization: float, field: str) -> str | None:
    """Why engines placed on ``gpus`` GPUs each, taking ``utilization`` of a GPU's memory, cannot all start; None
    if they can. Ray places actors whose GPU fractions add up to one on the same GPU, and each vLLM engine
    asks for its share of the *whole* GPU's memory and stops at start when less is free; so an engine on a
    fraction of a GPU keeps to that fraction of vLLM's default share (the rest holds each process's CUDA
    context), and an engine on more than one GPU takes whole ones."""
    if gpus > 1 and gpus != int(gpus):
        return f"{field} {gpus:g}: above 1, a whole number of GPUs (a fraction shares a GPU with another actor)"
    most = gpus * VLLM_GPU_MEMORY_UTILIZATION
    if 0 < gpus < 1 and utilization > most + 1e-9:
        return (
            f"gpu_memory_utilization {utilization:g} of each GPU for {field} {gpus:g}: Ray places other engines"
            f" on the rest of that GPU, and a vLLM engine stops at start when less than its share of the whole"
            f" GPU is free; set gpu_memory_utilization to at most {most:.4g}"
            f" ({field} x {VLLM_GPU_MEMORY_UTILIZATION:g}), or {field} to 1"
        )
    return None


class RolloutConfig(StrictModel):
    """vLLM rollout workers (one ``vllm.LLM`` each, LoRA enabled)."""

    num_workers: int = Field(1, ge=1, description="RolloutWorker actors in the pool.")
    cpus_per_worker: float = Field(1, gt=0, description="Ray CPUs reserved per rollout worker.")
    gpus_per_worker: float = Field(
        0,
        ge=0,
        description="Ray GPUs per rollout worker (0: vLLM on CPU); a fraction shares a GPU with other"
        " actors, so gpu_memory_utilization must keep within it.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="GPUs one worker's vLLM engine shards the model over (a model too large for one GPU);"
        " gpus_per_worker must equal it, so Ray places the worker on a node with that many free GPUs.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="The engines' weights dtype (auto: model.dtype). E.g. bfloat16 engines beside a float32 learner:"
        " faster sampling, and log-probs that differ from the learner's (GRPO's phases[].off_policy).",
    )
    max_lora_rank: MaxLoraRank = Field(16, description="Largest LoRA rank vLLM reserves for (one of vLLM's sizes).")

    def engine_dtype(self, model_dtype: str) -> str:
        """The engines' weights dtype beside a model of ``model_dtype``: ``dtype``, or ``model_dtype`` for auto."""
        return model_dtype if self.dtype == "auto" else self.dtype

    max_loras: int = Field(2, ge=1, description="Adapters resident at once in vLLM.")
    max_model_len: int = Field(128, ge=16, description="Prompt + completion token budget.")
    max_num_seqs: int = Field(128, ge=1, description="Sequences vLLM schedules at once.")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        description="Tokens per vLLM step. Default on CPU max_num_seqs x max_model_len, so no prefill is split"
        " (vLLM on CPU cannot rewind the per-request sampling seed of a split prefill); on GPU vLLM's own"
        " default, longer prefills split into chunks (its GPU runner rewinds the seed).",
    )
    kv_cache_gib: int = Field(1, ge=1, description="KV cache GiB on CPU (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GPU memory of each of a worker's GPUs (GiB): a config whose engine cannot fit vLLM's share"
        " of it (weights, LoRA slots, a step, one sequence's KV cache) is refused at load. None: unchecked.",
    )
    gpu_memory_utilization: float = Field(
        VLLM_GPU_MEMORY_UTILIZATION,
        gt=0,
        le=1,
        description="Share of each GPU's memory a worker's vLLM engine takes for weights, activations and KV cache"
        " (vLLM's default); at most gpus_per_worker x 0.92 when a fraction of a GPU. GPU only.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Run vLLM in eager mode, without torch.compile or CUDA graphs. None: on CPU (eager steps"
        " are the faster there on rollout-sized batches), off on GPU (vLLM's default: graphs decode faster).",
    )
    threads: int = Field(1, ge=1, description="Torch/OpenMP threads per worker (cap: cores are shared).")
    store_keep: int = Field(
        8,
        ge=2,
        description="Newest published adapter versions the run's adapter store keeps on disk (phase adapters are kept regardless).",
    )
    share_across_trials: bool = Field(
        True,
        description="In a sweep or experiment whose trials run one at a time, the trials share one pool of rollout"
        " workers when their rollout settings match (engines started once; each trial's adapters and cache"
        " dropped before the next). False: every trial starts its own.",
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
    def _engines_fit_a_shared_gpu(self) -> "RolloutConfig":
        error = gpu_share_error(self.gpus_per_worker, self.gpu_memory_utilization, "gpus_per_worker")
        if error:
            raise ValueError(error)
        return self

    @model_validator(mode="after")
    def _gpu_memory_on_gpu(self) -> "RolloutConfig":
        if self.gpu_memory_gib is not None and self.gpus_per_worker == 0:
            raise ValueError("gpu_memory_gib is a rollout worker's GPU memory: set gpus_per_worker, or leave it unset")
        return self

    @model_validator(mode="after")
    def _no_split_prefill_on_cpu(self) -> "RolloutConfig":
        budget = self.max_num_seqs * self.max_model_len
        if (
            self.gpus_per_worker == 0
            and self.max_num_batched_tokens is not None
            and self.max_num_batched_tokens < budget
        ):
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs x max_model_len"
                f" ({budget}) on CPU: vLLM on CPU cannot rewind a per-request sampling seed of a split prefill"
            )
        return self
