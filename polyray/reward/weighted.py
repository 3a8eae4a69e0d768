"""Reward "weighted_sum": Σ wᵢ·rᵢ over other registry rewards, e.g. a verifier plus a length penalty.

``components`` lists ``{name, weight, params}``; each component is scored on the whole
batch by the reward registered as ``name`` and the item's score is the weighted sum, added
in component order in float64. Weights are finite and non-zero, and may be negative (a
penalty). Each result's ``detail`` holds every component's score and weight, keyed by
name (``name#i``, i the component's index, when a name appears more than once).

A weighted sum does not build its components itself: the :class:`~polyray.reward.scorer.RewardScorer`
that runs it does (:meth:`WeightedSumReward.score_with`), so a component gets the scorer's
defaults for its reward overlaid with the component's ``params``, shares the scorer's cached
instance (an engagement model loads once), and, when the weighted sum's components come
from an HTTP request, may not set its reward's ``server_only_params``. Hence
``score_batch`` alone refuses. What can be checked without a scorer is checked when the
weighted sum is built: component names are registered rewards (a weighted sum cannot
contain another, so nothing recurses), and ``params`` keys are parameters of that reward.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator, model_validator

from polyray.reward.base import (
    REWARD_FUNCTIONS,
    ParameterisedReward,
    ParamsModel,
    RewardError,
    RewardItem,
    RewardResult,
    known_rewards,
    register,
)

NAME = "weighted_sum"

ScoreComponent = Callable[[str, list[RewardItem], dict[str, Any]], list[RewardResult]]
"""``(reward name, items, params) -> one result per item``: how a scorer scores one component."""


class Component(ParamsModel):
    """One term wᵢ·rᵢ of the sum."""

    name: str = Field(..., description="A registered reward (not weighted_sum).")
    weight: float = Field(..., description="Its weight: finite and non-zero; negative for a penalty.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its parameters, overlaid on the scorer's defaults for that reward."
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v == NAME:
            raise ValueError("a weighted_sum cannot contain another weighted_sum; list its components instead")
        if v not in REWARD_FUNCTIONS:
            known = ", ".join(n for n in known_rewards() if n != NAME)
            raise ValueError(f"unknown reward {v!r}; known: {known}")
        return v

    @field_validator("weight")
    @classmethod
    def _finite_non_zero(cls, v: float) -> float:
        if not math.isfinite(v) or v == 0:
            raise ValueError(f"must be finite and non-zero, got {v}")
        return v

    @model_validator(mode="after")
    def _known_params(self) -> Component:
        params_model = getattr(REWARD_FUNCTIONS[self.name], "Params", None)
        fields = set(params_model.model_fields) if params_model is not None else set()
        unknown = sorted(set(self.params) - fields)
        if unknown:
            raise ValueError(
                f"params {unknown} are not parameters of reward {self.name!r}; its parameters: {sorted(fields) or 'none'}"
            )
        return self


def component_keys(names: list[str]) -> list[str]:
    """Detail keys: the name, or ``name#i`` (i the index) for a name listed more than once."""
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name}#{i}" for i, name in enumerate(names)]


@register(NAME)
class WeightedSumReward(ParameterisedReward):
    """Σ weight × score over other rewards (needs a RewardScorer, which builds the components)."""

    class Params(ParamsModel):
        components: list[Component] = Field(
            ..., min_length=1, description="The terms: [{name, weight, params?}, ...], at least one."
        )

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        raise RewardError(
            f"reward {NAME!r} combines other rewards and scores only through a RewardScorer"
            " (polyray.reward.scorer), which builds its components with their defaults"
        )

    def score_with(self, score_component: ScoreComponent, items: list[RewardItem]) -> list[RewardResult]:
        """One result per item: each component scored on all ``items`` by ``score_component``, then summed."""
        components = self.config.components
        keys = component_keys([c.name for c in components])
        per_component = []
        for key, c in zip(keys, components):
            results = score_component(c.name, items, dict(c.params))
            if len(results) != len(items):
                raise RewardError(f"component {key!r} returned {len(results)} results for {len(items)} items")
            per_component.append(results)
        weights = {key: c.weight for key, c in zip(keys, components)}
        out = []
        for i in range(len(items)):
            scores = {
                key: None if results[i].score is None else float(results[i].score)
                for key, results in zip(keys, per_component)
            }
            total: float | None = 0.0
            # a component with no score leaves the sum without one (no score is not 0)
            for key in keys:
                total = None if total is None or scores[key] is None else total + weights[key] * scores[key]
            out.append(RewardResult(score=total, detail={"components": scores, "weights": dict(weights)}))
        return out
