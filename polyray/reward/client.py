"""Calling the reward service: through a Serve DeploymentHandle in-cluster, or over HTTP.

- :func:`score_via_handle` is what the learner uses inside the Ray cluster: no HTTP, no
  JSON, same server-side batching; parameters are trusted (server-only ones allowed). A run's
  learner calls an app of its own that HTTP cannot reach (:func:`polyray.reward.service.learner_app_name`).
- :class:`RewardClient` is a small ``httpx`` client for users and benchmarks; a non-2xx
  answer raises :class:`RewardServiceError` with the service's message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import httpx

from polyray.reward.base import RewardItem, RewardResult

APP_NAME = "reward"
DEPLOYMENT_NAME = "RewardDeployment"


def _payload_items(items: Iterable[RewardItem | dict[str, Any]]) -> list[dict[str, Any]]:
    return [i.model_dump() if isinstance(i, RewardItem) else dict(i) for i in items]


def _results(body: dict[str, Any]) -> list[RewardResult]:
    return [RewardResult(score=s, detail=d) for s, d in zip(body["scores"], body["details"])]


def get_reward_handle(app_name: str = APP_NAME):
    """The reward deployment's handle in a running Serve instance (needs ``ray.init`` done)."""
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name)


def score_via_handle(
    handle,
    reward: str,
    items: Iterable[RewardItem | dict[str, Any]],
    params: dict[str, Any] | None = None,
    timeout_s: float | None = None,
    retries: int = 0,
    run: str = "",
) -> list[RewardResult]:
    """Score ``items`` through a ``DeploymentHandle`` (blocking; one result per item, in order).

    ``retries``: how many times a call is sent again when its replica died under it or none
    answered in ``timeout_s`` (Serve restarts a dead replica; scoring is a pure function, so
    a retried call is safe), waiting 1, 2, 4, ... (at most 10) seconds in between."""
    import ray

    payload = _payload_items(items)
    transient = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, TimeoutError)
    for attempt in range(retries + 1):
        try:
            return _results(handle.score.remote(reward, payload, params, run).result(timeout_s=timeout_s))
        except transient as exc:
            if attempt == retries:
                raise
            from polyray.io import warn

            warn(f"reward service call failed ({type(exc).__name__}); retry {attempt + 1}/{retries}")
            time.sleep(min(10.0, 2.0**attempt))
    raise AssertionError("unreachable")


class RewardServiceError(RuntimeError):
    """The service answered with an error status; ``status`` and the service's message are kept."""

    def __init__(self, status: int, message: str):
        super().__init__(f"reward service returned {status}: {message}")
        self.status = status
        self.message = message


class RewardClient:
    """``with RewardClient("http://127.0.0.1:8000") as c: c.score("countdown", items)``."""

    def __init__(
        self, base_url: str, timeout_s: float = 60.0, client: httpx.Client | None = None, api_key: str | None = None
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def score(
        self, reward: str, items: Iterable[RewardItem | dict[str, Any]], params: dict[str, Any] | None = None
    ) -> list[RewardResult]:
        body = {"reward": reward, "items": _payload_items(items), "params": params or {}}
        return _results(self._check(self._client.post("/v1/rewards", json=body)))

    def rewards(self) -> list[dict[str, Any]]:
        return self._check(self._client.get("/v1/rewards"))["rewards"]

    def healthy(self) -> bool:
        try:
            return self._client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail") or body.get("error", {}).get("message") or response.text
            except ValueError:
                detail = response.text
            raise RewardServiceError(response.status_code, str(detail))
        return response.json()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
