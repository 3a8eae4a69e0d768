"""The reward service's HTTP contract, free of Ray so it can be tested alone (its settings:
:class:`polyray.config.services.RewardServiceConfig`).

- :class:`RewardRequest` / :class:`RewardResponse`: ``POST /v1/rewards`` bodies.
- :class:`BodySizeLimit` (from :mod:`polyray.http`, which both services share): 413 for a large body.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from polyray.http import BodySizeLimit
from polyray.reward.base import RewardItem

__all__ = ["BodySizeLimit", "RewardRequest", "RewardResponse"]


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
