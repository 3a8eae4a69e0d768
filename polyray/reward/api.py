"""The reward service's HTTP contract, free of Ray so it can be tested alone (its settings:
:class:`polyray.config.services.RewardServiceConfig`).

- :class:`RewardRequest` / :class:`RewardResponse`: ``POST /v1/rewards`` bodies.
- :class:`BodySizeLimit` (from :mod:`polyray.http`, which both services share): 413 for a large body.
- :class:`ApiError` and :func:`api_error`: every refusal in one shape, OpenAI's
  ``{"error": {"message", "type", "param", "code"}}`` (as the generation service answers): 400 bad
  input (``param`` names the field), 401 no key, 404 unknown reward, 413 too large (body, items or
  work), 503 overloaded (Serve's proxy) or the judge endpoint down (``llm_judge`` with ``on_outage:
  fail``), 504 past the service's deadline.
- :func:`non_finite_field`: NaN and Infinity (which JSON bodies may carry, as Python writes them)
  are no value a reward can score; the first such field is named in a 400.
- :func:`not_utf8_field`: JSON may escape a lone UTF-16 surrogate (``"\\ud800"``), which is text no
  UTF-8 program, file or sandbox can hold; the first such string is named in a 400.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from polyray.http import BodySizeLimit, error_response
from polyray.reward.base import RewardError, RewardItem, UnknownRewardError

__all__ = [
    "ApiError",
    "BodySizeLimit",
    "RewardRequest",
    "RewardResponse",
    "api_error",
    "non_finite_field",
    "not_utf8_field",
]

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "BadRequestError",
    503: "ServiceUnavailableError",
    504: "TimeoutError",
}


class ApiError(Exception):
    """A refusal of the reward service: HTTP ``status``, a one-line ``message``, the field at fault (``param``)
    and a short machine-readable ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self):
        return error_response(
            self.status, self.message, _TYPES.get(self.status, "BadRequestError"), self.param, self.code
        )


def api_error(exc: Exception) -> ApiError:
    """The refusal a reward error stands for: an unknown reward 404, a cap or budget its status
    (:class:`~polyray.reward.budget.RequestTooCostly`), other bad parameters 400."""
    if isinstance(exc, UnknownRewardError):
        return ApiError(404, str(exc), "reward", "unknown_reward")
    status, field = getattr(exc, "status", None), getattr(exc, "field", None)
    # RequestTooCostly, or the judge endpoint down (JudgeOutage: 503)
    if status is not None:
        code = getattr(exc, "code", None) or ("over_budget" if status == 413 else "over_limit")
        return ApiError(status, str(exc), field, code)
    if isinstance(exc, RewardError):
        return ApiError(400, str(exc), None, "invalid_params")
    raise TypeError(f"not a reward error: {exc!r}")


def _first_field(value: Any, path: str, bad: Callable[[Any], bool], keys: bool = False) -> str | None:
    """The dotted path of the first value in ``value`` (dicts and lists walked; with ``keys``, dict keys
    too) for which ``bad`` holds, else None. A bad key is named with its escapes (it may not print)."""
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if bad(value):
            return path
        if isinstance(value, dict):
            if keys and (key := next((k for k in value if bad(k)), None)) is not None:
                return f"{path}.{key.encode('utf-8', 'backslashreplace').decode()}"
            stack.extend((v, f"{path}.{k}") for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, f"{path}.{i}") for i, v in reversed(list(enumerate(value))))
    return None


def non_finite_field(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN or infinite float in ``value`` (dicts and lists walked), else None."""
    return _first_field(value, path, lambda v: isinstance(v, float) and not math.isfinite(v))


def _not_utf8(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def not_utf8_field(value: Any, path: str) -> str | None:
    """The dotted path of the first string (a value, or a key) in ``value`` that is not valid UTF-8
    text (a lone surrogate), dicts and lists walked; else None."""
    return _first_field(value, path, _not_utf8, keys=True)


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
    scores: list[float | None] = Field(
        ..., description="One score per item, in request order; null: no score (the judge never answered parseably)."
    )
    details: list[dict[str, Any]] = Field(..., description="Per-item explanation, incl. batch_size and batch_requests.")
