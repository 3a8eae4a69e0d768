"""HTTP pieces the services share (reward, generation), free of Ray: API keys and OpenAI's error shape.

- :func:`read_api_key`: a service's key from a secret file or an environment variable.
- :class:`BearerAuth`: ASGI middleware answering 401, in OpenAI's error shape, to a request
  without ``Authorization: Bearer <key>`` (``/healthz`` stays open for probes).
- :class:`BodySizeLimit`: ASGI middleware answering 413 to a body over the service's limit.
- :func:`openai_error`: ``{"error": {"message", "type", "param", "code"}}``, the one error shape of both
  services; :func:`validation_error` turns a body failing the schema into it (400 naming the field).
- :func:`free_port`: a port for a service about to start on this machine, one Ray's own processes do not take.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from polyray.config.services import ApiKeyConfig

# Serve's proxy ends (and cancels) an HTTP request after this long: a caller cannot hold a replica
# for hours. Cluster-wide (Serve's http_options), so both services' launchers and serve configs set it.
REQUEST_TIMEOUT_S = 600.0

# exactly these routes (below the app's root path) answer without a key
OPEN_PATHS = ("/healthz",)


# Ray's default min/max_worker_port
RAY_WORKER_PORTS = (10002, 19999)


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for ports bound to 0 (Linux's default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1", tries: int = 200) -> int:
    """A TCP port free on ``host`` now, for a server that binds it seconds later (Serve's proxy after
    Ray starts). Outside the kernel's ephemeral range and Ray's worker ports: a port bound to 0 is
    ephemeral, and Ray's own processes (gRPC servers, workers) bind ephemeral ports while it starts,
    so one could take it first, and an HTTP client would then talk to a gRPC server. Picked at random,
    so concurrent callers rarely pick the same one; the ephemeral way only if no other port is free."""
    low, high = _ephemeral_ports()
    taken = lambda p: low <= p <= high or RAY_WORKER_PORTS[0] <= p <= RAY_WORKER_PORTS[1]  # noqa: E731
    candidates = [p for p in range(20000, 65536) if not taken(p)] or [p for p in range(1024, 65536) if not taken(p)]
    rng = random.SystemRandom()
    for port in rng.sample(candidates, min(tries, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
    """OpenAI's error body: ``code`` is a string or null (never the HTTP status), ``param`` the field
    at fault, so OpenAI's clients and their users read polyray's errors as they read OpenAI's."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
    """:func:`openai_error` as a JSON response."""
    return JSONResponse(status_code=status, content=openai_error(status, message, type_, param, code))


def validation_error(errors: list[dict[str, Any]]) -> JSONResponse:
    """FastAPI's validation errors as OpenAI answers a bad body: 400, ``param`` the first field at fault."""
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        message = f"malformed JSON body: {bad_json.get('ctx', {}).get('error', 'cannot be parsed')}"
        return error_response(400, message, "BadRequestError", code="invalid_json")
    first = errors[0] if errors else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
    return error_response(400, message, "BadRequestError", param)


def route_path(scope) -> str:
    """The request's path below the app's mount point (Serve's ``route_prefix`` is the root path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


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
        # exactly /healthz: a suffix match would open /v1/anything/healthz to every caller
        if key is None or route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return await self.app(scope, receive, send)
        message = "missing API key: send Authorization: Bearer <key>" if not header else "invalid API key"
        await send_json(
            send,
            401,
            openai_error(401, message, "invalid_request_error", code="invalid_api_key"),
            [(b"www-authenticate", b"Bearer")],
        )


def _bad_request(status: int, message: str) -> dict[str, Any]:
    return openai_error(status, message, "BadRequestError", code="request_too_large" if status == 413 else None)


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over ``limit()`` bytes, before they are read.

    From ``Content-Length`` when the client sends one, and by counting the bytes as they arrive
    otherwise (chunked uploads cannot sneak past it). ``error(status, message)`` shapes the body
    (default: :func:`openai_error`).
    """

    def __init__(self, app, limit: Callable[[], int], error: Callable[[int, str], dict] = _bad_request):
        self.app = app
        self.limit = limit
        self.error = error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await send_json(send, 400, self.error(400, "Content-Length is not a number"))
            if too_big:
                return await send_json(send, 413, self.error(413, _too_large(limit)))
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
                await send_json(send, 413, self.error(413, _too_large(limit)))


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions met while reading a body,
    and its exception middleware turns this one into the 413 response."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=_too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body larger than {limit} bytes"
