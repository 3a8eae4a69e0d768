"""RewardScorer: owns reward-function instances and scores batches; a plain class, usable in-process.

The Serve deployment (:mod:`polyray.reward.deployment`) is a thin shell around it; the learner
can also use it directly without Ray. Instances are built lazily from the registry and
cached per (name, parameters), so a served model (the engagement head) loads once.

Parameters come from two places: the scorer's ``defaults`` (set by whoever runs it: the
Serve config's ``args.rewards``) and per-call ``params``. Calls marked as coming from an
untrusted request may not override a function's ``server_only_params`` (e.g. the
engagement ``model_path``, or how many sandboxes ``code_exec`` runs at once): a user of
the HTTP API must not make the server load arbitrary paths or fork without bound.

A reward that combines others (``weighted_sum``, :mod:`polyray.reward.weighted`) has a
``score_with`` method: the scorer hands it a callback that scores each component through
:meth:`RewardScorer.score` itself, so a component gets this scorer's defaults for its reward
under the component's ``params``, its cached instance, and the same refusal of server-only
parameters when the components came from a request.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

import polyray.reward  # noqa: F401  (registers the built-in reward functions)
from polyray.reward.base import (
    REWARD_FUNCTIONS,
    RewardError,
    RewardFunction,
    RewardItem,
    RewardResult,
    UnknownRewardError,
    build_reward,
    describe_params,
    format_validation_error,
    known_rewards,
)
from polyray.reward.cancel import items_cancelled_by

_MAX_CACHED_INSTANCES = 32


def as_items(items: Iterable[RewardItem | dict[str, Any]]) -> list[RewardItem]:
    """Validate dicts into :class:`RewardItem` (``RewardError`` naming the bad item and field)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, RewardItem):
            out.append(item)
            continue
        try:
            out.append(RewardItem.model_validate(item))
        except ValidationError as exc:
            raise RewardError(f"items[{i}]: {format_validation_error(exc)}") from None
    return out


def check_reward(name: str, params: dict[str, Any], where: str = "reward") -> None:
    """Raise :class:`RewardError` naming the field when ``name`` is not a registered reward or
    ``params`` are not its parameters (a ``weighted_sum``'s components checked the same way);
    nothing is loaded, so a run can check its reward before it starts."""
    cls = REWARD_FUNCTIONS.get(name)
    if cls is None:
        raise UnknownRewardError(f"{where}.name: unknown reward {name!r}; known: {', '.join(known_rewards())}")
    try:
        cls.Params.model_validate(params)
    except ValidationError as exc:
        raise RewardError(f"{where}.params: {format_validation_error(exc)}") from None
    for i, component in enumerate(params.get("components", []) if name == "weighted_sum" else []):
        check_reward(component["name"], component.get("params", {}), f"{where}.params.components.{i}")


def reward_names(name: str, params: dict[str, Any]) -> list[str]:
    """``name`` and, for a ``weighted_sum``, its components' names."""
    return [name, *(c["name"] for c in params.get("components", []))] if name == "weighted_sum" else [name]


