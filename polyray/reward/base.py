"""What every reward function provides, and the registry that names them.

A reward function scores a batch of (prompt, completion) items at once, because the
expensive ones (the learned engagement model, sandboxed unit tests) amortise work over
a batch. Items and results are pydantic models so the HTTP service, the Serve handle
and in-process callers all pass the same validated shapes.

Registry: ``REWARD_FUNCTIONS`` maps a name to a class; ``build_reward(name, **params)``
instantiates it. Each class takes its parameters as keyword arguments and exposes them
back as ``params`` (JSON-able) so ``GET /v1/rewards`` can list them. Modules register
themselves on import through :func:`register`; :mod:`polyray.reward` imports the
built-in ones so the registry is complete after ``import polyray.reward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RewardItem(BaseModel):
    """One completion to score, with whatever the reward function needs to judge it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="The prompt the completion answers.")
    completion: str = Field(..., description="The model's completion (text after the prompt).")
    reference: str | None = Field(None, description="A reference completion, where the reward function uses one.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-item data the judge needs, e.g. countdown {numbers, target} or HumanEval {test, entry_point}.",
    )


class RewardResult(BaseModel):
    """A score and a JSON-able explanation (reason, status, batch size, ...).

    ``score`` None is "no score": the reward could not judge the item (e.g. the LLM judge never
    answered parseably), which is not a judgement that it is bad. The learner leaves such an item out
    of its group's advantages (it gets advantage 0 and no part in the group's baseline)."""

    score: float | None = Field(..., description="The reward; higher is better. None: no score (no advantage).")
    detail: dict[str, Any] = Field(default_factory=dict, description="Why this score (function-specific).")


class RewardError(ValueError):
    """A reward function cannot be built or an item cannot be scored; the message says why."""


class UnknownRewardError(KeyError, RewardError):
    """The requested reward name is not registered; the message lists the known names."""

    # KeyError would repr() the message and add quotes
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class RewardFunction(Protocol):
    name: str

    @property
    def params(self) -> dict[str, Any]:
        """The parameters this instance was built with (JSON-able)."""
        ...

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        """One result per item, in order."""
        ...


REWARD_FUNCTIONS: dict[str, type] = {}

_T = TypeVar("_T", bound=type)


def register(name: str) -> Callable[[_T], _T]:
    """Class decorator: make ``cls`` buildable as ``build_reward(name, ...)``."""

    def deco(cls: _T) -> _T:
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not cls:
            raise RewardError(f"reward function {name!r} is already registered by {REWARD_FUNCTIONS[name].__name__}")
        cls.name = name
        REWARD_FUNCTIONS[name] = cls
        return cls

    return deco


def known_rewards() -> list[str]:
    return sorted(REWARD_FUNCTIONS)


def build_reward(name: str, **params: Any) -> RewardFunction:
    """Instantiate the reward function registered as ``name`` with ``params``.

    Raises :class:`UnknownRewardError` (a ``KeyError``) for an unknown name and
    :class:`RewardError` (a ``ValueError``) for parameters the function rejects.
    """
    cls = REWARD_FUNCTIONS.get(name)
    if cls is None:
        raise UnknownRewardError(f"unknown reward function {name!r}; known: {', '.join(known_rewards()) or '(none)'}")
    try:
        return cls(**params)
    # unexpected keyword argument, missing required one
    except TypeError as exc:
        raise RewardError(f"bad parameters for reward {name!r}: {exc}") from None


class ParamsModel(BaseModel):
    """Base for a reward function's parameters: unknown keys fail, every field is described, and
    NaN or infinity is no number (JSON bodies may carry them, and no bound holds against NaN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def format_validation_error(exc: ValidationError) -> str:
    """``field.path: message; ...`` (pydantic's own text is long and multi-line)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


class ParameterisedReward:
    """Mixin: validate keyword parameters into ``self.config`` (a ``Params`` model)."""

    name: str = "?"
    Params: type[ParamsModel] = ParamsModel
    # every score is 0 or 1 (what pass@k advantages need); else graded
    binary: ClassVar[bool] = False

    def __init__(self, **params: Any):
        try:
            self.config = self.Params(**params)
        except ValidationError as exc:
            raise RewardError(f"bad parameters for reward {self.name!r}: {format_validation_error(exc)}") from None

    @property
    def params(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def describe_params(cls: type) -> dict[str, Any]:
    """JSON-able description of a reward class's parameters (its ``Params`` model's schema)."""
    params_model = getattr(cls, "Params", None)
    if params_model is None:
        return {}
    schema = params_model.model_json_schema()
    keep = ("type", "enum", "default", "description", "minimum", "maximum", "exclusiveMinimum", "anyOf")
    required = set(schema.get("required", []))
    return {
        field: {**{k: v for k, v in spec.items() if k in keep}, "required": field in required}
        for field, spec in schema.get("properties", {}).items()
    }
