"""The reward service's Serve deployment (HTTP for users, a DeploymentHandle for the learner).

``RewardDeployment`` is a thin shell around :class:`polyray.reward.scorer.RewardScorer`:

- ``POST /v1/rewards`` ``{reward, items, params?}`` -> ``{reward, scores, details}`` in item order;
- ``GET /v1/rewards`` lists reward functions and their parameters; ``GET /healthz`` (503 with the reason when
  the replica cannot score: :meth:`RewardDeployment.cannot_score`, also Serve's health check);
- the OpenAPI schema at ``/openapi.json`` (docs at ``/docs``).

Concurrent requests are merged by ``@serve.batch`` and scored per (reward, params) in one
``score_batch`` call (see :func:`polyray.reward.scorer.score_jobs`); scoring runs in a
worker thread so the event loop keeps answering (``/healthz`` stays fast while the
sandbox or the encoder works). Limits: bodies over ``max_body_bytes`` and requests with
more than ``max_items`` get 413, and so does a request whose worst-case work (sandbox seconds,
judge calls) exceeds ``limits``; a parameter over its cap (``limits``: a code_exec ``timeout_s``,
weighted_sum ``components``) gets 400 naming it (:mod:`polyray.reward.budget`); with an API key configured (``api_key_env`` / ``api_key_file``),
a request without ``Authorization: Bearer <key>`` gets 401 (``/healthz`` stays open); a full queue (``max_ongoing_requests`` +
``max_queued_requests``) gets 503 from Serve's proxy. A request still running after ``limits.max_request_s`` gets
504; a request that ends early (the client disconnects, Serve's request timeout, a cancelled handle call) or
times out has every sandbox of its items killed (:mod:`polyray.reward.cancel`). Errors are one shape, OpenAI's
``{"error": {"message", "type", "param", "code"}}`` (:mod:`polyray.reward.api`): schema or malformed JSON 400
naming the field, NaN/Infinity in an item's metadata or the parameters 400 naming it, text that is no UTF-8 (a lone
surrogate) 400 naming the field, unknown reward 404 listing
the known ones, bad parameters 400. The code of
custom reward functions (``functions``, ``rewards.custom.function``) travels to the replicas in
their runtime environment (:func:`polyray.reward.custom.runtime_env`).

:func:`build_reward_app` builds the application; ``services/reward_app.py`` exposes it
to ``serve run services.reward_app:build_app`` / ``serve deploy services/reward.yaml``,
and ``polyray serve reward`` and runs with ``reward.endpoint: true`` call it directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from polyray.http import BearerAuth, check_api_key, error_response, read_api_key, validation_error
from polyray.io import ConfigError
from polyray.telemetry import Metrics
from polyray.config.functions import FunctionRefError
from polyray.config.services import RewardServiceConfig
from polyray.reward.api import (
    ApiError,
    BodySizeLimit,
    RewardRequest,
    RewardResponse,
    api_error,
    non_finite_field,
    not_utf8_field,
)
from polyray.reward.budget import check_request
from polyray.reward.base import RewardError, RewardItem, RewardResult, format_validation_error
from polyray.reward.cancel import await_job
from polyray.reward.custom import runtime_env
from polyray.reward.scorer import RewardScorer, ScoreJob, as_items, score_jobs
from polyray.sandbox import SandboxLimits, require_isolation, run_python, sweep_workdirs
from polyray.sandbox.cgroups import limits_report

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
# optional: Authorization: Bearer <key> on every route but /healthz
app.state.api_key = None
app.add_middleware(BearerAuth, key=lambda: app.state.api_key)

# per reward function and calling run ("" over HTTP); Serve's own request metrics come beside
HISTOGRAMS = {
    "polyray_reward_batch_size": ("Items in one merged scoring call.", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]),
    "polyray_reward_batch_seconds": ("Seconds one merged scoring call took.", [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]),
}
COUNTERS = {"polyray_reward_items": "Items scored."}

# the health probe: a trivial scoring call must finish within this (worker threads free, the sandbox starting);
# its verdict holds for PROBE_EVERY_S, so a caller polling /healthz does not start a sandbox each time
HEALTH_PROBE_S, PROBE_EVERY_S = 10.0, 5.0
# countdown scores it 1.0
_PROBE_ITEM = RewardItem(prompt="nums 3 4 9 target 12\nexpr:", completion=" 3+9")

_ERRORS = {
    400: {
        "description": "Malformed JSON, a body or parameters failing validation, NaN/Infinity, text that is not"
        " UTF-8 (a lone surrogate), or a parameter over this service's cap (param names the field)."
    },
    401: {"description": "Missing or wrong API key."},
    404: {"description": "Unknown reward function (the message lists the known ones)."},
    413: {
        "description": "Body larger than max_body_bytes, more than max_items items, or more work than the"
        " service's limits allow (sandbox seconds, judge calls; the message says which)."
    },
    503: {
        "description": "Overloaded: the request queue is full, or the llm_judge endpoint is unavailable"
        " (on_outage: fail); retry later."
    },
    504: {"description": "The request ran past limits.max_request_s; its sandboxes were stopped."},
}


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc.errors())


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(
        exc.status_code, str(exc.detail), "NotFoundError" if exc.status_code == 404 else "BadRequestError"
    )


@app.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


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
        # a replica SIGKILLed mid-request ran no cleanup: its sandboxes died with it (PDEATHSIG),
        # their work directories are removed here, by the replica that replaces it
        swept = sweep_workdirs()
        if swept:
            logger.info(
                "reward replica: removed %d sandbox directories and groups of processes that are gone", len(swept)
            )
        self.sandbox_mode = require_isolation(
            policy.min_isolation, policy.allow_weak_sandbox, "reward service sandbox", policy.require_memory_cap
        )
        self.sandbox_limits = limits_report()
        logger.info(
            "reward replica: sandbox isolation %s (min_isolation %s), limits %s",
            self.sandbox_mode,
            policy.min_isolation,
            self.sandbox_limits,
        )
        rewards = {**self.config.rewards}
        rewards["code_exec"] = {**policy.model_dump(), **rewards.get("code_exec", {})}
        self.scorer = RewardScorer(rewards)
        app.state.max_body_bytes = self.config.max_body_bytes
        app.state.api_key = read_api_key(self.config)
        self.metrics = Metrics({"reward": "", "run": ""}, histograms=HISTOGRAMS, counters=COUNTERS)
        self._score_batched.set_max_batch_size(self.config.max_batch_size)
        self._score_batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        # (when, verdict) of the last health probe
        self._probe: tuple[float, str | None] | None = None
        self.health_probe_s, self.probe_every_s = HEALTH_PROBE_S, PROBE_EVERY_S
        self._probe_lock = asyncio.Lock()

    @app.get("/healthz")
    async def healthz(self) -> Any:
        health = {"status": "ok", "sandbox": self.sandbox_mode, "sandbox_limits": self.sandbox_limits}
        reason = await self.cannot_score()
        if reason is not None:
            return JSONResponse({**health, "status": "unavailable", "reason": reason}, status_code=503)
        return health

    async def check_health(self) -> None:
        """Serve's periodic health check: a replica that cannot score is restarted."""
        reason = await self.cannot_score()
        if reason is not None:
            raise RuntimeError(f"reward replica cannot score: {reason}")

    async def cannot_score(self) -> str | None:
        """Why this replica cannot score now (None: it can). A countdown item is scored and, once code_exec
        has been used here, a trivial program runs in the sandbox: off the event loop, like every scoring
        call, and within :data:`HEALTH_PROBE_S` (every worker thread stuck is a failure too). The verdict
        holds :data:`PROBE_EVERY_S`."""
        async with self._probe_lock:
            if self._probe is None or time.monotonic() - self._probe[0] >= self.probe_every_s:
                try:
                    verdict = await asyncio.wait_for(asyncio.to_thread(self._probe_once), self.health_probe_s)
                except asyncio.TimeoutError:
                    verdict = f"a trivial scoring call did not finish within {self.health_probe_s:g} s"
                except Exception as exc:  # noqa: BLE001 - any failure to score is the verdict
                    verdict = f"scoring a trivial item failed: {exc!r}"
                self._probe = (time.monotonic(), verdict)
            return self._probe[1]

    def _probe_once(self) -> str | None:
        [result] = self.scorer.score("countdown", [_PROBE_ITEM])
        if result.score != 1.0:
            return f"a known-correct countdown item scored {result.score}"
        if self.scorer.built("code_exec"):
            run = run_python("pass", SandboxLimits(timeout_s=5.0))
            if not run.passed:
                return f"the sandbox cannot run a program ({run.status}: {run.reason})"
        return None

    @app.get("/v1/rewards")
    async def list_rewards(self) -> dict[str, Any]:
        return {"rewards": self.scorer.describe()}

    @app.post("/v1/rewards", response_model=RewardResponse, responses=_ERRORS)
    async def score_http(self, body: RewardRequest) -> RewardResponse:
        if len(body.items) > self.config.max_items:
            message = f"{len(body.items)} items in one request; the limit is {self.config.max_items}"
            raise ApiError(413, message, "items", "too_many_items")
        fields = [non_finite_field(item.metadata, f"items.{i}.metadata") for i, item in enumerate(body.items)]
        bad = next((f for f in fields if f), None) or non_finite_field(body.params, "params")
        if bad is not None:
            raise ApiError(400, f"{bad}: NaN and Infinity are not values a reward can use", bad, "non_finite")
        fields = [not_utf8_field(item.model_dump(), f"items.{i}") for i, item in enumerate(body.items)]
        bad = not_utf8_field(body.reward, "reward") or next((f for f in fields if f), None)
        bad = bad or not_utf8_field(body.params, "params")
        if bad is not None:
            raise ApiError(400, f"{bad}: not valid UTF-8 text (a lone surrogate)", bad, "invalid_text")
        try:
            # before any work: a request may not hold the replica (and the learner's batches) for long
            check_request(self.scorer, body.reward, body.params, len(body.items), self.config.limits)
            job = ScoreJob(body.reward, body.items, body.params, from_request=True)
            results = await self._score(job, self.config.limits.max_request_s)
        except RewardError as exc:
            # an unknown reward's message lists the known ones
            raise api_error(exc) from None
        except asyncio.TimeoutError:
            limit = self.config.limits.max_request_s
            raise ApiError(
                504, f"the request ran past this service's limit of {limit:g} s; its work was stopped", None, "timeout"
            ) from None
        return _response(body.reward, results)

    async def score(
        self, reward: str, items: list[Any], params: dict[str, Any] | None = None, run: str = ""
    ) -> dict[str, Any]:
        """DeploymentHandle entry point (the learner): same batching, trusted parameters; ``run`` tags metrics."""
        job = ScoreJob(reward, as_items(items), params or {}, from_request=False, run=run)
        return _response(reward, await self._score(job)).model_dump()

    async def _score(self, job: ScoreJob, timeout_s: float | None = None) -> list[RewardResult]:
        # Build/validate the reward function first, so a bad name or parameter fails this
        # request alone and at once instead of inside someone else's batch.
        await asyncio.to_thread(self.scorer.check, job.reward, job.params, job.from_request)
        # cancelled (client gone, Serve's timeout, a cancelled handle call) or past timeout_s: its sandboxes die
        result = await await_job(self._score_batched(job), job.cancel, timeout_s)
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
        # unknown reward names and custom functions fail here, not in a replica
        RewardScorer(config.rewards)
        env = runtime_env(shipped_functions(config))
    except (RewardError, FunctionRefError) as exc:
        raise ConfigError(f"reward service args: {exc}") from None
    check_api_key(config, "reward service args")
    options = {
        "num_cpus": config.num_cpus,
        **({"resources": config.resources} if config.resources else {}),
        **({"runtime_env": env} if env else {}),
    }
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