class RewardScorer:
    """Scores batches with named reward functions; ``defaults`` maps a name to its base parameters."""

    def __init__(self, defaults: dict[str, dict[str, Any]] | None = None):
        self.defaults = {name: dict(params) for name, params in (defaults or {}).items()}
        unknown = sorted(set(self.defaults) - set(REWARD_FUNCTIONS))
        if unknown:
            raise UnknownRewardError(
                f"unknown reward function(s) {unknown} in defaults; known: {', '.join(known_rewards())}"
            )
        # cheap check now; models load on first use
        for name, params in self.defaults.items():
            try:
                REWARD_FUNCTIONS[name].Params.model_validate(params)
            except ValidationError as exc:
                raise RewardError(f"defaults for reward {name!r}: {format_validation_error(exc)}") from None
        self._instances: OrderedDict[str, RewardFunction] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return known_rewards()

    def resolve_params(self, reward: str, params: dict[str, Any] | None, from_request: bool = False) -> dict[str, Any]:
        """Defaults overlaid with ``params``; refuses server-only keys from untrusted requests."""
        cls = REWARD_FUNCTIONS.get(reward)
        if cls is None:
            raise UnknownRewardError(f"unknown reward function {reward!r}; known: {', '.join(known_rewards())}")
        params = params or {}
        if from_request:
            fixed = sorted(set(params) & set(getattr(cls, "server_only_params", ())))
            if fixed:
                raise RewardError(f"parameter(s) {fixed} of reward {reward!r} are set by the server, not per request")
        return {**self.defaults.get(reward, {}), **params}

    def get(self, reward: str, params: dict[str, Any] | None = None, from_request: bool = False) -> RewardFunction:
        """The (cached) instance for ``reward`` with resolved parameters; builds and validates it on first use."""
        resolved = self.resolve_params(reward, params, from_request)
        key = reward + json.dumps(resolved, sort_keys=True, default=str)
        with self._lock:
            if key in self._instances:
                self._instances.move_to_end(key)
                return self._instances[key]
        # outside the lock: loading a model can take seconds
        fn = build_reward(reward, **resolved)
        with self._lock:
            self._instances[key] = fn
            while len(self._instances) > _MAX_CACHED_INSTANCES:
                self._instances.popitem(last=False)
        return fn

    def built(self, reward: str) -> bool:
        """Whether an instance of ``reward`` has been built here (it has scored, or been checked)."""
        with self._lock:
            return any(isinstance(fn, REWARD_FUNCTIONS[reward]) for fn in self._instances.values())

    def check(self, reward: str, params: dict[str, Any] | None = None, from_request: bool = False) -> None:
        """Build ``reward`` with ``params`` as :meth:`score` would, and a combination's components too
        (weighted_sum): a reward or parameters that cannot be used raise here, before any item is scored."""
        fn = self.get(reward, params, from_request)
        if getattr(fn, "score_with", None) is not None:
            for component in fn.config.components:
                self.check(component.name, dict(component.params), from_request and bool(params))

    def score(
        self,
        reward: str,
        items: Iterable[RewardItem | dict[str, Any]],
        params: dict[str, Any] | None = None,
        from_request: bool = False,
    ) -> list[RewardResult]:
        """One :class:`RewardResult` per item, in order."""
        batch = as_items(items)
        fn = self.get(reward, params, from_request)
        if not batch:
            return []
        score_with = getattr(fn, "score_with", None)
        # a combination (weighted_sum): its components are scored through this scorer
        if score_with is not None:
            # components the request chose are untrusted too
            nested_from_request = from_request and bool(params)
            results = score_with(lambda name, its, ps: self.score(name, its, ps, nested_from_request), batch)
        else:
            results = fn.score_batch(batch)
        if len(results) != len(batch):
            raise RewardError(f"reward {reward!r} returned {len(results)} results for {len(batch)} items")
        return results

    def describe(self) -> list[dict[str, Any]]:
        """Every registered reward: name, what it does, its parameters, and this scorer's defaults for
        those a request may set (server-only values, e.g. an internal judge URL or a model path, stay
        on the server: ``GET /v1/rewards`` shows this to any caller)."""
        out = []
        for name in known_rewards():
            cls = REWARD_FUNCTIONS[name]
            fixed = set(getattr(cls, "server_only_params", ()))
            out.append(
                {
                    "name": name,
                    "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                    "params": describe_params(cls),
                    "defaults": {k: v for k, v in self.defaults.get(name, {}).items() if k not in fixed},
                    "server_only_params": list(getattr(cls, "server_only_params", ())),
                }
            )
        return out


