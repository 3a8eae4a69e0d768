"""The request bodies the generation service's OpenAPI schema documents, free of Ray and vLLM so they
can be tested alone (its settings: :class:`polyray.config.services.GenerationServiceConfig`).

The bodies are OpenAI's (the fields polyray's users send); other fields pass through to vLLM's own
request models, which validate them (``top_k``, ``min_p``, ... as ``extra_body`` of the OpenAI client).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


INT64 = 2**63 - 1
MAX_LOGPROBS = 20  # vLLM's default max_logprobs


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
