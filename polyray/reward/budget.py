"""What one HTTP request to the reward service may cost, checked before any work starts.

A replica runs few sandboxes, asks the judge through a bounded pool, and shares one batch slot
with the learner's traffic; a thread it started cannot be cancelled. So a request that chose its
own ``code_exec`` timeout, a hundred thousand ``weighted_sum`` components, or a judge that re-asks
every item ten times could hold a replica for hours. :func:`check_request` refuses such a request
at once, naming the field: parameters over a cap get 400, work over a budget gets 413.

The work is counted in worst cases a caller can compute from its own request and ``GET
/v1/rewards``: sandbox seconds are ``items x timeout_s / max_workers``, judge calls are
``items x (retries + 1)``, twice when pairwise; a ``weighted_sum`` adds up its components.
The learner's handle calls are trusted and never checked here.
"""

from __future__ import annotations

import math
from typing import Any

from polyray.config.services import RewardRequestLimits
from polyray.reward.base import REWARD_FUNCTIONS, RewardError


class RequestTooCostly(RewardError):
    """A request over a cap (``status`` 400) or a budget (413); ``field`` is the offending one."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field = status, field


def _default(reward: str, name: str) -> Any:
    return REWARD_FUNCTIONS[reward].Params.model_fields[name].default


def _number(value: Any, field: str) -> float | None:
    """``value`` as a finite number, None when it is not one (the reward's own validation says why)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        raise RequestTooCostly(400, field, f"must be a finite number, got {value}")
    return float(value)


def check_request(scorer, reward: str, params: dict[str, Any], n_items: int, limits: RewardRequestLimits) -> None:
    """Raise :class:`RequestTooCostly` when an HTTP request's parameters or work exceed ``limits``.

    ``scorer``: the service's :class:`~polyray.reward.scorer.RewardScorer`, whose defaults fill in
    what the request leaves out. Unknown names and malformed parameters pass: the reward's own
    validation refuses them right after, with its own message.
    """
    sandbox_s, judge_calls = _cost(scorer, reward, params or {}, n_items, limits, "params", untrusted=True)
    if sandbox_s > limits.max_sandbox_s:
        raise RequestTooCostly(
            413,
            "items",
            f"{n_items} items need up to {sandbox_s:g} sandbox seconds (items x timeout_s / max_workers);"
            f" this service's limit is {limits.max_sandbox_s:g} (send fewer items or a shorter timeout_s)",
        )
    if judge_calls > limits.max_judge_calls:
        raise RequestTooCostly(
            413,
            "items",
            f"{n_items} items need up to {judge_calls} judge calls (items x (retries + 1), x2 pairwise);"
            f" this service's limit is {limits.max_judge_calls} (send fewer items)",
        )


def _cost(
    scorer, reward: str, params: dict[str, Any], n: int, limits: RewardRequestLimits, where: str, untrusted: bool
) -> tuple[float, int]:
    """(worst-case sandbox seconds, worst-case judge calls) of scoring ``n`` items with ``reward``."""
    if reward not in REWARD_FUNCTIONS:
        return 0.0, 0
    resolved = {**scorer.defaults.get(reward, {}), **params}
    if reward == "code_exec":
        timeout = _number(resolved.get("timeout_s", _default(reward, "timeout_s")), f"{where}.timeout_s")
        if untrusted and "timeout_s" in params and timeout is not None and timeout > limits.max_code_timeout_s:
            raise RequestTooCostly(
                400,
                f"{where}.timeout_s",
                f"{timeout:g} s exceeds this service's limit of {limits.max_code_timeout_s:g} s",
            )
        workers = resolved.get("max_workers", _default(reward, "max_workers"))
        if timeout is None or not isinstance(workers, int) or workers < 1:
            return 0.0, 0
        return n * timeout / workers, 0
    if reward == "llm_judge":
        retries = resolved.get("retries", _default(reward, "retries"))
        if not isinstance(retries, int) or retries < 0:
            return 0.0, 0
        return 0.0, n * (retries + 1) * (2 if resolved.get("mode") == "pairwise" else 1)
    if reward == "weighted_sum":
        components = resolved.get("components")
        if not isinstance(components, list):
            return 0.0, 0
        if untrusted and "components" in params and len(components) > limits.max_components:
            raise RequestTooCostly(
                400,
                f"{where}.components",
                f"{len(components)} components; this service's limit is {limits.max_components}",
            )
        # components a request chose are untrusted, as the scorer treats them (see RewardScorer.score)
        nested_untrusted = untrusted and bool(params)
        sandbox_s, judge_calls = 0.0, 0
        for i, component in enumerate(components):
            if not isinstance(component, dict) or not isinstance(component.get("params", {}), dict):
                continue
            name = component.get("name")
            s, j = _cost(
                scorer,
                name,
                component.get("params") or {},
                n,
                limits,
                f"{where}.components.{i}.params",
                nested_untrusted,
            )
            sandbox_s, judge_calls = sandbox_s + s, judge_calls + j
        return sandbox_s, judge_calls
    return 0.0, 0
