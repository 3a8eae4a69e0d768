"""``polyray bench rollout``: the part that runs the measurements of :mod:`.rollout` one at a time, their
ratios and their table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.drivers.bench.common import _grpo_batch, _random_adapter, console

# results key -> its row in print_rollout
ROLLOUT_ENGINES = {
    "raw_llm": "bare vllm.LLM (own process, no Ray)",
    "raw_llm_vllm_lora_ops": "bare vllm.LLM, vLLM's own CPU LoRA ops",
    "transformers": "transformers generate",
    "pool_1": "RolloutPool, 1 worker",
    "pool_2": "RolloutPool, 2 workers",
}


def bench_rollout(
    config: str, prompts: int | None = None, repeats: int = 5, syncs: int = 5, vllm_lora_ops: bool = True
) -> dict[str, Any]:
    """Tokens/s of one GRPO-shaped batch through a bare engine (also with vLLM's own CPU LoRA ops when
    ``vllm_lora_ops``), transformers, the pool (1 and 2 workers); adapter sync vs full-weights reload. One
    thing runs at a time."""
    import ray

    from polyray.config import load_config
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.store import write_adapter_dir

    run = load_config(config)
    model_dir = str(prepare_model_dir(run.model, run.task))
    batch = _grpo_batch(run, prompts)
    results: dict[str, Any] = {"prompts": len(batch.prompts), "n": batch.n, "max_tokens": batch.sampling.max_tokens}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="polyray-bench-rollout-") as tmp:
            # the policy every engine samples
            adapter = _random_adapter(model_dir, run.learner.lora, seed=1)
            adapter_dir = str(Path(tmp) / "policy-v1")
            write_adapter_dir(Path(adapter_dir), adapter)
            _bare_engines(run, model_dir, batch, adapter_dir, repeats, vllm_lora_ops, results)
            for workers in (1, 2):
                _pool(run, model_dir, batch, adapter, tmp, workers, repeats, syncs, results)
    finally:
        ray.shutdown()
    results["ratios"] = rollout_ratios(results)
    return results


def _bare_engines(
    run, model_dir: str, batch, adapter_dir: str, repeats: int, vllm_lora_ops: bool, results: dict[str, Any]
) -> None:
    """Into ``results``: the bare engine (and its detokenizer ways), vLLM's own LoRA ops, transformers."""
    from polyray.drivers.bench import rollout as bench

    one = run.rollout.model_copy(update={"num_workers": 1})
    with console.status(
        f"bare vllm.LLM: {len(batch.prompts)} prompts x {batch.n}; then token ids and one"
        " decode against vLLM's detokenizer, on the same engine"
    ):
        results["raw_llm"] = bench.raw_llm_throughput(
            model_dir, one, run.model.dtype, batch, adapter_dir, repeats, detokenizer=True
        )
        results["detokenizer"] = results["raw_llm"].pop("detokenizer")
    # a reference only: the same harness as raw_llm, polyray's plugin off
    if vllm_lora_ops:
        with console.status("bare vllm.LLM with vLLM's own CPU LoRA ops"):
            results["raw_llm_vllm_lora_ops"] = bench.raw_llm_throughput(
                model_dir, one, run.model.dtype, batch, adapter_dir, repeats, polyray_plugin=False
            )
    with console.status("transformers generate"):
        results["transformers"] = bench.hf_throughput(
            model_dir, run.model.dtype, batch, adapter_dir, one.threads, repeats
        )


def _pool(
    run,
    model_dir: str,
    batch,
    adapter: dict[str, Any],
    tmp: str,
    workers: int,
    repeats: int,
    syncs: int,
    results: dict[str, Any],
) -> None:
    """Into ``results``: a pool of ``workers`` workers' tokens/s; with one worker, also the weight syncs."""
    from polyray.drivers.bench import rollout as bench
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    cfg = run.rollout.model_copy(update={"num_workers": workers})
    with console.status(f"RolloutPool, {workers} worker(s): starting"):
        pool = RolloutPool.launch(
            model_dir, cfg, run.model.dtype, run.seed, store=open_store(Path(tmp) / f"store{workers}")
        )
    try:
        pool.publish(1, adapter)
        with console.status(f"RolloutPool, {workers} worker(s): generating"):
            results[f"pool_{workers}"] = bench.pool_throughput(pool, batch, 1, repeats)
        if workers == 1:
            _syncs(run, model_dir, pool, tmp, syncs, results)
    finally:
        pool.shutdown()


