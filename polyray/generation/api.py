"""The request bodies the generation service's OpenAPI schema documents, free of Ray and vLLM so they
can be tested alone (its settings: :class:`polyray.config.services.GenerationServiceConfig`).

The bodies are OpenAI's (the fields polyray's users send); other fields pass through to vLLM's own
request models, which validate them (``top_k``, ``min_p``, ... as ``extra_body`` of the OpenAI client).

:func:`limit_error` checks what a request costs against the service's limits before the engine sees
it: vLLM's own checks let 1,024 prompts x ``n`` x ``max_tokens`` through, and stop strings of any
length, which it matches on the replica's event loop after every token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from polyray.config.services import GenerationServiceConfig


INT64 = 2**63 - 1
# vLLM's default max_logprobs
MAX_LOGPROBS = 20
# a completion request's max_tokens when it sends none (OpenAI's and vLLM's)
COMPLETION_MAX_TOKENS = 16


# ------------------------------------------------------------------------------ request bodies
class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a last chunk with the request's token usage.")


Stop = Annotated[str | list[str] | None, Field(None, description="Strings that end a completion.")]


class _Sampling(BaseModel):
    # vLLM's extensions, validated by vLLM
    model_config = ConfigDict(extra="allow")

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


# ------------------------------------------------------------------------------ limits
def prompt_count(body: CompletionBody | ChatBody) -> int:
    """Prompts in a request: a chat is one; a completion's ``prompt`` is one text, one list of token
    ids, or a list of either."""
    if isinstance(body, ChatBody):
        return 1
    prompt = body.prompt
    if isinstance(prompt, str) or not prompt or all(isinstance(p, int) for p in prompt):
        return 1
    return len(prompt)


def limit_error(body: CompletionBody | ChatBody, cfg: GenerationServiceConfig) -> tuple[str, str] | None:
    """``(message, param)`` for the first of the service's limits ``body`` exceeds, else None.

    Counted from the body alone (no tokenizer), so it runs before anything else does; prompt
    lengths in tokens are the deployment's own check, off the event loop.
    """
    prompts = prompt_count(body)
    if prompts > cfg.max_prompts:
        return f"{prompts} prompts in one request; this service's limit is {cfg.max_prompts}", "prompt"
    if body.n > cfg.max_n:
        return f"n = {body.n} exceeds this service's limit of {cfg.max_n}", "n"
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, field, None)
        if value is not None and value > cfg.max_tokens:
            return f"{field} = {value} exceeds this service's limit of {cfg.max_tokens}", field
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > cfg.max_stop:
        return f"{len(stop)} stop strings; this service's limit is {cfg.max_stop}", "stop"
    longest = max((len(s) for s in stop), default=0)
    if longest > cfg.max_stop_chars:
        return f"a stop string of {longest} characters; this service's limit is {cfg.max_stop_chars}", "stop"
    per_completion = body.max_tokens or getattr(body, "max_completion_tokens", None)
    if per_completion is None:
        per_completion = cfg.max_tokens if isinstance(body, ChatBody) else COMPLETION_MAX_TOKENS
    total = prompts * body.n * per_completion
    if total > cfg.max_request_tokens:
        named = body.max_tokens is None and getattr(body, "max_completion_tokens", None) is not None
        field = "max_completion_tokens" if named else "max_tokens"
        return (
            f"{prompts} prompts x n = {body.n} x {field} = {per_completion} asks for {total} tokens; this"
            f" service's limit is {cfg.max_request_tokens} per request"
        ), field
    return None
