"""Measurements behind ``polyray bench generation`` (figures printed, never asserted).

- :func:`bench_direct`: the same requests straight into a vLLM ``AsyncLLM`` built with the
  service's own engine settings (:func:`~polyray.generation.deployment.engine_args`), C at a time.
- :func:`bench_endpoint`: the requests through the service's HTTP API (the ``openai`` client), C
  clients at a time. Output tokens/s of the two, side by side, is the service's overhead.
- :func:`publish_to_latest`: seconds from a version's publish to the adapter store until ``latest``
  answers with it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    n: int
    max_tokens: int
    seed: int


def _rate(tokens: int, seconds: float, requests: int, concurrency: int) -> dict[str, Any]:
    return {"concurrency": concurrency, "requests": requests, "output_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0}  # fmt: skip


def bench_direct(cfg, requests: list[BenchRequest], concurrencies: list[int], lora_dir: str | None) -> list[dict]:
    """Output tokens/s of ``requests`` through one in-process engine, for each number of requests in
    flight (after one warm-up)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from polyray.generation.deployment import engine_args, engine_env

    for key, value in engine_env(cfg).items():  # as a replica sets them
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
                    async for out in engine.generate(r.prompt, params, f"bench-{i}-{time.time_ns()}", lora_request=lora):
                        final = out
                return sum(len(c.token_ids) for c in final.outputs)

            await one(-1, requests[0])  # warm-up: the adapter loads, kernels settle
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
        out = client.completions.create(model=model, prompt=r.prompt, n=r.n, max_tokens=r.max_tokens, seed=r.seed,
                                        temperature=1.0, top_p=1.0)  # fmt: skip
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
