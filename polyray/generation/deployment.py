"""The generation service's Serve deployment: OpenAI's API over vLLM's async engine, serving the base
model and every adapter version of a run.

- ``GET /v1/models`` (and ``/v1/models/{id}``): the base id, ``latest``, ``policy-vN`` for each
  version the run's adapter store holds, and the named adapters (``<run>/<phase>``);
- ``POST /v1/completions``, ``POST /v1/chat/completions``: ``n``, ``temperature``, ``top_p``,
  ``max_tokens``, ``seed``, ``stop``, ``logprobs``, ``stream`` (SSE; ``stream_options.include_usage``
  adds a usage chunk), usage counts. A response's ``model`` names the version that answered
  (``latest`` resolves to a ``policy-vN`` when the request starts and holds it to its end);
- ``GET /healthz``; the OpenAPI schema at ``/openapi.json``.

The protocol itself is vLLM's serving layer (``OpenAIServingCompletion``/``OpenAIServingChat``:
request validation, sampling, log-probs, streaming, usage); this deployment adds the model ids
(:class:`~polyray.generation.catalog.AdapterCatalog`: versions pulled from the adapter store as
they are published), limits (body size: 413; prompts per request, ``n``, ``max_tokens``, prompts x
``n`` x ``max_tokens``, stop strings' count and length, prompt tokens: 400, see
:func:`~polyray.generation.api.limit_error`), an optional API key (401), and errors in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (a body failing the schema is 400 with ``param``).
Templating and tokenising for the limits run off the event loop; a held version is released however
a request ends, cancellation included (:class:`~polyray.generation.catalog.Hold`). A full
queue (``max_ongoing_requests`` + ``max_queued_requests``) gets 503 from Serve's proxy.

:func:`build_generation_app` builds the application; ``services/generation_app.py`` exposes it to
``serve run`` / ``serve deploy``; ``polyray serve generation`` and ``polyray run --serve-generation``
call it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from polyray.config.services import GenerationServiceConfig
from polyray.generation.api import ChatBody, CompletionBody, limit_error
from polyray.generation.catalog import AdapterCatalog, Hold, UnknownModelError
from polyray.http import BearerAuth, BodySizeLimit, check_api_key, error_response, read_api_key, validation_error
from polyray.io import ConfigError, format_validation_error
from polyray.lifetime import process_dir, shared_root, sweep_stale
from polyray.models.tiny import EMBEDDED_CHAT_TEMPLATE
from polyray.rollout.worker import device_engine_args, vllm_env
from polyray.telemetry import Metrics

logger = logging.getLogger("polyray.generation")
# per-process scratch directories under /dev/shm (or the temp directory)
SCRATCH = "polyray-generation"

# the service's own metrics (tag: run); Serve's request metrics (counts, latency, errors) come beside
GAUGES = {
    "polyray_generation_latest_version": "The version 'latest' names on this replica.",
    "polyray_generation_versions_loaded": "Policy versions this replica holds loaded.",
}
HISTOGRAMS = {
    "polyray_generation_adapter_load_seconds": (
        "Seconds from pulling a version to serving it.",
        [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
    ),
}

app = FastAPI(
    title="polyray generation service",
    version="1",
    description="OpenAI-compatible completions and chat from a base model and every adapter version of a "
    "polyray run (policy-vN, latest, <run>/<phase>).",
)
# each replica's __init__ sets these from its config
app.state.max_body_bytes = GenerationServiceConfig.model_fields["max_body_bytes"].default
app.add_middleware(BodySizeLimit, limit=lambda: app.state.max_body_bytes)
app.state.api_key = None
app.add_middleware(BearerAuth, key=lambda: app.state.api_key)

_ERRORS = {
    400: {
        "description": "The body fails the schema, a limit is exceeded (prompts, n, max_tokens, stop strings,"
        " prompt tokens, tokens per request) or vLLM refuses a parameter; param names the field."
    },
    401: {"description": "Missing or wrong API key."},
    404: {"description": "Unknown model id."},
    413: {"description": "Body larger than max_body_bytes."},
    503: {"description": "Overloaded: the request queue is full; retry later."},
}


def _error(status: int, message: str, type_: str, param: str | None = None) -> JSONResponse:
    return error_response(status, message, type_, param)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI answers a bad body 400, naming the param
    return validation_error(exc.errors())


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), "NotFoundError" if exc.status_code == 404 else "BadRequestError")


def _vllm_error(error) -> JSONResponse:
    """vLLM's ``ErrorResponse`` in OpenAI's shape (vLLM puts the HTTP status in ``code``)."""
    inner = error.error
    return _error(inner.code, inner.message, inner.type, getattr(inner, "param", None))


def engine_env(cfg: GenerationServiceConfig) -> dict[str, str]:
    """The replica's vLLM environment. ``AsyncLLM`` always runs its engine core in a child process; on
    CPU vLLM would also start a worker process below that one (its multiprocessing executor), a third
    interpreter importing vLLM and torch. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the model in the
    engine-core process, as the rollout workers keep it in theirs (docs/benchmarks-notes.md, "Generation:
    service start"). On a GPU vLLM runs one GPU's model in the engine core already: left as it is, and
    vLLM's CPU variables are not set."""
    eager = device_engine_args(cfg.gpus, cfg.enforce_eager, cfg.gpu_memory_utilization)["enforce_eager"]
    env = vllm_env(cfg.kv_cache_gib, cfg.threads, gpu=cfg.gpus > 0, eager=eager)
    if not cfg.gpus:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def chat_template(cfg: GenerationServiceConfig) -> str | None:
    """The configured template file's text; else None for a model with its own template; else the
    minimal template for the embedded model (it has a ``build_info.json``); else None (chat: 400)."""
    if cfg.chat_template:
        return Path(cfg.chat_template).read_text()
    model = Path(cfg.model_dir)
    try:
        own = json.loads((model / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        own = None
    if own or (model / "chat_template.jinja").is_file():
        return None
    return EMBEDDED_CHAT_TEMPLATE if (model / "build_info.json").is_file() else None


# apply_chat_template's own parameters: a request's template arguments never replace them
_RENDER_PARAMETERS = frozenset({"conversation", "messages", "conversations", "tools", "documents", "chat_template"})
_RENDER_PARAMETERS |= {"add_generation_prompt"}
_RENDER_PARAMETERS |= {"continue_final_message", "tokenize", "padding", "truncation", "max_length"}
_RENDER_PARAMETERS |= {"return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def template_kwargs(service: dict[str, Any], request: Any) -> dict[str, Any]:
    """The chat template's arguments a request is rendered with: the service's, a request's own over them (as
    vLLM merges them). What a request sends is anyone's: only a mapping of names the renderer does not take
    itself counts; vLLM validates the rest."""
    own = request if isinstance(request, dict) else {}
    own = {k: v for k, v in own.items() if isinstance(k, str) and k.isidentifier() and k not in _RENDER_PARAMETERS}
    return {**service, **own}


def _model_max_len(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError):
        return None


def engine_args(cfg: GenerationServiceConfig):
    """vLLM's ``AsyncEngineArgs`` for a replica (and for the benchmark's direct engine: the same settings).

    The step: on CPU one scheduler step takes whole prompts (as the rollout workers do), so a request's
    tokens do not depend on what else is in the batch and a per-request seed reproduces; on GPU vLLM's own
    default step with chunked prefill (whole prompts of a long context are a step vLLM's start-up profile
    pass cannot hold), unless ``max_num_batched_tokens`` is set."""
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    max_len = cfg.max_model_len or _model_max_len(Path(cfg.model_dir))
    step = cfg.max_num_batched_tokens
    if step is None and not cfg.gpus and max_len:
        step = cfg.max_num_seqs * max_len
    return AsyncEngineArgs(
        model=cfg.model_dir,
        dtype=cfg.dtype,
        max_model_len=max_len,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=step,
        enable_lora=True,
        max_lora_rank=cfg.max_lora_rank,
        max_loras=cfg.max_loras,
        max_cpu_loras=max(cfg.max_loras, cfg.keep_versions + len(cfg.adapters) + 1),
        **device_engine_args(cfg.gpus, cfg.enforce_eager, cfg.gpu_memory_utilization),
        # OpenAI's defaults, not the model's
        generation_config="vllm",
        structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
        if cfg.compact_json
        else StructuredOutputsConfig(),
    )


def _prompt_lengths(prompt: Any, tokenizer) -> list[int]:
    if isinstance(prompt, str):
        return [len(tokenizer.encode(prompt))]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [len(prompt)]
    return [len(p) if isinstance(p, list) else len(tokenizer.encode(p)) for p in prompt]


class HeldStream(StreamingResponse):
    """Server-sent events that hold an adapter version until the response ends, however it ends.

    Starlette never iterates (so never closes) a body whose response was cancelled before its first
    chunk; releasing in the response's own ``finally`` covers that, the client going away mid-stream,
    and the stream's normal end.
    """

    def __init__(self, chunks, hold: Hold):
        super().__init__(chunks, media_type="text/event-stream")
        self.hold = hold

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.hold.release()
            close = getattr(self.body_iterator, "aclose", None)
            # a client gone mid-stream: vLLM aborts the request on close
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


@serve.deployment
@serve.ingress(app)
class GenerationDeployment:
    async def __init__(self, config: dict[str, Any]):
        from polyray.storage import node_path

        cfg = GenerationServiceConfig.model_validate(config)
        # this process's own scratch directory, made first: making it sweeps what a SIGKILLed replica left,
        # before this one spends its start-up on the engine (polyray.lifetime)
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.scratch_root = shared_root(SCRATCH, base)
        self.adapter_root = Path(tempfile.mkdtemp(prefix="adapters-", dir=process_dir(SCRATCH, base)))
        # a run's model in cluster.storage: copied to this replica's node first (once per node)
        self.cfg = cfg = cfg.model_copy(update={"model_dir": node_path(cfg.model_dir)})
        for key, value in engine_env(cfg).items():
            os.environ.setdefault(key, value)
        app.state.api_key = read_api_key(cfg)
        app.state.max_body_bytes = cfg.max_body_bytes
        await self._start_engine(cfg)
        store = self._adapter_store(cfg)
        metrics = Metrics({"run": cfg.run}, GAUGES, HISTOGRAMS)
        self.catalog = AdapterCatalog(
            self.engine,
            self.models,
            base=cfg.base_name,
            named=cfg.adapters,
            store=store,
            root=self.adapter_root,
            keep=cfg.keep_versions,
            metrics=metrics,
        )
        # a (re)started replica has the newest version before it serves
        await self.catalog.start()
        self.created = int(time.time())
        self._poller = asyncio.create_task(self._poll()) if store is not None else None

    async def _start_engine(self, cfg: GenerationServiceConfig) -> None:
        """The vLLM engine and its OpenAI completion and chat servers, with the run's static adapters."""
        from polyray.imports import paused_gc, without_sklearn

        with paused_gc(), without_sklearn():
            from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
            from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
            from vllm.entrypoints.openai.models.protocol import BaseModelPath
            from vllm.entrypoints.openai.models.serving import OpenAIServingModels
            from vllm.renderers.online_renderer import OnlineRenderer
            from vllm.v1.engine.async_llm import AsyncLLM

            self.engine = AsyncLLM.from_engine_args(engine_args(cfg))
        self.max_len = self.engine.model_config.max_model_len
        self.models = OpenAIServingModels(self.engine, [BaseModelPath(name=cfg.base_name, model_path=cfg.model_dir)])
        await self.models.init_static_loras()
        template = chat_template(cfg)
        renderer = OnlineRenderer(
            self.engine.model_config,
            self.engine.renderer,
            request_logger=None,
            chat_template=template,
            chat_template_content_format="auto",
            default_chat_template_kwargs=cfg.chat_template_kwargs,
        )
        self.tokenizer = self.engine.renderer.tokenizer
        self.template = template
        self.completion = OpenAIServingCompletion(
            self.engine, self.models, online_renderer=renderer, request_logger=None
        )
        self.chat = OpenAIServingChat(
            self.engine,
            self.models,
            "assistant",
            online_renderer=renderer,
            request_logger=None,
            chat_template=template,
            chat_template_content_format="auto",
            default_chat_template_kwargs=cfg.chat_template_kwargs,
        )

    @staticmethod
    def _adapter_store(cfg: GenerationServiceConfig):
        """The run's adapter store to follow, or None when the service serves fixed adapters."""
        if not cfg.store_root:
            return None
        import ray

        from polyray.rollout.store import STORE_NAMESPACE, open_store, store_actor_name

        # the live run's store, or the one `polyray serve generation` opened
        try:
            return ray.get_actor(store_actor_name(cfg.store_root), namespace=STORE_NAMESPACE)
        # none (serve deploy, a RayService): open the directory, for every replica
        except ValueError:
            return open_store(cfg.store_root, keep=1 << 30, detached=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_s)
            try:
                await self.catalog.refresh()
            # the store restarting: try again at the next poll
            except Exception as exc:
                logger.warning("adapter store refresh failed: %s", exc)

    async def check_health(self) -> None:
        """Serve's health probe: a dead engine or poller restarts the replica. It also sweeps the scratch
        directories of replicas that are gone (a SIGKILLed sibling's, while its replacement still starts)."""
        await asyncio.to_thread(sweep_stale, self.scratch_root)
        await self.engine.check_health()
        if self._poller is not None and self._poller.done():
            raise RuntimeError(f"adapter poller stopped: {self._poller.exception()!r}")

    def __del__(self):
        shutil.rmtree(getattr(self, "adapter_root", ""), ignore_errors=True)

    # ---- routes ----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(m) for m in self.catalog.model_ids()]}

    @app.get("/v1/models/{model:path}", responses={404: _ERRORS[404]})
    async def get_model(self, model: str):
        if model not in self.catalog.model_ids():
            return _error(404, f"the model {model!r} does not exist", "NotFoundError", "model")
        return self._card(model)

    @app.post("/v1/completions", responses=_ERRORS)
    async def completions(self, body: CompletionBody, request: Request):
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return await self._serve(body, request, CompletionRequest, self.completion.create_completion)

    @app.post("/v1/chat/completions", responses=_ERRORS)
    async def chat_completions(self, body: ChatBody, request: Request):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return await self._serve(body, request, ChatCompletionRequest, self.chat.create_chat_completion)

    def describe(self) -> dict[str, Any]:
        """Handle entry point: what this replica holds (tests, the benchmark)."""
        return self.catalog.describe()

    # ---- serving ---------------------------------------------------------------------------
    def _card(self, model: str) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            "created": self.created,
            "owned_by": "polyray",
            "root": model,
            "parent": None if model == self.cfg.base_name else self.cfg.base_name,
        }

    async def _limit_error(self, body: CompletionBody | ChatBody) -> JSONResponse | None:
        refused = limit_error(body, self.cfg)
        if refused is not None:
            return _error(400, refused[0], "BadRequestError", refused[1])
        limit = self.cfg.max_prompt_tokens or self.max_len
        if isinstance(body, ChatBody):
            if self.template is None and not getattr(self.tokenizer, "chat_template", None):
                return _error(
                    400,
                    f"the model {self.cfg.base_name!r} has no chat template: use /v1/completions, or"
                    " start the service with chat_template set",
                    "BadRequestError",
                    "messages",
                )
        # templating and tokenising take time proportional to the body: off the event loop, which
        # must keep answering health checks (a blocked loop gets the replica killed)
        try:
            lengths = await asyncio.to_thread(self._prompt_lengths, body)
        except Exception as exc:  # noqa: BLE001 - a request's template arguments the template cannot take
            if not isinstance(body, ChatBody):
                raise
            return _error(
                400,
                f"the chat template cannot render these messages with these chat_template_kwargs: {_first_line(exc)}",
                "BadRequestError",
                "chat_template_kwargs",
            )
        if max(lengths, default=0) > limit:
            return _error(
                400,
                f"the prompt has {max(lengths)} tokens; this service's limit is {limit}",
                "BadRequestError",
                "messages" if isinstance(body, ChatBody) else "prompt",
            )
        return None

    def _prompt_lengths(self, body: CompletionBody | ChatBody) -> list[int]:
        if isinstance(body, ChatBody):
            messages = [m.model_dump() for m in body.messages]
            rendered = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=True,
                **template_kwargs(self.cfg.chat_template_kwargs, getattr(body, "chat_template_kwargs", None)),
            )
            return [len(self.tokenizer.encode(rendered, add_special_tokens=False))]
        return _prompt_lengths(body.prompt, self.tokenizer)

    async def _serve(self, body, raw: Request, request_cls, create):
        from vllm.entrypoints.serve import create_error_response
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        refused = await self._limit_error(body)
        if refused is not None:
            return refused
        if isinstance(body, ChatBody) and body.max_tokens is None and body.max_completion_tokens is None:
            # a chat without a length stops at the service's cap
            body.max_tokens = self.cfg.max_tokens
        try:
            hold = await self.catalog.hold(body.model)
        except UnknownModelError as exc:
            return _error(404, str(exc), "NotFoundError", "model")
        streaming = False
        # every way out but a started stream releases the version, cancellation included
        try:
            try:
                request = request_cls.model_validate({**body.model_dump(exclude_unset=True), "model": hold.name})
                out = await create(request, raw)
            except ValidationError as exc:
                return _error(400, format_validation_error(exc, "request"), "BadRequestError")
            # vLLM raises some refusals (a bad template, a dead engine)
            except Exception as exc:
                return _vllm_error(create_error_response(exc))
            if isinstance(out, ErrorResponse):
                return _vllm_error(out)
            if not hasattr(out, "__aiter__"):
                return JSONResponse(content=out.model_dump())
            streaming = True
            return HeldStream(out, hold)
        finally:
            if not streaming:
                await hold.release()


def build_generation_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for ``serve run`` / ``serve deploy``: ``args`` is a :class:`GenerationServiceConfig`."""
    try:
        config = GenerationServiceConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "generation service args")) from None
    from polyray.storage import is_stored

    if not is_stored(config.model_dir) and not (Path(config.model_dir) / "config.json").is_file():
        raise ConfigError(f"generation service args: model_dir {config.model_dir} has no config.json")
    for name, path in config.adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"generation service args: adapters.{name}: {path} is not a saved adapter")
    if config.chat_template and not Path(config.chat_template).is_file():
        raise ConfigError(f"generation service args: chat_template {config.chat_template} does not exist")
    check_api_key(config, "generation service args")
    return GenerationDeployment.options(
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options={
            "num_cpus": config.num_cpus,
            "num_gpus": config.gpus,
            "resources": config.resources,
            "runtime_env": {"env_vars": engine_env(config)},
        },
    ).bind(config.model_dump())
