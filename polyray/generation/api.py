"""The generation service's settings and the request bodies its OpenAPI schema documents, free of Ray
and vLLM so they can be tested alone.

The bodies are OpenAI's (the fields polyray's users send); other fields pass through to vLLM's own
request models, which validate them (``top_k``, ``min_p``, ... as ``extra_body`` of the OpenAI client).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polyray.http import ApiKeyConfig

INT64 = 2**63 - 1
MAX_LOGPROBS = 20  # vLLM's default max_logprobs


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
    max_model_len: int | None = Field(None, ge=16, description="Context length (default: the model's).")
    max_num_seqs: int = Field(32, ge=1, description="Sequences the engine batches at once.")
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = Field(16, description="Largest LoRA rank served.")
    max_loras: int = Field(2, ge=1, description="Adapters in one engine batch.")
    keep_versions: int = Field(4, ge=1, description="Policy versions a replica keeps loaded (named adapters apart).")
    kv_cache_gib: int = Field(1, ge=1, description="vLLM CPU KV cache (GiB).")
    threads: int = Field(1, ge=1, description="Torch/OMP threads of the engine (CPU).")
    gpus: float = Field(0.0, ge=0, description="GPUs per replica (0: CPU).")
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file for models without one (the embedded model gets polyray's minimal"
        " template); a model with neither answers chat requests with 400.",
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


# ------------------------------------------------------------------------------ request bodies
class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a last chunk with the request's token usage.")


Stop = Annotated[str | list[str] | None, Field(None, description="Strings that end a completion.")]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM's extensions, validated by vLLM

    model: str = Field(..., description="base, policy-vN, latest, or a named adapter ('<run>/<phase>').")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens per completion.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64, description="Same seed, same request: same completions.")
    stop: Stop = None
    stream: bool = Field(False, description="Server-sent events, ending with 'data: [DONE]'.")
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None


class CompletionBody(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[Annotated[int, Field(ge=0)]] | list[list[Annotated[int, Field(ge=0)]]] = Field(
        ..., description="Text, texts, token ids, or lists of token ids."
    )
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Log-probs of the sampled and top tokens.")
    echo: bool = Field(False, description="Return the prompt too (with its log-probs when logprobs is set).")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatBody(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Tokens per completion (OpenAI's newer name).")
    logprobs: bool = Field(False, description="Log-probs of the sampled tokens.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
