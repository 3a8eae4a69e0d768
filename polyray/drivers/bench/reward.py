"""Benchmarks of the reward service: HTTP throughput/latency and what batching buys the encoder.

- :func:`bench_reward_http` fires ``n_requests`` identical ``POST /v1/rewards`` at a
  running service with ``concurrency`` in flight (asyncio + one pooled httpx client),
  stopping early after ``max_seconds``; it reports requests/s and latency percentiles.
  The client shares the machine with the service on loopback, so at high concurrency
  on few cores the numbers include the client's own CPU use.
- :func:`bench_engagement_batching` times the engagement model on ``n`` distinct pairs
  scored in one batched call versus one call per pair (same model, same texts).
- :func:`bench_reward`: ``polyray bench reward``, both of them on a reward app served on loopback.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from polyray.drivers.bench.common import console


def _percentile_ms(latencies_s: list[float], q: float) -> float:
    return float(np.percentile(np.array(latencies_s) * 1000.0, q)) if latencies_s else float("nan")


async def _fire(
    url: str, body: dict[str, Any], concurrency: int, n_requests: int, max_seconds: float
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=60.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < n_requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    status = (await client.post("/v1/rewards", json=body)).status_code
                except Exception:  # noqa: BLE001 - counted, not fatal to the benchmark
                    status = -1
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[status] = errors.get(status, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def bench_reward_http(
    url: str,
    reward: str,
    items: list[dict[str, Any]],
    concurrency: int = 1,
    n_requests: int = 200,
    max_seconds: float = 30.0,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Throughput and latency of ``POST /v1/rewards`` at ``concurrency`` requests in flight."""
    body = {"reward": reward, "items": items, "params": params or {}}
    run = asyncio.run(_fire(url, body, concurrency=concurrency, n_requests=n_requests, max_seconds=max_seconds))
    ok = len(run["latencies"])
    return {
        "reward": reward,
        "items_per_request": len(items),
        "concurrency": concurrency,
        "requests": ok,
        "errors": run["errors"],
        "seconds": round(run["elapsed"], 3),
        "rps": ok / run["elapsed"] if run["elapsed"] > 0 else 0.0,
        "p50_ms": _percentile_ms(run["latencies"], 50),
        "p99_ms": _percentile_ms(run["latencies"], 99),
    }


def synthetic_pairs(n: int) -> tuple[list[str], list[str]]:
    """``n`` distinct (prompt, response) pairs, so the encoder's de-duplication cannot help."""
    topics = ["running", "baking", "chess", "gardening", "travel", "guitar", "climbing", "photography"]
    prompts = [f"I just tried {topics[i % len(topics)]} for the {i}th time this year." for i in range(n)]
    responses = [f"Great job! How long did session {i} of {topics[(i * 3) % len(topics)]} take you?" for i in range(n)]
    return prompts, responses


def bench_engagement_batching(model_path: str, n: int = 256, batch_size: int = 64) -> dict[str, float]:
    """Items/s of the engagement model: one batched ``predict`` over ``n`` pairs vs ``n`` single-pair calls."""
    from polyray.reward.engagement import load

    model = load(model_path)
    prompts, responses = synthetic_pairs(n)
    # load the encoder and warm up before timing
    model.predict(prompts[:8], responses[:8])
    t0 = time.perf_counter()
    batched = model.predict(prompts, responses, batch_size=batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = np.concatenate([model.predict([p], [r]) for p, r in zip(prompts, responses)])
    t_single = time.perf_counter() - t0
    # padding must not change the prediction
    if not np.allclose(batched, single, atol=1e-3):
        raise AssertionError(f"batched and single predictions differ (max {np.abs(batched - single).max():.2e})")
    return {
        "n": n,
        "batched_items_per_s": n / t_batched,
        "unbatched_items_per_s": n / t_single,
        "ratio": t_single / t_batched,
    }


def bench_reward(n_requests: int = 300, max_seconds: float = 20.0, pairs: int = 256) -> dict[str, Any]:
    """Serve the reward app on loopback (with an engagement model trained on the test fixture) and measure it;
    then the engagement model on ``pairs`` pairs, batched and one by one."""
    import httpx
    import ray
    from ray import serve

    from polyray.drivers.bench.engagement_data import write_engagement_jsonl
    from polyray.http import free_port
    from polyray.reward.deployment import build_reward_app as build_app
    from polyray.reward.engagement import train_engagement_model

    results: dict[str, Any] = {"http": []}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-rm-") as tmp, tempfile.TemporaryDirectory() as data:
        with console.status("training the engagement model on 600 synthetic replies"):
            train_engagement_model(write_engagement_jsonl(Path(data) / "engagement.jsonl"), tmp, seed=0)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app({"rewards": {"engagement": {"model_path": tmp}}}), name="reward", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            countdown = [
                {"prompt": "nums 3 4 9 target 12\nexpr:", "completion": c}
                for c in (" 3+9", " 4*3", " 9+4-1", " 3*4", " 12", " 9+3", " 4+9-1", " 3+4")
            ]
            engagement = [
                {"prompt": "I ran my first 10k today!", "completion": f"Congrats! What was your pace, {i}?"}
                for i in range(8)
            ]
            for reward, items in (("countdown", countdown), ("engagement", engagement)):
                httpx.post(f"{url}/v1/rewards", json={"reward": reward, "items": items}, timeout=120).raise_for_status()
                # measured after one warm-up request (encoder load)
                for concurrency in (1, 32):
                    with console.status(f"{reward}: {concurrency} concurrent client(s)"):
                        results["http"].append(
                            bench_reward_http(
                                url,
                                reward,
                                items,
                                concurrency=concurrency,
                                n_requests=n_requests,
                                max_seconds=max_seconds,
                            )
                        )
        finally:
            serve.shutdown()
            ray.shutdown()
        with console.status(f"engagement model, {pairs} pairs: batched vs one pair per call"):
            results["engagement_batching"] = bench_engagement_batching(tmp, pairs)
    return results


def print_reward(results: dict[str, Any]) -> None:
    table = Table(title="reward service on loopback (8 items per request, 2 shared cores)")
    for col in ("reward", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "reward" else "right")
    for r in results["http"]:
        table.add_row(
            r["reward"],
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["errors"]),
            f"{r['rps']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
        )
    console.print(table)
    b = results["engagement_batching"]
    console.print(
        f"engagement model, {b['n']} pairs: batched {b['batched_items_per_s']:.0f} items/s, "
        f"unbatched {b['unbatched_items_per_s']:.0f} items/s, ratio {b['ratio']:.2f}x"
    )
