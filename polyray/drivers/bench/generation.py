"""Measurements behind ``polyray bench generation`` (figures printed, never asserted).

- :func:`bench_direct`: the same requests straight into a vLLM ``AsyncLLM`` built with the
  service's own engine settings (:func:`~polyray.generation.deployment.engine_args`), C at a time.
- :func:`bench_endpoint`: the requests through the service's HTTP API (the ``openai`` client), C
  clients at a time. Output tokens/s of the two, side by side, is the service's overhead.
- :func:`publish_to_latest`: seconds from a version's publish to the adapter store until ``latest``
  answers with it.
- :func:`bench_generation`: ``polyray bench generation``, the three of them on one config's model.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.drivers.bench.common import _random_adapter, console


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    n: int
    max_tokens: int
    seed: int


def _rate(tokens: int, seconds: float, requests: int, concurrency: int) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "requests": requests,
        "output_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def bench_direct(cfg, requests: list[BenchRequest], concurrencies: list[int], lora_dir: str | None) -> list[dict]:
    """Output tokens/s of ``requests`` through one in-process engine, for each number of requests in
    flight (after one warm-up)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from polyray.generation.deployment import engine_args, engine_env

    # as a replica sets them
    for key, value in engine_env(cfg).items():
        os.environ.setdefault(key, value)
    lora = LoRARequest("policy-v1", 1, lora_dir) if lora_dir else None

    async def run() -> list[dict[str, Any]]:
        engine = AsyncLLM.from_engine_args(engine_args(cfg))
        try:
            gate = asyncio.Semaphore(1)

            async def one(i: int, r: BenchRequest) -> int:
                params = SamplingParams(n=r.n, max_tokens=r.max_tokens, seed=r.seed, temperature=1.0, top_p=1.0)
                async with gate:
                    final = None
                    async for out in engine.generate(
                        r.prompt, params, f"bench-{i}-{time.time_ns()}", lora_request=lora
                    ):
                        final = out
                return sum(len(c.token_ids) for c in final.outputs)

            # warm-up: the adapter loads, kernels settle
            await one(-1, requests[0])
            rates = []
            for concurrency in concurrencies:
                gate = asyncio.Semaphore(concurrency)
                t0 = time.perf_counter()
                tokens = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
                rates.append(_rate(sum(tokens), time.perf_counter() - t0, len(requests), concurrency))
            return rates
        finally:
            engine.shutdown()

    return asyncio.run(run())


def bench_endpoint(base_url: str, model: str, requests: list[BenchRequest], concurrency: int, api_key: str = "none"):
    """Output tokens/s of ``requests`` through the service, ``concurrency`` clients (after one warm-up)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)

    def one(r: BenchRequest) -> int:
        out = client.completions.create(
            model=model, prompt=r.prompt, n=r.n, max_tokens=r.max_tokens, seed=r.seed, temperature=1.0, top_p=1.0
        )
        return out.usage.completion_tokens

    one(requests[0])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = list(pool.map(one, requests))
    return _rate(sum(tokens), time.perf_counter() - t0, len(requests), concurrency)


def publish_to_latest(base_url: str, store, adapters: list[tuple[int, dict]], api_key: str = "none") -> dict[str, Any]:
    """Publish each (version, adapter) and time until a ``latest`` request is answered by it."""
    import ray
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
    seconds = []
    for version, adapter in adapters:
        t0 = time.perf_counter()
        ray.get(store.put.remote(version, adapter, "bench", version))
        while client.completions.create(model="latest", prompt="1", max_tokens=1).model != f"policy-v{version}":
            time.sleep(0.01)
        seconds.append(time.perf_counter() - t0)
    return {"publishes": len(seconds), "median_s": statistics.median(seconds), "max_s": max(seconds)}


def bench_generation(requests: int, n: int, max_tokens: int, config: str, publishes: int = 5) -> dict[str, Any]:
    """The same requests direct into an engine, then through the service (never both at once)."""
    import ray

    from polyray.config import load_config
    from polyray.config.services import GenerationServiceConfig
    from polyray.generation.service import deploy_generation
    from polyray.http import free_port
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.store import open_store, write_adapter_dir
    from polyray.tasks import build_task

    run = load_config(config)
    model_dir = prepare_model_dir(run.model, run.task)
    prompts = [p.text for p in build_task(run.task).prompts("val", requests)]
    batch = [BenchRequest(prompts[i % len(prompts)], n, max_tokens, seed=i) for i in range(requests)]
    results: dict[str, Any] = {"requests": requests, "n": n, "max_tokens": max_tokens, "direct": [], "endpoint": []}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-gen-") as tmp:
        adapter = _random_adapter(model_dir, run.learner.lora, seed=1)
        write_adapter_dir(Path(tmp) / "policy-v1", adapter)
        cfg = GenerationServiceConfig(
            model_dir=str(model_dir),
            max_model_len=run.rollout.max_model_len,
            max_lora_rank=run.rollout.max_lora_rank,
            store_root=str(Path(tmp) / "store"),
            num_cpus=1,
            max_num_seqs=64,
        )
        with console.status(f"direct engine: {requests} requests, 1 then 16 at a time"):
            results["direct"] = bench_direct(cfg, batch, [1, 16], str(Path(tmp) / "policy-v1"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            store = open_store(Path(tmp) / "store")
            ray.get(store.put.remote(1, adapter, "bench", 1))
            with console.status("starting the generation service"):
                url = deploy_generation(cfg.model_dump(), port=free_port())
            for concurrency in (1, 16):
                with console.status(f"endpoint: {requests} requests, {concurrency} clients"):
                    results["endpoint"].append(bench_endpoint(url, "policy-v1", batch, concurrency))
            versions = [(v, _random_adapter(model_dir, run.learner.lora, seed=v)) for v in range(2, 2 + publishes)]
            with console.status(f"publish -> latest, {publishes} versions"):
                results["publish_to_latest"] = publish_to_latest(url, store, versions)
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    results["ratio"] = {
        str(e["concurrency"]): e["tokens_per_s"] / d["tokens_per_s"]
        for d, e in zip(results["direct"], results["endpoint"])
    }
    return results


def print_generation(results: dict[str, Any]) -> None:
    table = Table(
        title=f"generation service vs direct engine ({results['requests']} requests, n={results['n']},"
        f" max_tokens={results['max_tokens']}, 2 shared cores)"
    )
    for col in ("clients", "direct tok/s", "endpoint tok/s", "endpoint / direct"):
        table.add_column(col, justify="right")
    for d, e in zip(results["direct"], results["endpoint"]):
        table.add_row(
            str(d["concurrency"]),
            f"{d['tokens_per_s']:.0f}",
            f"{e['tokens_per_s']:.0f}",
            f"{e['tokens_per_s'] / d['tokens_per_s']:.2f}",
        )
    console.print(table)
    p = results["publish_to_latest"]
    console.print(
        f"publish -> latest serving it: median {p['median_s']:.3f} s, max {p['max_s']:.3f} s"
        f" over {p['publishes']} publishes"
    )
