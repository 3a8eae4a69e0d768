"""The reward service's Serve deployment (HTTP for users, a DeploymentHandle for the learner).

``RewardDeployment`` is a thin shell around :class:`polyray.reward.scorer.RewardScorer`:

- ``POST /v1/rewards`` ``{reward, items, params?}`` -> ``{reward, scores, details}`` in item order;
- ``GET /v1/rewards`` lists reward functions and their parameters; ``GET /healthz``;
- the OpenAPI schema at ``/openapi.json`` (docs at ``/docs``).

Concurrent requests are merged by ``@serve.batch`` and scored per (reward, params) in one
``score_batch`` call (see :func:`polyray.reward.scorer.score_jobs`); scoring runs in a
worker thread so the event loop keeps answering (``/healthz`` stays fast while the
sandbox or the encoder works). Limits: bodies over ``max_body_bytes`` and requests with
more than ``max_items`` get 413, and so does a request whose worst-case work (sandbox seconds,
judge calls) exceeds ``limits``; a parameter over its cap (``limits``: a code_exec ``timeout_s``,
weighted_sum ``components``) gets 422 naming it (:mod:`polyray.reward.budget`); with an API key configured (``api_key_env`` / ``api_key_file``),
a request without ``Authorization: Bearer <key>`` gets 401 (``/healthz`` stays open); a full queue (``max_ongoing_requests`` +
``max_queued_requests``) gets 503 from Serve's proxy. Errors: schema 422 naming the field,
malformed JSON 400, unknown reward 404 listing the known ones, bad parameters 422. The code of
custom reward functions (``functions``, ``rewards.custom.function``) travels to the replicas in
their runtime environment (:func:`polyray.reward.custom.runtime_env`).

:func:`build_reward_app` builds the application; ``polyray/services/reward_app.py`` exposes it
to ``serve run polyray.services.reward_app:build_app`` / ``serve deploy polyray/services/serve_config.yaml``,
and ``polyray serve reward`` and runs with ``reward.endpoint: true`` call it directly.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from polyray.http import BearerAuth, check_api_key, read_api_key
from polyray.io import ConfigError
from polyray.telemetry import Metrics
from polyray.config.functions import FunctionRefError
from polyray.config.services import RewardServiceConfig
from polyray.reward.api import BodySizeLimit, RewardRequest, RewardResponse
from polyray.reward.budget import RequestTooCostly, check_request
from polyray.reward.base import RewardError, RewardResult, UnknownRewardError, format_validation_error
from polyray.reward.custom import runtime_env
from polyray.reward.scorer import RewardScorer, ScoreJob, as_items, score_jobs
from polyray.sandbox import require_isolation

logger = logging.getLogger(__name__)

app = FastAPI(
    title="polyray reward service",
    version="1",
    description="Batched rewards for LLM completions: task verifiers, sandboxed unit tests, a learned "
    "engagement model and heuristics.",
)
# The body limit lives on app.state so each replica's __init__ can set it from its config.
app.state.max_body_bytes = RewardServiceConfig().max_body_bytes
app.add_middleware(BodySizeLimit, limit=lambda: app.state.max_body_bytes)
app.state.api_key = None  # optional: Authorization: Bearer <key> on every route but /healthz
app.add_middleware(BearerAuth, key=lambda: app.state.api_key)

# per reward function and calling run ("" over HTTP); Serve's own request metrics come beside
HISTOGRAMS = {
    "polyray_reward_batch_size": ("Items in one merged scoring call.", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]),
    "polyray_reward_batch_seconds": ("Seconds one merged scoring call took.", [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]),
}
COUNTERS = {"polyray_reward_items": "Items scored."}

_ERRORS = {
    400: {"description": "Malformed JSON."},
    404: {"description": "Unknown reward function (the message lists the known ones)."},
    413: {"description": "Body larger than max_body_bytes, more than max_items items, or more work than the"
          " service's limits allow (sandbox seconds, judge calls; the message says which)."},
    422: {"description": "Body or parameters fail validation or exceed a limit (the message names the field)."},
    503: {"description": "Overloaded: the request queue is full; retry later."},
}


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        where = next(err for err in errors if err.get("type") == "json_invalid")
        message = f"malformed JSON body: {where.get('ctx', {}).get('error', 'cannot be parsed')}"
        return JSONResponse(status_code=400, content={"detail": message})
    parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors]
    return JSONResponse(status_code=422, content={"detail": "; ".join(parts), "errors": jsonable_encoder(errors)})


def _response(reward: str, results: list[RewardResult]) -> RewardResponse:
    return RewardResponse(reward=reward, scores=[r.score for r in results], details=[r.detail for r in results])


@serve.deployment
@serve.ingress(app)
class RewardDeployment:
    def __init__(self, config: dict[str, Any] | None = None):
        self.config = RewardServiceConfig.model_validate(config or {})
        # Fail closed: a replica whose host cannot isolate code well enough refuses to start
        # (one line naming the setting), instead of serving code rewards a program can fake.
        policy = self.config.sandbox
        self.sandbox_mode = require_isolation(
            policy.min_isolation, policy.allow_weak_sandbox, where="reward service sandbox"
        )
        logger.info("reward replica: sandbox isolation %s (min_isolation %s)", self.sandbox_mode, policy.min_isolation)
        rewards = {**self.config.rewards}
        rewards["code_exec"] = {**policy.model_dump(), **rewards.get("code_exec", {})}
        self.scorer = RewardScorer(rewards)
        app.state.max_body_bytes = self.config.max_body_bytes
        app.state.api_key = read_api_key(self.config)
        self.metrics = Metrics({"reward": "", "run": ""}, histograms=HISTOGRAMS, counters=COUNTERS)
        self._score_batched.set_max_batch_size(self.config.max_batch_size)
        self._score_batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "sandbox": self.sandbox_mode}

    @app.get("/v1/rewards")
    async def list_rewards(self) -> dict[str, Any]:
        return {"rewards": self.scorer.describe()}

    @app.post("/v1/rewards", response_model=RewardResponse, responses=_ERRORS)
    async def score_http(self, body: RewardRequest) -> RewardResponse:
        if len(body.items) > self.config.max_items:
            raise HTTPException(413, f"{len(body.items)} items in one request; the limit is {self.config.max_items}")
        try:
            # before any work: a request may not hold the replica (and the learner's batches) for long
            check_request(self.scorer, body.reward, body.params, len(body.items), self.config.limits)
        except RequestTooCostly as exc:
            raise HTTPException(exc.status, str(exc)) from None
        try:
            results = await self._score(ScoreJob(body.reward, body.items, body.params, from_request=True))
        except UnknownRewardError as exc:
            raise HTTPException(404, str(exc)) from None  # the message lists the known names
        except RewardError as exc:
            raise HTTPException(422, str(exc)) from None
        return _response(body.reward, results)

    async def score(
        self, reward: str, items: list[Any], params: dict[str, Any] | None = None, run: str = ""
    ) -> dict[str, Any]:
        """DeploymentHandle entry point (the learner): same batching, trusted parameters; ``run`` tags metrics."""
        job = ScoreJob(reward, as_items(items), params or {}, from_request=False, run=run)
        return _response(reward, await self._score(job)).model_dump()

    async def _score(self, job: ScoreJob) -> list[RewardResult]:
        # Build/validate the reward function first, so a bad name or parameter fails this
        # request alone and at once instead of inside someone else's batch.
        await asyncio.to_thread(self.scorer.get, job.reward, job.params, job.from_request)
        result = await self._score_batched(job)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_batched(self, jobs: list[ScoreJob]) -> list[list[RewardResult] | Exception]:
        if self.config.slow_down_s:
            await asyncio.sleep(self.config.slow_down_s)
        return await asyncio.to_thread(score_jobs, self.scorer, jobs, self._observe)

    def _observe(self, job: ScoreJob, batch_size: int, seconds: float) -> None:
        metrics = self.metrics.with_tags(reward=job.reward, run=job.run)
        metrics.observe("polyray_reward_batch_size", batch_size)
        metrics.observe("polyray_reward_batch_seconds", seconds)
        metrics.inc("polyray_reward_items", len(job.items))


def build_reward_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for ``serve run`` / ``serve deploy``: ``args`` is a :class:`RewardServiceConfig`."""
    try:
        config = RewardServiceConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"reward service args: {format_validation_error(exc)}") from None
    try:
        RewardScorer(config.rewards)  # unknown reward names and custom functions fail here, not in a replica
        env = runtime_env(shipped_functions(config))
    except (RewardError, FunctionRefError) as exc:
        raise ConfigError(f"reward service args: {exc}") from None
    check_api_key(config, "reward service args")
    options = {"num_cpus": config.num_cpus, **({"resources": config.resources} if config.resources else {}),
               **({"runtime_env": env} if env else {})}  # fmt: skip
    return RewardDeployment.options(
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options=options,
    ).bind(config.model_dump())


def shipped_functions(config: RewardServiceConfig) -> list[str]:
    """The custom reward functions a service's replicas get the code of: ``functions`` and ``rewards.custom.function``."""
    own = config.rewards.get("custom", {}).get("function")
    return [*config.functions, *([own] if isinstance(own, str) else [])]
