"""The generation service's model ids, holds and eviction (polyray/generation/catalog.py), and the
HTTP pieces the services share (polyray/http.py).

The catalog runs against in-process stand-ins for vLLM's adapter registry and a real
:class:`~polyray.rollout.store.AdapterStore` (its ``.remote`` calls made awaitable): what is
tested is the bookkeeping; tests/integration/test_generation_service.py runs the real engine.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from polyray.config.services import GenerationServiceConfig
from polyray.generation.api import ChatBody, CompletionBody
from polyray.generation.catalog import AdapterCatalog, UnknownModelError, policy_version
from polyray.config.services import ApiKeyConfig
from polyray.http import BearerAuth, read_api_key
from polyray.rollout.store import AdapterStore


def _adapter(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"config": {"r": 2, "peft_type": "LORA"}, "tensors": {"a.lora_A.weight": torch.randn(2, 4, generator=g)}}


class _Remote:
    """``actor.method.remote(...)`` awaitable, over a plain object."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        method = getattr(self.target, name)

        async def call(*args):
            return method(*args)

        return SimpleNamespace(remote=call)


class _Models:
    """vLLM's OpenAIServingModels as the catalog uses it: names -> LoRA requests with fresh int ids."""

    def __init__(self):
        self.lora_requests: dict = {}
        self.next_id = 0

    async def load_lora_adapter(self, request):
        self.next_id += 1
        self.lora_requests[request.lora_name] = SimpleNamespace(lora_int_id=self.next_id, path=request.lora_path)
        return f"loaded {request.lora_name}"

    async def unload_lora_adapter(self, request):
        del self.lora_requests[request.lora_name]


class _Engine:
    def __init__(self):
        self.removed: list[int] = []

    async def remove_lora(self, lora_id: int):
        self.removed.append(lora_id)


def _catalog(tmp_path, keep=2, named=None):
    store = AdapterStore(str(tmp_path / "store"), keep=16)
    catalog = AdapterCatalog(_Engine(), _Models(), "base", named or {}, _Remote(store), tmp_path / "here", keep)
    return catalog, store


def _publish(store, *versions):
    for v in versions:
        store.put(v, _adapter(v), "grpo", v)


def test_ids_resolve_and_newest_is_loaded_before_serving(tmp_path):
    async def run():
        catalog, store = _catalog(tmp_path, named={"run/sft": str(tmp_path / "sft")})
        await catalog.start()
        assert catalog.model_ids() == ["base", "run/sft"]  # nothing published: no latest
        with pytest.raises(UnknownModelError, match="no policy version"):
            catalog.resolve("latest")
        _publish(store, 1, 2)
        await catalog.refresh()
        assert catalog.model_ids() == ["base", "latest", "policy-v1", "policy-v2", "run/sft"]
        assert sorted(catalog.loaded) == [2] and "policy-v2" in catalog.models.lora_requests  # newest, at once
        assert catalog.resolve("latest") == "policy-v2"
        for bad in ("policy-v0", "policy-v01", "Base", "run/grpo"):
            with pytest.raises(UnknownModelError):
                catalog.resolve(bad)
        with pytest.raises(UnknownModelError, match="not in the adapter store"):
            await catalog.acquire("policy-v7")
        assert await catalog.acquire("policy-v1") == "policy-v1"  # an older one: pulled on first use
        assert (tmp_path / "here" / "policy-v1" / "adapter_model.safetensors").is_file()

    asyncio.run(run())


def test_a_held_version_outlives_newer_publishes_and_goes_when_released(tmp_path):
    async def run():
        catalog, store = _catalog(tmp_path, keep=1)
        _publish(store, 1)
        await catalog.start()
        held = await catalog.acquire("latest")  # a request starts on v1 ...
        assert held == "policy-v1"
        _publish(store, 2, 3, 4)  # ... while three more versions are published
        await catalog.refresh()
        assert catalog.resolve("latest") == "policy-v4"  # later requests get the newest
        # past the bound of 1 only by the held version: never unloaded under a request
        assert sorted(catalog.loaded) == [1, 4] and catalog.engine.removed == []
        await catalog.release(held)  # the request ends: now it goes
        assert sorted(catalog.loaded) == [4] and catalog.engine.removed == [1]
        assert "policy-v1" not in catalog.holds

    asyncio.run(run())


def test_eviction_unloads_from_the_engine_and_disk(tmp_path):
    async def run():
        catalog, store = _catalog(tmp_path, keep=1)
        _publish(store, 1)
        await catalog.start()
        v1_id = catalog.models.lora_requests["policy-v1"].lora_int_id
        _publish(store, 2)
        await catalog.refresh()
        assert sorted(catalog.loaded) == [2] and catalog.engine.removed == [v1_id]
        assert "policy-v1" not in catalog.models.lora_requests
        assert not (tmp_path / "here" / "policy-v1").exists()
        name = await catalog.acquire("policy-v1")  # asked for again: pulled again, hash-checked
        assert name == "policy-v1" and sorted(catalog.loaded) == [1, 2]
        await catalog.release(name)
        assert sorted(catalog.loaded) == [2]

    asyncio.run(run())


def test_concurrent_first_requests_load_a_version_once(tmp_path):
    async def run():
        catalog, store = _catalog(tmp_path, keep=4)
        _publish(store, 1, 2)
        await catalog.start()
        names = await asyncio.gather(*(catalog.acquire("policy-v1") for _ in range(5)))
        assert names == ["policy-v1"] * 5 and catalog.holds["policy-v1"] == 5
        assert catalog.models.next_id == 2  # v2 at start, v1 once

    asyncio.run(run())


