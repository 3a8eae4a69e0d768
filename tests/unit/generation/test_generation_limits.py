"""The generation service's limits and its holds on adapter versions, without an engine.

Request limits are checked from the body alone (:func:`polyray.generation.api.limit_error`); the
deployment's ``_serve`` runs here on a replica object built without vLLM's engine (a stand-in
``create`` and tokenizer), to show a held version is released however a request ends; the app's
middleware (body size, auth) and error shape run under Starlette's test client.
tests/integration/test_generation_service.py runs the real engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from polyray.config.services import GenerationServiceConfig
from polyray.generation.api import ChatBody, CompletionBody, limit_error
from polyray.generation.catalog import AdapterCatalog, UnknownModelError, policy_version

CFG = GenerationServiceConfig(model_dir="m")


def _completion(**fields):
    return CompletionBody.model_validate({"model": "base", "prompt": "x", **fields})


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"prompt": ["p"] * 65}, "prompt", "65 prompts"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "5 stop strings"),
        ({"stop": "z" * 257}, "stop", "257 characters"),
        ({"prompt": ["p"] * 64, "n": 16, "max_tokens": 512}, "max_tokens", "524288 tokens"),
        ({"n": 17}, "n", "limit of 16"),
    ],
)
def test_request_limits_name_the_param(fields, param, words):
    message, field = limit_error(_completion(**fields), CFG)
    assert field == param and words in message


def test_requests_within_the_limits_pass():
    assert limit_error(_completion(prompt=["p"] * 64, n=2, max_tokens=512, stop=["a"] * 4), CFG) is None
    assert limit_error(_completion(prompt=[[1, 2]] * 64, n=16), CFG) is None  # 16 tokens each by default
    assert limit_error(_completion(prompt=[1, 2, 3] * 1000), CFG) is None  # one prompt of token ids
    chat = ChatBody.model_validate({"model": "base", "messages": [{"role": "user", "content": "hi"}], "n": 16})
    assert limit_error(chat, CFG) is None  # 16 x the service's 512


def test_a_policy_id_with_thousands_of_digits_is_an_unknown_model():
    huge = "policy-v" + "9" * 5000
    assert policy_version(huge) is None
    assert policy_version("policy-v" + "9" * 18) == int("9" * 18)
    catalog = AdapterCatalog(None, None, "base", {}, None, None, keep=2)
    with pytest.raises(UnknownModelError):
        catalog.resolve(huge)


# ------------------------------------------------------------------------------ holds
class _Tokenizer:
    chat_template = None

    def encode(self, text, add_special_tokens=True):
        return text.split()


def _replica(tmp_path):
    from polyray.generation.deployment import GenerationDeployment

    cls = GenerationDeployment.func_or_class
    replica = cls.__new__(cls)
    replica.cfg, replica.max_len, replica.template, replica.tokenizer = CFG, 64, None, _Tokenizer()
    replica.catalog = AdapterCatalog(None, None, "base", {}, None, tmp_path, keep=2)
    return replica


def _serve(replica, create):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return replica._serve(_completion(), None, CompletionRequest, create)


def test_a_request_cancelled_inside_create_releases_its_version(tmp_path):
    replica = _replica(tmp_path)
    entered = asyncio.Event()

    async def create(request, raw):
        entered.set()
        await asyncio.sleep(3600)  # the engine working; the client goes away

    async def main():
        task = asyncio.create_task(_serve(replica, create))
        await entered.wait()
        assert replica.catalog.holds["base"] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the shielded release's own step

    asyncio.run(main())
    assert not replica.catalog.holds


def test_a_stream_cancelled_before_its_first_chunk_releases_its_version(tmp_path):
    replica = _replica(tmp_path)

    async def chunks():
        yield "data: [DONE]\n\n"

    async def create(request, raw):
        return chunks()

    async def main():
        response = await _serve(replica, create)
        assert replica.catalog.holds["base"] == 1

        async def receive():  # the client is gone before anything was sent
            return {"type": "http.disconnect"}

        async def send(message):
            await asyncio.sleep(3600)

        await response({"type": "http", "asgi": {"spec_version": "2.0"}}, receive, send)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert not replica.catalog.holds


def test_a_finished_stream_and_a_refusal_release_their_version(tmp_path):
    replica = _replica(tmp_path)

    async def chunks():
        yield "data: [DONE]\n\n"

    async def create(request, raw):
        return chunks()

    async def failing(request, raw):
        raise ValueError("the engine refuses")

    async def main():
        sent = []

        async def receive():
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        response = await _serve(replica, create)
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
        assert b"[DONE]" in b"".join(m.get("body", b"") for m in sent)
        refused = await _serve(replica, failing)
        assert refused.status_code == 400 and isinstance(
            __import__("json").loads(refused.body)["error"]["code"], (str, type(None))
        )

    asyncio.run(main())
    assert not replica.catalog.holds


# ------------------------------------------------------------------------------ the app's HTTP
def test_the_app_limits_bodies_and_answers_bad_bodies_400_with_the_param():
    import json

    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from polyray.generation.deployment import _validation_error, app

    big = TestClient(app).post(
        "/v1/completions", content=b"x" * (CFG.max_body_bytes + 1), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "bytes" in big.json()["error"]["message"]
    with pytest.raises(ValidationError) as info:  # as FastAPI validates the body: loc starts at "body"
        CompletionBody.model_validate({"model": "base", "prompt": "x", "n": "many"})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]
    bad = asyncio.run(_validation_error(None, RequestValidationError(errors)))
    assert bad.status_code == 400
    error = json.loads(bad.body)["error"]
    assert error["param"] == "n" and error["type"] and error["code"] is None


def test_only_healthz_itself_skips_the_api_key():
    from fastapi import FastAPI

    from polyray.http import BearerAuth

    app = FastAPI()
    app.add_middleware(BearerAuth, key=lambda: "secret")

    @app.get("/{anything:path}")
    def anything(anything: str):
        return {"path": anything}

    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    for path in ("/v1/models/healthz", "/v1/x/healthz", "/nothealthz"):
        assert client.get(path).status_code == 401, path
    mounted = TestClient(app, root_path="/gen")  # Serve's route_prefix
    assert mounted.get("/gen/healthz").status_code == 200
    assert mounted.get("/gen/v1/healthz").status_code == 401


def test_both_serve_configs_bound_request_time():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from polyray.http import REQUEST_TIMEOUT_S

    root = Path(__file__).resolve().parents[3] / "services"
    for name in ("reward.yaml", "generation.yaml"):
        schema = ServeDeploySchema.model_validate(yaml.safe_load((root / name).read_text()))
        assert schema.http_options.request_timeout_s == REQUEST_TIMEOUT_S, name
    raw = yaml.safe_load((root / "generation.yaml").read_text())
    GenerationServiceConfig.model_validate(raw["applications"][0]["args"])


def test_a_health_check_sweeps_the_scratch_directory_of_a_replica_that_is_gone(tmp_path):
    """With 2 replicas, a SIGKILLed one's scratch directory outlived it until its replacement had started an
    engine (tens of seconds on 2 CPUs); a live replica's health check now sweeps it, and keeps its own."""
    from polyray import lifetime
    from polyray.generation.deployment import SCRATCH

    class Engine:
        async def check_health(self):
            return None

    replica = _replica(tmp_path)
    root = Path(lifetime.shared_root(SCRATCH, str(tmp_path)))
    replica.engine, replica._poller, replica.scratch_root = Engine(), None, str(root)
    own = Path(lifetime.process_dir(SCRATCH, str(tmp_path)))
    namespace, pid, started = lifetime.owner_tag().split("-")
    dead = root / f"{namespace}-{pid}-{int(started) + 1}"  # this pid's number, another (gone) process
    (dead / "adapters-x").mkdir(parents=True)
    asyncio.run(replica.check_health())
    assert not dead.exists() and own.is_dir()
