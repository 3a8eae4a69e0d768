"""HTTP pieces the services share (reward, generation), free of Ray: API keys and OpenAI's error shape.

- :func:`read_api_key`: a service's key from a secret file or an environment variable.
- :class:`BearerAuth`: ASGI middleware answering 401, in OpenAI's error shape, to a request
  without ``Authorization: Bearer <key>`` (``/healthz`` stays open for probes).
- :func:`openai_error`: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyray.config.services import ApiKeyConfig

OPEN_PATHS = ("/healthz",)


def read_api_key(config: ApiKeyConfig) -> str | None:
    """The configured key, None when none is configured; a configured key that cannot be read is an error."""
    if config.api_key_file:
        try:
            key = Path(config.api_key_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"api_key_file {config.api_key_file}: {exc.strerror}") from None
        if not key:
            raise ValueError(f"api_key_file {config.api_key_file} is empty")
        return key
    if config.api_key_env:
        key = os.environ.get(config.api_key_env, "").strip()
        if not key:
            raise ValueError(f"api_key_env: the environment variable {config.api_key_env} is not set")
        return key
    return None


def check_api_key(config: ApiKeyConfig, source: str) -> None:
    """:func:`read_api_key` at build time: a configured key that cannot be read is a config error."""
    from polyray.io import ConfigError

    try:
        read_api_key(config)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def openai_error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code if code is not None else status}}


async def send_json(send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer an ASGI request with ``body`` as JSON."""
    payload = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


class BearerAuth:
    """ASGI middleware: with a key (``key()`` not None), a request must carry ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: Callable[[], str | None]):
        self.app = app
        self.key = key

    async def __call__(self, scope, receive, send):
        key = self.key() if scope["type"] == "http" else None
        if key is None or scope.get("path", "").endswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return await self.app(scope, receive, send)
        message = "missing API key: send Authorization: Bearer <key>" if not header else "invalid API key"
        await send_json(send, 401, openai_error(401, message, "invalid_request_error", code="invalid_api_key"),
                        [(b"www-authenticate", b"Bearer")])  # fmt: skip