def test_a_tampered_version_is_refused(tmp_path):
    async def run():
        catalog, store = _catalog(tmp_path)
        _publish(store, 1)
        store._cache.clear()
        tensors = tmp_path / "store" / "v000001" / "adapter_model.safetensors"
        from safetensors.torch import load_file, save_file

        weights = load_file(tensors)
        weights = {k: v + 1 for k, v in weights.items()}
        save_file(weights, tensors)
        with pytest.raises(Exception, match="hash|sha|weights"):
            await catalog.start()

    asyncio.run(run())


def test_policy_version_parsing():
    assert policy_version("policy-v12") == 12
    assert policy_version("policy-v0") is None and policy_version("policy-v1x") is None


# ------------------------------------------------------------------------------ api models
def test_config_and_bodies_validate():
    with pytest.raises(ValueError, match="max_queued_requests"):
        GenerationServiceConfig(model_dir="m", max_queued_requests=0)
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        GenerationServiceConfig(model_dir="m", max_replicas=2)
    body = CompletionBody.model_validate({"model": "base", "prompt": [1, 2], "top_k": 5})
    assert body.model_dump(exclude_unset=True) == {"model": "base", "prompt": [1, 2], "top_k": 5}  # passes through
    with pytest.raises(ValueError, match="messages"):
        ChatBody.model_validate({"model": "base", "messages": []})


# ------------------------------------------------------------------------------ http
def test_read_api_key(tmp_path, monkeypatch):
    assert read_api_key(ApiKeyConfig()) is None
    monkeypatch.setenv("POLYRAY_TEST_KEY", " k1 ")
    assert read_api_key(ApiKeyConfig(api_key_env="POLYRAY_TEST_KEY")) == "k1"
    (tmp_path / "key").write_text("k2\n")
    assert read_api_key(ApiKeyConfig(api_key_env="POLYRAY_TEST_KEY", api_key_file=str(tmp_path / "key"))) == "k2"
    with pytest.raises(ValueError, match="POLYRAY_NOT_SET is not set"):
        read_api_key(ApiKeyConfig(api_key_env="POLYRAY_NOT_SET"))
    with pytest.raises(ValueError, match="api_key_file .*nope"):
        read_api_key(ApiKeyConfig(api_key_file=str(tmp_path / "nope")))


def test_bearer_auth():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    key = {"value": "secret"}
    app.add_middleware(BearerAuth, key=lambda: key["value"])

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"data": []}

    client = TestClient(app)
    assert client.get("/healthz").status_code == 200  # probes need no key
    for headers, message in [
        ({}, "missing API key"),
        ({"Authorization": "Bearer nope"}, "invalid API key"),
        ({"Authorization": "Basic secret"}, "invalid API key"),
    ]:
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["message"].startswith(message) and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "bearer secret"}).status_code == 200
    key["value"] = None  # no key configured: open
    assert client.get("/v1/models").status_code == 200


def test_generation_serve_config_is_valid_and_the_cli_reads_it():
    from pathlib import Path

    import typer
    import yaml
    from ray.serve.schema import ServeDeploySchema
    from typer.testing import CliRunner

    from polyray.cli.serve import _app_args, serve_app

    path = Path(__file__).resolve().parents[3] / "services" / "generation.yaml"
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = [a for a in schema.applications if a.name == "generation"]
    assert app.import_path == "services.generation_app:build_app"
    GenerationServiceConfig.model_validate(app.args)
    assert _app_args(path, "generation") == app.args
    cli = typer.Typer()
    cli.add_typer(serve_app, name="serve")
    result = CliRunner().invoke(cli, ["serve", "generation", "--run", "/nonexistent"])
    assert result.exit_code == 2 and "not a polyray run directory" in result.output


def test_chat_template_resolution(tmp_path):
    import json

    from polyray.generation.deployment import EMBEDDED_CHAT_TEMPLATE, chat_template

    def cfg(**kw):
        return GenerationServiceConfig(model_dir=str(tmp_path), **kw)

    assert chat_template(cfg()) is None  # no template anywhere: chat requests get 400
    (tmp_path / "build_info.json").write_text("{}")  # the embedded model: polyray's minimal template
    assert chat_template(cfg()) == EMBEDDED_CHAT_TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert chat_template(cfg()) is None  # the tokenizer's own wins
    (tmp_path / "mine.jinja").write_text("{{ messages[0]['content'] }}")
    assert chat_template(cfg(chat_template=str(tmp_path / "mine.jinja"))) == "{{ messages[0]['content'] }}"
    from jinja2 import Template

    rendered = Template(EMBEDDED_CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert rendered == "user: hi\nassistant: "


def test_replicas_ask_for_the_runs_worker_resources(tmp_path):
    """A run's generation service places its replicas as its rollout workers (cluster.worker_resources)."""
    from pathlib import Path

    from polyray.config import load_config
    from polyray.drivers.run import generation_args
    from polyray.generation.deployment import build_generation_app

    (tmp_path / "config.json").write_text("{}")
    run = load_config(
        Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml", ["cluster.worker_resources={worker: 1}"]
    )
    args = generation_args(run, tmp_path, tmp_path)
    assert args["resources"] == {"worker": 1}
    app = build_generation_app(args)
    assert app._bound_deployment.ray_actor_options["resources"] == {"worker": 1}
    assert build_generation_app({"model_dir": str(tmp_path)})._bound_deployment.ray_actor_options["resources"] == {}