def _syncs(run, model_dir: str, pool, tmp: str, syncs: int, results: dict[str, Any]) -> None:
    """Into ``results``: the adapter sync, its floor (copy + write of its bytes), the full-weights reload."""
    from polyray.drivers.bench import rollout as bench
    from polyray.learner.lora import build_peft_model, extract_adapter

    model, _ = build_peft_model(model_dir, run.learner.lora, run.model.dtype)
    with console.status(f"adapter sync x {syncs}"):
        results["adapter_sync"] = bench.adapter_sync_latency(pool, model, extract_adapter, syncs)
    with console.status("the floor: the adapter's bytes copied once and written once"):
        results["sync_floor"] = bench.sync_floor(extract_adapter(model), tmp, syncs)
    with console.status(f"full-weights reload x {syncs}"):
        results["full_reload"] = bench.full_reload_latency(pool, model, syncs)


def rollout_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The rollout part's ratios of its measured ``results``; polyray's CPU LoRA ops / vLLM's only when vLLM's
    ran (``--vllm-lora-ops``)."""
    tps = {k: results[k]["tokens_per_s"] for k in ROLLOUT_ENGINES if k in results}
    ratios = {
        "pool_vs_raw_llm": tps["pool_1"] / tps["raw_llm"],
        "ids_then_decode_vs_vllm_detokenizer": (
            results["detokenizer"]["ids_then_decode"]["tokens_per_s"]
            / results["detokenizer"]["vllm_detokenizer"]["tokens_per_s"]
        ),
        "vllm_vs_transformers": tps["raw_llm"] / tps["transformers"],
        "adapter_sync_vs_full_reload": results["adapter_sync"]["median_ms"] / results["full_reload"]["median_ms"],
        "adapter_publish_vs_floor": results["adapter_sync"]["load_median_ms"] / results["sync_floor"]["floor_ms"],
        "two_vs_one_worker": tps["pool_2"] / tps["pool_1"],
    }
    if "raw_llm_vllm_lora_ops" in tps:
        ratios["cpu_lora_plugin_vs_vllm_ops"] = tps["raw_llm"] / tps["raw_llm_vllm_lora_ops"]
    return ratios


def print_rollout(results: dict[str, Any]) -> None:
    table = Table(
        title=f"rollouts: {results['prompts']} prompts x n={results['n']}, max_tokens={results['max_tokens']}"
        " (the GRPO step's batch), completion tokens/s"
    )
    for col in ("engine", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for key, name in ROLLOUT_ENGINES.items():
        # (vLLM's own LoRA ops: left out with --no-vllm-lora-ops)
        if key not in results:
            continue
        r = results[key]
        table.add_row(name, str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}")
    console.print(table)
    d = results["detokenizer"]
    console.print(
        f"bare vllm.LLM, token ids then one decode (the rollout workers): {d['ids_then_decode']['tokens_per_s']:.0f}"
        f" tokens/s; with vLLM's detokenizer: {d['vllm_detokenizer']['tokens_per_s']:.0f} tokens/s"
        f" ({results['ratios']['ids_then_decode_vs_vllm_detokenizer']:.2f}x)"
    )
    a, f = results["adapter_sync"], results["full_reload"]
    console.print(
        f"weights -> generating on every worker (medians of {a['syncs']}): adapter {a['median_ms']:.0f} ms"
        f" (publish {a['load_median_ms']:.0f} + first use {a['first_use_median_ms']:.0f}), full-weights reload"
        f" {f['median_ms']:.0f} ms (merge, write, reload {f['load_median_ms']:.0f} + first use"
        f" {f['first_use_median_ms']:.0f})"
    )
    fl = results["sync_floor"]
    mib = fl["bytes"] / 2**20
    console.print(
        f"adapter publish against the bytes moved ({mib:.2f} MiB): {mib / (a['load_median_ms'] / 1000):.0f} MiB/s;"
        f" floor in this run: copy {fl['memcpy_ms']:.2f} ms ({fl['memcpy_bytes_per_s'] / 2**20:.0f} MiB/s) + write"
        f" {fl['write_ms']:.2f} ms ({fl['write_bytes_per_s'] / 2**20:.0f} MiB/s) = {fl['floor_ms']:.2f} ms;"
        f" publish / floor {a['load_median_ms'] / fl['floor_ms']:.1f}"
    )
