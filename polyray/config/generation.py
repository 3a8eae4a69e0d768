"""``generation``: the live policy behind an OpenAI-compatible endpoint while a run trains.

The service's own settings (limits, replicas, API key) stay a free mapping (``args``),
validated by :mod:`polyray.generation.api` when the service starts, so this module does not
import the generation service.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from polyray.io import StrictModel


class GenerationConfig(StrictModel):
    """``polyray run --serve-generation``: the live policy behind an OpenAI-compatible endpoint
    (``polyray/generation/``) at ``http://<host>:<http_port><route_prefix>/v1``."""

    host: str = Field("127.0.0.1", description="HTTP host of Serve's proxy (0.0.0.0: every interface).")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    route_prefix: str = Field(
        "/generation", pattern=r"^/.", description="Where the app is mounted (the reward service has '/')."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Generation service settings (polyray.config.services.GenerationServiceConfig: limits,"
        " replicas, API key, ...); the model, engine settings and adapter store come from the run.",
    )
