"""The reward service's HTTP contract, free of Ray so it can be tested alone (its settings:
:class:`polyray.config.services.RewardServiceConfig`).

- :class:`RewardRequest` / :class:`RewardResponse`: ``POST /v1/rewards`` bodies.
- :class:`BodySizeLimit`: a plain ASGI middleware that answers 413 before a large body is
  read, from ``Content-Length`` when the client sends one and by counting the bytes as
  they arrive otherwise (chunked uploads cannot sneak past it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

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