@dataclass
class ScoreJob:
    """One caller's request inside a server-side batch."""

    reward: str
    items: list[RewardItem]
    params: dict[str, Any] = field(default_factory=dict)
    from_request: bool = False
    # the caller's run (metrics tag); "" for HTTP callers
    run: str = ""
    # set: the caller is gone, stop its sandboxes
    cancel: threading.Event = field(default_factory=threading.Event)


def score_jobs(
    scorer: RewardScorer, jobs: list[ScoreJob], on_batch: Callable[[ScoreJob, int, float], None] | None = None
) -> list[list[RewardResult] | Exception]:
    """Score several callers' jobs at once: items of jobs with the same reward and parameters
    are merged into one ``score_batch`` call and split back in order.

    Each result's detail records ``batch_size`` (items in the merged call) and
    ``batch_requests`` (jobs merged). One item's error is that item's: a merged call that raises is
    scored again job by job (no caller fails another's request), and an HTTP caller's job that still
    raises item by item, so an item that cannot be scored gets no score (``None``, detail status
    "error" with the reason) and every other item its own (:func:`_score_alone`). An error that is
    the whole request's (its reward or parameters, one with an HTTP ``status``: the judge endpoint
    down with ``on_outage: fail``) is handed back to that job alone. ``on_batch(job, batch_size, seconds)`` is called for
    each job of a scored group (the service's metrics).
    """
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        key = json.dumps([job.reward, job.params, job.from_request], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    out: list[list[RewardResult] | Exception] = [[] for _ in jobs]
    for members in groups.values():
        first = jobs[members[0]]
        merged = [item for i in members for item in jobs[i].items]
        started = time.perf_counter()
        try:
            with items_cancelled_by((item, jobs[i].cancel) for i in members for item in jobs[i].items):
                results = scorer.score(first.reward, merged, first.params, first.from_request)
        except Exception:  # noqa: BLE001 - some item failed the merged call: each job on its own
            for i in members:
                out[i] = _score_alone(scorer, jobs[i])
            continue
        stamp = {"batch_size": len(merged), "batch_requests": len(members)}
        if on_batch is not None:
            for i in members:
                on_batch(jobs[i], len(merged), time.perf_counter() - started)
        start = 0
        for i in members:
            n = len(jobs[i].items)
            out[i] = [RewardResult(score=r.score, detail={**r.detail, **stamp}) for r in results[start : start + n]]
            start += n
    return out


def _score_alone(scorer: RewardScorer, job: ScoreJob) -> list[RewardResult] | Exception:
    """``job`` scored without the other jobs of its batch. If it still raises: an error of the request
    itself (its reward or parameters, or one with an HTTP ``status``) is handed back; else an HTTP
    caller's items are scored one by one (an item that raises: no score, status "error"), while an
    in-cluster caller's (a run's learner) error stays its error, so a run's own reward bug stops it."""

    def score(items: list[RewardItem]) -> list[RewardResult]:
        with items_cancelled_by((item, job.cancel) for item in items):
            results = scorer.score(job.reward, items, job.params, job.from_request)
        return [
            RewardResult(score=r.score, detail={**r.detail, "batch_size": len(items), "batch_requests": 1})
            for r in results
        ]

    try:
        scorer.check(job.reward, job.params, job.from_request)
    except Exception as exc:  # noqa: BLE001 - the request's own: its reward or parameters
        return exc
    try:
        return score(job.items)
    except Exception as exc:  # noqa: BLE001 - the request's own error, or one of its items'
        if not job.from_request or getattr(exc, "status", None) is not None:
            return exc
    results = []
    for item in job.items:
        try:
            results += score([item])
        except Exception as exc:  # noqa: BLE001 - this item's alone
            if getattr(exc, "status", None) is not None:
                return exc
            results.append(_unscored(exc))
    return results


def _unscored(exc: Exception) -> RewardResult:
    return RewardResult(
        score=None,
        detail={
            "status": "error",
            "reason": f"could not score this item: {exc}"[:300],
            "batch_size": 1,
            "batch_requests": 1,
        },
    )
