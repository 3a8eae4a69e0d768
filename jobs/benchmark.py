"""Benchmarks, each printed as figures measured side by side in one run (never asserted in tests).

``python -m jobs.benchmark polychromic [--steps 30]``
    polychromic SFT step time / standard SFT step time on the embedded default (same model,
    batch, learner and rollout pool), with where the polychromic step's time goes.
``python -m jobs.benchmark reward``
    the reward service: requests/s and p50/p99 latency on loopback for 1 and 32 clients,
    and the batched / unbatched throughput of the engagement model.
``python -m jobs.benchmark generation [--requests 64]``
    the generation service: output tokens/s through its HTTP API / the same requests straight into
    a vLLM engine with the same settings, at 1 and 16 concurrent clients; and the time from a
    version's publish to ``latest`` serving it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from polyray.io import read_log_jsonl

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=140)


def _step_stats(metrics_path: Path, phase: str, warmup: int) -> dict[str, float]:
    rows = [r for r in read_log_jsonl(metrics_path) if r["phase"] == phase][warmup:]
    out = {"steps": len(rows), "step_s": statistics.median(r["step_s"] for r in rows)}
    for key in ("rollout_s", "diversity_s", "sync_s"):
        if key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
    canary = [r["canary_s"] for r in rows if "canary_s" in r]
    if canary:
        out["canary_s"] = statistics.median(canary)
    return out


def bench_polychromic(
    steps: int, config: str, diversity: list[str], warmup: int = 3, with_async: bool = True
) -> dict[str, dict[str, float]]:
    """Run SFT, then polychromic SFT (per diversity function, and with rollouts one step ahead) for
    ``steps`` steps each from a fresh adapter, on one pool."""
    from polyray.config import load_config
    from polyray.learner.loop import run_phase
    from polyray.cluster import init_ray, needed_cpus
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    phases = [f"phases.0.steps={steps}", "phases.0.checkpoint_every=1000"]
    sft = load_config(config, phases)
    model_dir = prepare_model_dir(sft.model, sft.task)
    init_ray(sft.cluster, needed_cpus(sft))
    results = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-") as tmp:
        out = Path(tmp)
        pool = RolloutPool.launch(str(model_dir), sft.rollout, sft.model.dtype, store=open_store(out / "adapter_store"))
        try:
            with console.status(f"standard SFT, {steps} steps"):
                version = run_phase(sft, 0, str(model_dir), out, pool, 0, None)["version"]
            results["sft"] = _step_stats(out / "metrics.jsonl", "sft", warmup)
            variants = [(name, []) for name in diversity]
            if with_async:
                variants.append((diversity[0], ["phases.0.async_rollouts=true", "phases.0.max_lag=1"]))
            # the sync canary on every publish (default: every 50th): its cost per check
            variants.append((diversity[0], ["learner.sync_check_every=1"]))
            for i, (name, extra) in enumerate(variants):
                tag = {"phases.0.async_rollouts=true": ", async", "learner.sync_check_every=1": ", canary every step"}
                label = f"polychromic_sft[{name}{''.join(tag.get(e, '') for e in extra)}]"
                poly = load_config(config, [*phases, "phases.0.type=polychromic_sft", f"phases.0.name=poly{i}",
                                            f"phases.0.diversity={name}", *extra])
                with console.status(f"{label}, {steps} steps"):
                    version = run_phase(poly, 0, str(model_dir), out, pool, version, None)["version"]
                results[label] = _step_stats(out / "metrics.jsonl", f"poly{i}", warmup)
        finally:
            pool.shutdown()
    return results


def print_polychromic(results: dict[str, dict[str, float]]) -> None:
    base = results["sft"]["step_s"]
    table = Table(title="polychromic SFT vs standard SFT: median step time (rank 0, after warm-up)")
    table.caption = ("rollout s = generation the step waits for; canary s = the sync check after publishing;"
                     " update s = the rest (forward/backward, optimizer, broadcast)")
    for col in ("phase", "step s", "÷ SFT", "rollout s", "diversity s", "sync s", "canary s", "update s"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for name, r in results.items():
        parts = [r.get(k, 0.0) for k in ("rollout_s", "diversity_s", "sync_s")]
        canary = r.get("canary_s", 0.0)
        table.add_row(name, f"{r['step_s']:.3f}", f"{r['step_s'] / base:.2f}x", *(f"{v:.3f}" for v in parts),
                      f"{canary:.3f}" if "canary_s" in r else "–", f"{r['step_s'] - sum(parts) - canary:.3f}")
    console.print(table)


def bench_reward(n_requests: int = 300, max_seconds: float = 20.0) -> dict[str, Any]:
    """Serve the reward app on loopback (with an engagement model trained on the test fixture) and measure it."""
    import httpx
    import ray
    from ray import serve

    from polyray.reward.bench import bench_engagement_batching, bench_reward_http
    from polyray.reward.engagement import train_engagement_model
    from polyray.reward.deployment import build_reward_app as build_app

    results: dict[str, Any] = {"http": []}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-rm-") as tmp:
        with console.status("training the engagement model on tests/fixtures/engagement.jsonl"):
            train_engagement_model(ROOT / "tests" / "fixtures" / "engagement.jsonl", tmp, seed=0)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = _free_port()
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app({"rewards": {"engagement": {"model_path": tmp}}}), name="reward", route_prefix="/")
            url = f"http://127.0.0.1:{port}"
            countdown = [{"prompt": "nums 3 4 9 target 12\nexpr:", "completion": c} for c in
                         (" 3+9", " 4*3", " 9+4-1", " 3*4", " 12", " 9+3", " 4+9-1", " 3+4")]
            engagement = [{"prompt": "I ran my first 10k today!", "completion": f"Congrats! What was your pace, {i}?"}
                          for i in range(8)]
            for reward, items in (("countdown", countdown), ("engagement", engagement)):
                httpx.post(f"{url}/v1/rewards", json={"reward": reward, "items": items}, timeout=120).raise_for_status()
                for concurrency in (1, 32):  # measured after one warm-up request (encoder load)
                    with console.status(f"{reward}: {concurrency} concurrent client(s)"):
                        results["http"].append(bench_reward_http(url, reward, items, concurrency, n_requests, max_seconds))
        finally:
            serve.shutdown()
            ray.shutdown()
        with console.status("engagement model: batched vs one pair per call"):
            results["engagement_batching"] = bench_engagement_batching(tmp)
    return results


def print_reward(results: dict[str, Any]) -> None:
    table = Table(title="reward service on loopback (8 items per request, 2 shared cores)")
    for col in ("reward", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "reward" else "right")
    for r in results["http"]:
        table.add_row(r["reward"], str(r["concurrency"]), str(r["requests"]), str(r["errors"]), f"{r['rps']:.1f}",
                      f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console.print(table)
    b = results["engagement_batching"]
    console.print(f"engagement model, {b['n']} pairs: batched {b['batched_items_per_s']:.0f} items/s, "
                  f"unbatched {b['unbatched_items_per_s']:.0f} items/s, ratio {b['ratio']:.2f}x")


def _random_adapter(model_dir: Path, lora, seed: int) -> dict[str, Any]:
    """A LoRA adapter with non-zero B (peft starts B at 0), as the learner publishes it."""
    import torch

    from polyray.learner.lora import build_peft_model, extract_adapter

    torch.manual_seed(seed)
    model, _ = build_peft_model(str(model_dir), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return extract_adapter(model)


def bench_generation(requests: int, n: int, max_tokens: int, config: str, publishes: int = 5) -> dict[str, Any]:
    """The same requests direct into an engine, then through the service (never both at once)."""
    import ray

    from polyray.config import load_config
    from polyray.generation.api import GenerationServiceConfig
    from polyray.generation.bench import BenchRequest, bench_direct, bench_endpoint, publish_to_latest
    from polyray.generation.service import deploy_generation
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
        cfg = GenerationServiceConfig(model_dir=str(model_dir), max_model_len=run.rollout.max_model_len,
                                      max_lora_rank=run.rollout.max_lora_rank, store_root=str(Path(tmp) / "store"),
                                      num_cpus=1, max_num_seqs=64)  # fmt: skip
        with console.status(f"direct engine: {requests} requests, 1 then 16 at a time"):
            results["direct"] = bench_direct(cfg, batch, [1, 16], str(Path(tmp) / "policy-v1"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            store = open_store(Path(tmp) / "store")
            ray.get(store.put.remote(1, adapter, "bench", 1))
            with console.status("starting the generation service"):
                url = deploy_generation(cfg.model_dump(), port=_free_port())
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
    results["ratio"] = {str(e["concurrency"]): e["tokens_per_s"] / d["tokens_per_s"]
                        for d, e in zip(results["direct"], results["endpoint"])}  # fmt: skip
    return results


def print_generation(results: dict[str, Any]) -> None:
    table = Table(title=f"generation service vs direct engine ({results['requests']} requests, n={results['n']},"
                        f" max_tokens={results['max_tokens']}, 2 shared cores)")  # fmt: skip
    for col in ("clients", "direct tok/s", "endpoint tok/s", "endpoint / direct"):
        table.add_column(col, justify="right")
    for d, e in zip(results["direct"], results["endpoint"]):
        table.add_row(str(d["concurrency"]), f"{d['tokens_per_s']:.0f}", f"{e['tokens_per_s']:.0f}",
                      f"{e['tokens_per_s'] / d['tokens_per_s']:.2f}")
    console.print(table)
    p = results["publish_to_latest"]
    console.print(f"publish -> latest serving it: median {p['median_s']:.3f} s, max {p['max_s']:.3f} s"
                  f" over {p['publishes']} publishes")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("polychromic", help="polychromic SFT step time / SFT step time")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--diversity", nargs="+", default=["semantic", "countdown_expr"])
    p.add_argument("--json", default=None, help="Also write the figures here.")
    r = sub.add_parser("reward", help="reward service throughput and latency")
    r.add_argument("--requests", type=int, default=300, help="Requests per (reward, concurrency) cell.")
    r.add_argument("--max-seconds", type=float, default=20.0, help="Time cap per cell.")
    r.add_argument("--json", default=None)
    g = sub.add_parser("generation", help="generation service tokens/s vs a direct engine; publish -> latest")
    g.add_argument("--requests", type=int, default=64, help="Requests per cell.")
    g.add_argument("--n", type=int, default=4, help="Completions per request.")
    g.add_argument("--max-tokens", type=int, default=32)
    g.add_argument("--publishes", type=int, default=5)
    g.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    g.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.which == "polychromic":
        results = bench_polychromic(args.steps, args.config, args.diversity)
        print_polychromic(results)
    elif args.which == "generation":
        results = bench_generation(args.requests, args.n, args.max_tokens, args.config, args.publishes)
        print_generation(results)
    else:
        results = bench_reward(args.requests, args.max_seconds)
        print_reward(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
