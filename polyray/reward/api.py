"""The reward service's HTTP contract and settings, free of Ray so they can be tested alone.

- :class:`RewardRequest` / :class:`RewardResponse`: ``POST /v1/rewards`` bodies.
- :class:`RewardServiceConfig`: what ``build_app(args)`` accepts (the Serve config's
  ``args``); unknown keys fail with the field name, like every polyray config.
- :class:`BodySizeLimit`: a plain ASGI middleware that answers 413 before a large body is
  read, from ``Content-Length`` when the client sends one and by counting the bytes as
  they arrive otherwise (chunked uploads cannot sneak past it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from polyray.http import ApiKeyConfig
from polyray.reward.base import RewardItem


class RewardRequest(BaseModel):
    """Score ``items`` with the reward function ``reward``."""

    model_config = ConfigDict(extra="forbid")

    reward: str = Field(
        ..., description="Registered reward function name (GET /v1/rewards lists them).", examples=["countdown"]
    )
    items: list[RewardItem] = Field(..., description="Completions to score; results come back in the same order.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Per-request parameters overriding the server's defaults."
    )


class RewardResponse(BaseModel):
    reward: str = Field(..., description="The reward function that scored the items.")
    scores: list[float] = Field(..., description="One score per item, in request order.")
    details: list[dict[str, Any]] = Field(..., description="Per-item explanation, incl. batch_size and batch_requests.")


class RewardServiceConfig(ApiKeyConfig):
    """Settings of the reward service (``args`` of the Serve application)."""

    model_config = ConfigDict(extra="forbid")

    rewards: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Default parameters per reward name, e.g. engagement: {model_path: ...}."
    )
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
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
    slow_down_s: float = Field(
        0.0, ge=0, le=60, description="Test hook: sleep this long per batch (to provoke overload)."
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> RewardServiceConfig:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or >= 1")
        return self


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over ``limit()`` bytes."""

    def __init__(self, app, limit: Callable[[], int]):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await _send_json(send, 400, {"detail": "Content-Length is not a number"})
            if too_big:
                return await _send_json(send, 413, _too_large(limit))
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(limit))


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions met while reading a body,
    and its exception middleware turns this one into the 413 response."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=_too_large(limit)["detail"])


def _too_large(limit: int) -> dict[str, str]:
    return {"detail": f"request body larger than {limit} bytes"}


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
