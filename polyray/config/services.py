"""The services' settings: the ``args`` of the reward and generation Serve applications.

``build_app(args)`` of each service validates its args against these models (unknown keys fail
naming the field, like every polyray config); both share :class:`ApiKeyConfig`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polyray.config.rollout import VLLM_GPU_MEMORY_UTILIZATION, MaxLoraRank, gpu_share_error
from polyray.config.sandbox import SandboxConfig


class ApiKeyConfig(BaseModel):
    """Where a service's API key comes from; neither set: no key, every request is served."""

    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (e.g. POLYRAY_API_KEY)."
    )
    api_key_file: str | None = Field(
        None, description="File holding the API key (a mounted secret); wins over the variable."
    )


class RewardRequestLimits(BaseModel):
    """What one HTTP request may cost a replica, checked before any work starts.

    A replica has few sandboxes and one batch slot shared with the learner's traffic, so a request
    that sets its own timeouts or asks for many judge calls could hold it for hours; these caps bound
    the parameters a request may set and the work its items add up to. The learner's handle calls are
    trusted and not checked.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_components: int = Field(8, ge=1, le=64, description="Components of a weighted_sum request; more gets 400.")
    max_code_timeout_s: float = Field(
        30.0, gt=0, le=120, description="Largest code_exec timeout_s a request may set; more gets 400."
    )
    max_sandbox_s: float = Field(
        900.0,
        gt=0,
        description="Worst-case sandbox seconds of one request (items x timeout_s / max_workers, summed over"
        " components); more gets 413.",
    )
    max_judge_calls: int = Field(
        2048,
        ge=1,
        description="Worst-case llm_judge calls of one request (items x (retries + 1), twice when pairwise,"
        " summed over components); more gets 413.",
    )
    max_request_s: float = Field(
        300.0,
        gt=0,
        description="Wall-clock seconds one HTTP request may take (queueing included); past it 504, and its"
        " sandboxes are killed. Below Serve's request timeout, so a caller gets this answer, not Serve's.",
    )


class RewardServiceConfig(ApiKeyConfig):
    """Settings of the reward service (``args`` of the Serve application)."""

    model_config = ConfigDict(extra="forbid")

    rewards: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Default parameters per reward name, e.g. engagement: {model_path: ...}."
    )
    functions: list[str] = Field(
        default_factory=list,
        description="Custom reward functions (module:function or file.py:function) the replicas may be asked to"
        " run besides rewards.custom.function; each is shipped to them with Ray's runtime environment.",
    )
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per replica (a run's cluster.worker_resources)."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica works on at once (batching needs several)."
    )
    max_queued_requests: int = Field(
        256, ge=-1, description="Requests waiting for a replica before new ones get 503 (-1: unbounded)."
    )
    max_batch_size: int = Field(32, ge=1, description="Requests merged into one server-side batch.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5, description="How long a batch waits to fill up.")
    max_items: int = Field(1024, ge=1, description="Items per request; more gets 413.")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="Request body size limit in bytes; larger gets 413.")
    limits: RewardRequestLimits = Field(
        default_factory=RewardRequestLimits, description="What one HTTP request may cost (parameters and work)."
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig,
        description="Weakest isolation code_exec judges in; below it a replica refuses to start.",
    )
    slow_down_s: float = Field(
        0.0, ge=0, le=60, description="Test hook: sleep this long per batch (to provoke overload)."
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> RewardServiceConfig:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or >= 1")
        return self


class GenerationServiceConfig(ApiKeyConfig):
    """Settings of the generation service (``args`` of the Serve application)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(..., description="The base model's directory (Hugging Face layout).")
    base_name: str = Field("base", min_length=1, description="The base model's id in requests and /v1/models.")
    run: str = Field("", description="The run whose versions it serves (the 'run' tag of its metrics).")
    store_root: str | None = Field(
        None,
        description="A run's adapter store directory: its versions are served as policy-vN and the newest as"
        " 'latest', pulled as they are published (the store actor is the run's, or the one `polyray serve"
        " generation` opens).",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="Named saved adapters: model id (e.g. '<run>/<phase>') -> peft directory."
    )
    dtype: str = Field("float32", description="Model dtype (float32 on CPU, bfloat16 on GPU).")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (default: the model's); on GPU the KV cache holds at least one."
    )
    max_num_seqs: int = Field(32, ge=1, description="Sequences the engine batches at once.")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=16,
        description="Tokens per engine step. Default on CPU max_num_seqs x the context, whole prompts per step (a"
        " per-request seed reproduces whatever else is batched); on GPU vLLM's own default, prefills in chunks.",
    )
    max_lora_rank: MaxLoraRank = Field(16, description="Largest LoRA rank served (one of vLLM's sizes).")
    max_loras: int = Field(2, ge=1, description="Adapters in one engine batch.")
    keep_versions: int = Field(4, ge=1, description="Policy versions a replica keeps loaded (named adapters apart).")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM CPU KV cache (GiB).")
    threads: int = Field(1, ge=1, description="Torch/OMP threads of the engine (CPU).")
    gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per replica (0: CPU); a fraction shares a GPU with other actors, so"
        " gpu_memory_utilization must keep within it.",
    )
    gpu_memory_utilization: float = Field(
        VLLM_GPU_MEMORY_UTILIZATION,
        gt=0,
        le=1,
        description="Share of each GPU's memory the replica's engine takes (vLLM's default); at most gpus x 0.92"
        " when a fraction of a GPU. GPU only.",
    )
    enforce_eager: bool | None = Field(
        None, description="Eager mode, without torch.compile or CUDA graphs. None: on CPU, off on GPU (vLLM's default)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {worker: 1} to keep replicas on"
        " the nodes started with them (a run passes its cluster.worker_resources).",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file for models without one (the embedded model gets polyray's minimal"
        " template); a model with neither answers chat requests with 400.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments every chat request's template gets unless the request sets its own, e.g."
        " {enable_thinking: false} for a Qwen3 policy trained without thinking; `--run` and a run's"
        " --serve-generation pass its model.chat_template_kwargs.",
    )
    compact_json: bool = Field(
        True,
        description="Structured outputs (response_format json_schema) without free whitespace (xgrammar): a weak"
        " model cannot fill its budget with blank lines inside the JSON.",
    )
    max_n: int = Field(16, ge=1, description="Largest n; more gets 400.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens; more gets 400.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt in tokens (chat: the rendered conversation); default: the context."
    )
    max_prompts: int = Field(64, ge=1, description="Prompts in one completions request; more gets 400.")
    max_request_tokens: int = Field(
        131072,
        ge=1,
        description="Completion tokens one request may ask for at most (prompts x n x max_tokens); more gets 400.",
    )
    max_stop: int = Field(4, ge=0, le=64, description="Stop strings in one request (OpenAI's limit); more gets 400.")
    max_stop_chars: int = Field(
        256,
        ge=1,
        description="Longest stop string in characters (each is matched on every new token); longer gets 400.",
    )
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Request body size limit in bytes; larger gets 413.")
    poll_s: float = Field(0.25, gt=0, le=60, description="How often a replica looks for newly published versions.")
    route_prefix: str = Field("/", pattern=r"^/", description="Where the app is mounted (base URL <host><prefix>v1).")
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        256, ge=-1, description="Requests waiting for a replica before new ones get 503 (-1: unbounded)."
    )

    @model_validator(mode="after")
    def _queue(self) -> GenerationServiceConfig:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or >= 1")
        return self

    @model_validator(mode="after")
    def _engines_fit_a_shared_gpu(self) -> GenerationServiceConfig:
        error = gpu_share_error(self.gpus, self.gpu_memory_utilization, "gpus")
        if error:
            raise ValueError(error)
        return self

    @model_validator(mode="after")
    def _no_split_prefill_on_cpu(self) -> GenerationServiceConfig:
        step, context = self.max_num_batched_tokens, self.max_model_len
        if not self.gpus and step is not None and context is not None and step < self.max_num_seqs * context:
            raise ValueError(
                f"max_num_batched_tokens ({step}) must be >= max_num_seqs x max_model_len"
                f" ({self.max_num_seqs * context}) on CPU: vLLM on CPU cannot rewind a per-request sampling seed"
                " of a split prefill"
            )
        return self
