"""Benchmarks, each printed as figures measured side by side in one run (never asserted in tests).

The commands are ``polyray bench <part>`` (``python -m jobs.benchmark <part>`` as a Ray job):

``polyray bench all [--json out.json]``
    every part below at its default size (generation, learner, peer and chaos only when named in ``--parts``), then
    one summary table of ratios against their goals.
``polyray bench rollout [--no-vllm-lora-ops]``
    RolloutPool / a bare ``vllm.LLM`` and vLLM / transformers ``generate`` tokens/s on the same
    multi-candidate batch (and polyray's CPU LoRA ops / vLLM's own, unless left out); the adapter sync
    (learner weights -> generating on every worker) against a full-weights reload; 1 -> 2 rollout workers.
``polyray bench grpo [--steps 12] [--modes sync --modes async ...]``
    GRPO step time with rollouts one step ahead / synchronous, 1 rollout worker + 1 learner worker; and one
    step ahead against its variants (each publish waited for, samples one a row, the KL reference scored by
    the rollout worker). Each mode is a fit of its own; ``--modes`` runs some of them, and only the ratios
    whose modes ran.

``polyray bench polychromic [--steps 30] [--no-canary]``
    polychromic SFT step time / standard SFT step time on the embedded default (same model,
    batch, learner and rollout pool), with where the polychromic step's time goes (and the sync canary's
    cost on every step, unless left out).
``polyray bench reward``
    the reward service: requests/s and p50/p99 latency on loopback for 1 and 32 clients,
    and the batched / unbatched throughput of the engagement model.
``polyray bench learner [--sizes 8 --sizes 16 ...] [--device cuda --dtype bfloat16]``
    peak memory (resident, or the GPU's) and tokens/s of one GRPO learner step at each size, micro-batched
    with chunked logits against the whole-batch, whole-logits path, each in a fresh process, beside the
    memory plan's estimate (:mod:`.learner`).
``polyray bench peer [--seeds 3] [--set phases.1.steps=20 ...]``
    polyray against TRL (``SFTTrainer``, ``GRPOTrainer``) on one config's model, task, reward and settings:
    step times, tokens/s, end to end, test pass@k with polyray's evaluator, paired over seeds; then
    vLLM / transformers tokens/s and learner tokens/s on a model of Qwen3-0.6B's width (:mod:`.peer`).
``polyray bench generation [--requests 64]``
    the generation service: output tokens/s through its HTTP API / the same requests straight into
    a vLLM engine with the same settings, at 1 and 16 concurrent clients; and the time from a
    version's publish to ``latest`` serving it.
``polyray bench chaos [--clients 16 --seconds 30 --kill-at 10]``
    each service on loopback under a fixed load, then the same load with its replica SIGKILLed: p50/p99,
    requests/s, back-pressure apart from errors, the time until it answers again, the learner's retrying
    reward calls lost, and what outlived the replica (processes, directories) (:mod:`.chaos`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polyray.http import free_port
from polyray.io import read_log_jsonl

console = Console(width=140)


def _step_stats(metrics_path: Path, phase: str | list[str], warmup: int) -> dict[str, float]:
    """Medians over the steps of ``phase`` (or of several phases pooled), each phase's first ``warmup`` dropped."""
    phases = [phase] if isinstance(phase, str) else phase
    logged = list(read_log_jsonl(metrics_path))
    rows = [r for p in phases for r in [r for r in logged if r["phase"] == p][warmup:]]
    out = {"steps": len(rows), "step_s": statistics.median(r["step_s"] for r in rows)}
    for key in ("rollout_s", "reward_s", "diversity_s", "sync_s"):
        if key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
    if any("canary_s" in r for r in rows):  # per step: 0 in a step that ran no canary (e.g. SFT's one, at its end)
        out["canary_s"] = statistics.median(r.get("canary_s", 0.0) for r in rows)
    return out


def _grpo_batch(run, prompts: int | None = None):
    """The batch one GRPO step of ``run`` generates: its first GRPO phase's prompts per step (or
    ``prompts``), group size and sampling."""
    from polyray.drivers.bench.rollout import RolloutBatch
    from polyray.rollout.sampling import request_seeds, task_sampling
    from polyray.tasks import build_task

    task = build_task(run.task)
    grpo = next(p for p in run.phases if p.type == "grpo")
    texts = [p.text for p in task.prompts("train", prompts or grpo.prompts_per_step)]
    return RolloutBatch(texts, grpo.group_size, task_sampling(grpo.sampling, task),
                        request_seeds(run.seed, "bench", [str(i) for i in range(len(texts))]))  # fmt: skip


# results key -> its row in print_rollout
ROLLOUT_ENGINES = {"raw_llm": "bare vllm.LLM (own process, no Ray)",
                   "raw_llm_vllm_lora_ops": "bare vllm.LLM, vLLM's own CPU LoRA ops",
                   "transformers": "transformers generate", "pool_1": "RolloutPool, 1 worker",
                   "pool_2": "RolloutPool, 2 workers"}  # fmt: skip


def bench_rollout(
    config: str, prompts: int | None = None, repeats: int = 5, syncs: int = 5, vllm_lora_ops: bool = True
) -> dict[str, Any]:
    """Tokens/s of one GRPO-shaped batch through a bare engine (also with vLLM's own CPU LoRA ops when
    ``vllm_lora_ops``), transformers, the pool (1 and 2 workers); adapter sync vs full-weights reload. One
    thing runs at a time."""
    import ray

    from polyray.config import load_config
    from polyray.drivers.bench import rollout as bench
    from polyray.learner.lora import build_peft_model, extract_adapter
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store, write_adapter_dir

    run = load_config(config)
    model_dir = str(prepare_model_dir(run.model, run.task))
    batch = _grpo_batch(run, prompts)
    one = run.rollout.model_copy(update={"num_workers": 1})
    results: dict[str, Any] = {"prompts": len(batch.prompts), "n": batch.n, "max_tokens": batch.sampling.max_tokens}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="polyray-bench-rollout-") as tmp:
            adapter = _random_adapter(model_dir, run.learner.lora, seed=1)  # the policy every engine samples
            adapter_dir = str(Path(tmp) / "policy-v1")
            write_adapter_dir(Path(adapter_dir), adapter)
            with console.status(f"bare vllm.LLM: {len(batch.prompts)} prompts x {batch.n}; then token ids and one"
                                " decode against vLLM's detokenizer, on the same engine"):
                results["raw_llm"] = bench.raw_llm_throughput(model_dir, one, run.model.dtype, batch, adapter_dir, repeats,
                                                              detokenizer=True)  # fmt: skip
                results["detokenizer"] = results["raw_llm"].pop("detokenizer")
            if vllm_lora_ops:  # a reference only: the same harness as raw_llm, polyray's plugin off
                with console.status("bare vllm.LLM with vLLM's own CPU LoRA ops"):
                    results["raw_llm_vllm_lora_ops"] = bench.raw_llm_throughput(
                        model_dir, one, run.model.dtype, batch, adapter_dir, repeats, polyray_plugin=False
                    )
            with console.status("transformers generate"):
                results["transformers"] = bench.hf_throughput(model_dir, run.model.dtype, batch, adapter_dir, one.threads,
                                                              repeats)  # fmt: skip
            for workers in (1, 2):
                cfg = run.rollout.model_copy(update={"num_workers": workers})
                with console.status(f"RolloutPool, {workers} worker(s): starting"):
                    pool = RolloutPool.launch(model_dir, cfg, run.model.dtype, run.seed,
                                              store=open_store(Path(tmp) / f"store{workers}"))  # fmt: skip
                try:
                    pool.publish(1, adapter)
                    with console.status(f"RolloutPool, {workers} worker(s): generating"):
                        results[f"pool_{workers}"] = bench.pool_throughput(pool, batch, 1, repeats)
                    if workers == 1:
                        model, _ = build_peft_model(model_dir, run.learner.lora, run.model.dtype)
                        with console.status(f"adapter sync x {syncs}"):
                            results["adapter_sync"] = bench.adapter_sync_latency(pool, model, extract_adapter, syncs)
                        with console.status("the floor: the adapter's bytes copied once and written once"):
                            results["sync_floor"] = bench.sync_floor(extract_adapter(model), tmp, syncs)
                        with console.status(f"full-weights reload x {syncs}"):
                            results["full_reload"] = bench.full_reload_latency(pool, model, syncs)
                finally:
                    pool.shutdown()
    finally:
        ray.shutdown()
    results["ratios"] = rollout_ratios(results)
    return results


def rollout_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The rollout part's ratios of its measured ``results``; polyray's CPU LoRA ops / vLLM's only when vLLM's
    ran (``--vllm-lora-ops``)."""
    tps = {k: results[k]["tokens_per_s"] for k in ROLLOUT_ENGINES if k in results}
    ratios = {
        "pool_vs_raw_llm": tps["pool_1"] / tps["raw_llm"],
        "ids_then_decode_vs_vllm_detokenizer": (results["detokenizer"]["ids_then_decode"]["tokens_per_s"]
                                                / results["detokenizer"]["vllm_detokenizer"]["tokens_per_s"]),
        "vllm_vs_transformers": tps["raw_llm"] / tps["transformers"],
        "adapter_sync_vs_full_reload": results["adapter_sync"]["median_ms"] / results["full_reload"]["median_ms"],
        "adapter_publish_vs_floor": results["adapter_sync"]["load_median_ms"] / results["sync_floor"]["floor_ms"],
        "two_vs_one_worker": tps["pool_2"] / tps["pool_1"],
    }
    if "raw_llm_vllm_lora_ops" in tps:
        ratios["cpu_lora_plugin_vs_vllm_ops"] = tps["raw_llm"] / tps["raw_llm_vllm_lora_ops"]
    return ratios


def print_rollout(results: dict[str, Any]) -> None:
    table = Table(title=f"rollouts: {results['prompts']} prompts x n={results['n']}, max_tokens={results['max_tokens']}"
                        " (the GRPO step's batch), completion tokens/s")  # fmt: skip
    for col in ("engine", "tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for key, name in ROLLOUT_ENGINES.items():
        if key not in results:  # (vLLM's own LoRA ops: left out with --no-vllm-lora-ops)
            continue
        r = results[key]
        table.add_row(name, str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}")
    console.print(table)
    d = results["detokenizer"]
    console.print(f"bare vllm.LLM, token ids then one decode (the rollout workers): {d['ids_then_decode']['tokens_per_s']:.0f}"
                  f" tokens/s; with vLLM's detokenizer: {d['vllm_detokenizer']['tokens_per_s']:.0f} tokens/s"
                  f" ({results['ratios']['ids_then_decode_vs_vllm_detokenizer']:.2f}x)")
    a, f = results["adapter_sync"], results["full_reload"]
    console.print(f"weights -> generating on every worker (medians of {a['syncs']}): adapter {a['median_ms']:.0f} ms"
                  f" (publish {a['load_median_ms']:.0f} + first use {a['first_use_median_ms']:.0f}), full-weights reload"
                  f" {f['median_ms']:.0f} ms (merge, write, reload {f['load_median_ms']:.0f} + first use"
                  f" {f['first_use_median_ms']:.0f})")
    fl = results["sync_floor"]
    mib = fl["bytes"] / 2**20
    console.print(f"adapter publish against the bytes moved ({mib:.2f} MiB): {mib / (a['load_median_ms'] / 1000):.0f} MiB/s;"
                  f" floor in this run: copy {fl['memcpy_ms']:.2f} ms ({fl['memcpy_bytes_per_s'] / 2**20:.0f} MiB/s) + write"
                  f" {fl['write_ms']:.2f} ms ({fl['write_bytes_per_s'] / 2**20:.0f} MiB/s) = {fl['floor_ms']:.2f} ms;"
                  f" publish / floor {a['load_median_ms'] / fl['floor_ms']:.1f}")  # fmt: skip


GRPO_MODES = ("sync", "async", "async_waits", "async_unpacked", "async_rollout_reference")
# ratio -> (numerator mode, denominator mode), of the modes' median step times
GRPO_RATIOS = {"ratio": ("async", "sync"), "publish_behind_vs_waits": ("async", "async_waits"),
               "packed_vs_unpacked": ("async", "async_unpacked"),
               "rollout_reference_vs_learner": ("async_rollout_reference", "async")}  # fmt: skip


def bench_grpo(
    steps: int, config: str, warmup: int = 2, rounds: int = 2, modes: list[str] | None = None
) -> dict[str, Any]:
    """The config's first GRPO phase, ``steps`` steps in each of ``modes`` (default: all of
    :data:`GRPO_MODES`; synchronous, rollouts one step ahead, and one ahead with each publish waited for,
    samples one a row, the KL reference scored by the rollout worker; the last only when the phase has a
    KL term), ``rounds`` times alternating (a slow spell of this shared machine then hits every mode),
    continuing one adapter, on 1 rollout worker + 1 learner worker (a core each here); rewards scored
    in the learner (no reward replica competing for the cores). Medians over the pooled steps, then the
    ratios whose modes ran (:func:`grpo_ratios`)."""
    from polyray.cluster import init_ray, needed_cpus
    from polyray.config import load_config
    from polyray.learner.logs import StepLogs
    from polyray.learner.trainer import run_phase
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    base = load_config(config)
    index = next(i for i, p in enumerate(base.phases) if p.type == "grpo")
    common = ["learner.num_workers=1", "rollout.num_workers=1", "reward.endpoint=false", "dynamics.every=0",
              f"phases.{index}.steps={steps}", f"phases.{index}.checkpoint_every=1000", "learner.sync_check_every=0"]
    variants = grpo_variants(index, bool(base.phases[index].kl_beta), modes)
    sync = load_config(config, common)
    model_dir = prepare_model_dir(sync.model, sync.task)
    init_ray(sync.cluster, needed_cpus(sync))
    results: dict[str, Any] = {"steps": steps, "warmup": warmup, "rounds": rounds, "modes": list(variants)}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-grpo-") as tmp:
        out = Path(tmp)
        pool = RolloutPool.launch(str(model_dir), sync.rollout, sync.model.dtype, store=open_store(out / "adapter_store"))
        logs = StepLogs.on_driver_node(out)  # one step-log actor for every fit, as `polyray run` holds one
        try:
            version = 0
            for i in range(rounds):
                for name, extra in variants.items():
                    run = load_config(config, [*common, *extra, f"phases.{index}.name=grpo_{name}_{i}"])
                    with console.status(f"GRPO {name}, {steps} steps (round {i + 1} of {rounds})"):
                        version = run_phase(run, index, str(model_dir), out, pool, version, None, logs=logs)["version"]
            for name in variants:
                results[name] = _step_stats(out / "metrics.jsonl", [f"grpo_{name}_{i}" for i in range(rounds)], warmup)
        finally:
            logs.close()
            pool.shutdown()
    return {**results, **grpo_ratios(results)}


def grpo_variants(index: int, kl: bool, modes: list[str] | None = None) -> dict[str, list[str]]:
    """mode -> the overrides of GRPO phase ``index`` that make it, for each of ``modes`` in the order of
    :data:`GRPO_MODES` (None: all of them; the KL reference's mode only when the phase has a KL term, ``kl``)."""
    from polyray.io import ConfigError

    ahead = [f"phases.{index}.async_rollouts=true", f"phases.{index}.max_lag=1"]
    variants = {"sync": [f"phases.{index}.async_rollouts=false", f"phases.{index}.max_lag=0"], "async": ahead,
                "async_waits": [*ahead, "learner.publish_behind_step=false"],  # each publish waits for the loads
                "async_unpacked": [*ahead, "learner.pack_samples=false"],  # one sample a row in the update
                "async_rollout_reference": [*ahead, f"phases.{index}.kl_reference_logprobs=rollouts"]}
    unknown = [m for m in modes or [] if m not in variants]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {unknown[0]!r} (choose from {', '.join(GRPO_MODES)})")
    if not kl:  # no KL term: nothing to score under a reference
        if modes and "async_rollout_reference" in modes:
            raise ConfigError(f"--modes async_rollout_reference: phases.{index}.kl_beta is 0, no KL reference to score")
        variants.pop("async_rollout_reference")
    return {name: extra for name, extra in variants.items() if not modes or name in modes}


def grpo_ratios(modes: dict[str, Any]) -> dict[str, Any]:
    """The ratios of :data:`GRPO_RATIOS` whose two modes are in ``modes`` (mode -> its step statistics), and,
    when the synchronous mode ran, the floor of one step ahead (:func:`grpo_floor`) and, when that ran too,
    one step ahead against it."""
    out: dict[str, Any] = {name: modes[a]["step_s"] / modes[b]["step_s"] for name, (a, b) in GRPO_RATIOS.items()
                           if a in modes and b in modes}  # fmt: skip
    if "sync" in modes:
        out["floor"] = grpo_floor(modes["sync"])
        if "async" in modes:
            out["async_vs_floor"] = modes["async"]["step_s"] / out["floor"]["floor_s"]
    return out


def grpo_floor(sync: dict[str, float]) -> dict[str, float]:
    """The shortest step rollouts one step ahead can reach, from the synchronous steps of the same run:
    ahead, the generation and its scoring (rollout s + reward s) overlap everything else (advantages,
    update, publish: step s − both), so a step is at least the longer of the two."""
    rollout = sync["rollout_s"] + sync.get("reward_s", 0.0)
    rest = sync["step_s"] - rollout
    return {"rollout_s": rollout, "update_publish_s": rest, "floor_s": max(rollout, rest)}


def print_grpo(results: dict[str, Any]) -> None:
    table = Table(title=f"GRPO step, 1 rollout worker + 1 learner worker: median step time after warm-up"
                        f" ({results['rounds']} rounds of {results['steps']} steps per mode, alternating)")
    table.caption = ("rollout s / reward s = the generation / its scoring the step waits for (ahead: what is left of them);"
                     " sync s = publish + load")
    for col in ("mode", "step s", "rollout s", "reward s", "sync s", "rest s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    labels = {"sync": "sync", "async": "one step ahead", "async_waits": "one ahead, each publish waits for its loads",
              "async_unpacked": "one ahead, one sample a row in the update (learner.pack_samples false)",
              "async_rollout_reference": "one ahead, KL reference scored by the rollout worker"}
    for name, label in labels.items():
        if name not in results:  # (a run before the third mode)
            continue
        r = results[name]
        waits = [r["rollout_s"], r.get("reward_s", 0.0), r["sync_s"]]
        table.add_row(label, f"{r['step_s']:.3f}", *(f"{w:.3f}" for w in waits), f"{r['step_s'] - sum(waits):.3f}")
    console.print(table)
    if "ratio" in results:
        console.print(f"one step ahead / synchronous: {results['ratio']:.2f}")
    if "publish_behind_vs_waits" in results:
        console.print(f"one step ahead, publish behind the step / each publish waiting: {results['publish_behind_vs_waits']:.2f}")
    if "packed_vs_unpacked" in results:
        console.print(f"one step ahead, samples packed into shared rows / one sample a row: {results['packed_vs_unpacked']:.2f}")
    if "rollout_reference_vs_learner" in results:
        console.print(f"one step ahead, KL reference scored by the rollout worker / by the learner:"
                      f" {results['rollout_reference_vs_learner']:.2f}")  # fmt: skip
    if "async_vs_floor" in results:
        f = results["floor"]
        console.print(f"one step ahead / its floor max(rollout + reward {f['rollout_s']:.3f}, update + publish"
                      f" {f['update_publish_s']:.3f}) = {results['async_vs_floor']:.2f}")  # fmt: skip


def bench_polychromic(
    steps: int, config: str, diversity: list[str], warmup: int = 3, with_async: bool = True, with_canary: bool = True,
    with_floor: bool = True,
) -> dict[str, dict[str, float]]:
    """Run SFT (and its floor, SFT on as many sequences as a polychromic step, when ``with_floor``), then
    polychromic SFT (per diversity function, with rollouts one step ahead when ``with_async``, with the sync
    canary on every step when ``with_canary``) for ``steps`` steps each from a fresh adapter,
    on one pool of 1 rollout worker + 1 learner worker (a core each here, as in :func:`bench_grpo`: the
    floor hides the sampling behind the update, which needs a core for the sampler)."""
    from polyray.cluster import init_ray, needed_cpus
    from polyray.config import load_config
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS
    from polyray.learner.logs import StepLogs
    from polyray.learner.trainer import run_phase
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    phases = [f"phases.0.steps={steps}", "phases.0.checkpoint_every=1000", "learner.num_workers=1", "rollout.num_workers=1"]
    sft = load_config(config, phases)
    model_dir = prepare_model_dir(sft.model, sft.task)
    init_ray(sft.cluster, needed_cpus(sft))
    results = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-") as tmp:
        out = Path(tmp)
        pool = RolloutPool.launch(str(model_dir), sft.rollout, sft.model.dtype, store=open_store(out / "adapter_store"))
        logs = StepLogs.on_driver_node(out)  # one step-log actor for every fit
        try:
            with console.status(f"standard SFT, {steps} steps"):
                version = run_phase(sft, 0, str(model_dir), out, pool, 0, None, logs=logs)["version"]
            results["sft"] = _step_stats(out / "metrics.jsonl", "sft", warmup)
            # the floor: an SFT step through as many sequences as a polychromic step trains on (references +
            # samples), its sampling hidden behind the update (rollouts one step ahead)
            poly0 = load_config(config, [*phases, "phases.0.type=polychromic_sft"]).phases[0]
            same = poly0.batch_size + poly0.prompts_per_step * poly0.n_samples
            if with_floor:
                with console.status(f"standard SFT on {same} sequences (references + samples), {steps} steps"):
                    big = load_config(config, [*phases, f"phases.0.batch_size={same}", "phases.0.name=sft_same"])
                    version = run_phase(big, 0, str(model_dir), out, pool, version, None, logs=logs)["version"]
                results[floor_label(same)] = _step_stats(out / "metrics.jsonl", "sft_same", warmup)
            variants = [(name, []) for name in diversity]
            if with_async:
                ahead = ["phases.0.async_rollouts=true", "phases.0.max_lag=1"]
                variants.append((diversity[0], ahead))
                variants.append((diversity[0], [*ahead, "learner.publish_behind_step=false"]))
                if diversity[0] in EMBEDDING_DIVERSITY_FUNCTIONS:
                    variants.append((diversity[0], [*ahead, "phases.0.embedding_dtype=float32"]))
            if with_canary:  # the sync canary on every publish (default: every 50th): its cost per check
                variants.append((diversity[0], ["learner.sync_check_every=1"]))
            for i, (name, extra) in enumerate(variants):
                tag = {"phases.0.async_rollouts=true": ", async", "learner.sync_check_every=1": ", canary every step",
                       "learner.publish_behind_step=false": ", publish waits", "phases.0.embedding_dtype=float32": ", float32 encoder"}
                label = f"polychromic_sft[{name}{''.join(tag.get(e, '') for e in extra)}]"
                poly = load_config(config, [*phases, "phases.0.type=polychromic_sft", f"phases.0.name=poly{i}",
                                            f"phases.0.diversity={name}", *extra])
                with console.status(f"{label}, {steps} steps"):
                    version = run_phase(poly, 0, str(model_dir), out, pool, version, None, logs=logs)["version"]
                results[label] = _step_stats(out / "metrics.jsonl", f"poly{i}", warmup)
        finally:
            logs.close()
            pool.shutdown()
    return results


def floor_label(sequences: int) -> str:
    return f"sft[{sequences} sequences: references + samples]"


def polychromic_floor(results: dict[str, dict[str, float]], variant: str = ", async]") -> tuple[str, float] | None:
    """(variant, its step / the floor's): the polychromic variant whose name ends with ``variant`` (default:
    one step ahead; else the first) against the SFT step on as many sequences."""
    floor = next((k for k in results if k.startswith("sft[")), None)
    poly = [k for k in results if k.startswith("polychromic_sft[")]
    if floor is None or not poly:
        return None
    name = next((k for k in poly if k.endswith(variant)), poly[0])
    return name, results[name]["step_s"] / results[floor]["step_s"]


def polychromic_floors(results: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """:func:`polychromic_floor` of the one-step-ahead variant (its encoder's dtype ``auto``) and, when it ran,
    of the one with the float32 encoder."""
    floors = [polychromic_floor(results)]
    if any(k.endswith(", async, float32 encoder]") for k in results):
        floors.append(polychromic_floor(results, ", async, float32 encoder]"))
    return [f for f in floors if f is not None]


def print_polychromic(results: dict[str, dict[str, float]]) -> None:
    base = results["sft"]["step_s"]
    table = Table(title="polychromic SFT vs standard SFT, 1 rollout worker + 1 learner worker: median step time after warm-up")
    table.caption = ("rollout s = generation the step waits for; canary s = the sync check after publishing;"
                     " update s = the rest (forward/backward, optimizer, broadcast)")
    for col in ("phase", "step s", "÷ SFT", "rollout s", "diversity s", "sync s", "canary s", "update s"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for name, r in results.items():
        parts = [r.get(k, 0.0) for k in ("rollout_s", "diversity_s", "sync_s")]
        canary = r.get("canary_s", 0.0)
        table.add_row(escape(name), f"{r['step_s']:.3f}", f"{r['step_s'] / base:.2f}x", *(f"{v:.3f}" for v in parts),
                      f"{canary:.3f}" if "canary_s" in r else "–", f"{r['step_s'] - sum(parts) - canary:.3f}")
    console.print(table)
    for name, ratio in polychromic_floors(results):
        console.print(f"{escape(name)} / its floor (SFT on as many sequences, sampling hidden): {ratio:.2f}")


def bench_reward(n_requests: int = 300, max_seconds: float = 20.0) -> dict[str, Any]:
    """Serve the reward app on loopback (with an engagement model trained on the test fixture) and measure it."""
    import httpx
    import ray
    from ray import serve

    from polyray.drivers.bench.engagement_data import write_engagement_jsonl
    from polyray.drivers.bench.reward import bench_engagement_batching, bench_reward_http
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
    from polyray.config.services import GenerationServiceConfig
    from polyray.drivers.bench.generation import BenchRequest, bench_direct, bench_endpoint, publish_to_latest
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


def summary_rows(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(measure, ratio, goal) for each ratio ``results`` holds (parts that ran)."""
    rows = []
    if "rollout" in results:
        r = results["rollout"]["ratios"]
        rows.append(("RolloutPool / bare vllm.LLM tokens/s", r["pool_vs_raw_llm"], ">= 0.95"))
        if "cpu_lora_plugin_vs_vllm_ops" in r:  # (left out with --no-vllm-lora-ops)
            rows.append(("polyray's CPU LoRA ops / vLLM's, tokens/s", r["cpu_lora_plugin_vs_vllm_ops"], "-"))
        rows += [("token ids + one decode / vLLM's detokenizer, tokens/s", r["ids_then_decode_vs_vllm_detokenizer"], "-"),
                 ("vLLM / transformers generate tokens/s", r["vllm_vs_transformers"], ">= 2"),
                 ("adapter sync / full-weights reload (ms)", r["adapter_sync_vs_full_reload"], "< 1"),
                 ("adapter publish / copy + write of its bytes (ms)", r["adapter_publish_vs_floor"], "-"),
                 ("2 / 1 rollout workers tokens/s", r["two_vs_one_worker"], "-")]  # fmt: skip
    if "grpo" in results:  # the ratios whose modes ran
        if "ratio" in results["grpo"]:
            rows.append(("GRPO step, one ahead / synchronous", results["grpo"]["ratio"], "<= 0.65"))
        if "async_vs_floor" in results["grpo"]:
            rows.append(("GRPO step, one ahead / max(rollout + reward, update + publish)",
                         results["grpo"]["async_vs_floor"], "<= 1.1"))  # fmt: skip
        if "publish_behind_vs_waits" in results["grpo"]:
            rows.append(("GRPO step, one ahead: publish behind the step / waited for", results["grpo"]["publish_behind_vs_waits"], "-"))
        if "packed_vs_unpacked" in results["grpo"]:
            rows.append(("GRPO step, one ahead: samples packed / one a row", results["grpo"]["packed_vs_unpacked"], "-"))
        if "rollout_reference_vs_learner" in results["grpo"]:
            rows.append(("GRPO step, one ahead: KL reference on the rollout worker / on the learner",
                         results["grpo"]["rollout_reference_vs_learner"], "-"))  # fmt: skip
    if "polychromic" in results:
        p = results["polychromic"]
        rows += [(f"{name} step / SFT step", r["step_s"] / p["sft"]["step_s"], "-") for name, r in p.items()
                 if not name.startswith("sft")]  # fmt: skip
        rows += [(f"{name} step / SFT step on references + samples", ratio, "<= 1.2") for name, ratio in polychromic_floors(p)]
    if "peer" in results:
        r, large = results["peer"]["ratios"], results["peer"].get("large")
        rows += [("GRPO step, polyray / TRL", r["grpo_step_polyray_vs_trl"], "<= 0.5"),
                 ("SFT step, polyray / TRL", r["sft_step_polyray_vs_trl"], "<= 1.0"),
                 ("end to end (short run), polyray / TRL", r["end_to_end_polyray_vs_trl"], "-")]  # fmt: skip
        if large:
            rows.append((f"vLLM / transformers generate tokens/s, larger model, {large['tokens']} tokens",
                         large["vllm_vs_transformers"], ">= 2"))  # fmt: skip
    if "reward" in results:
        rows.append(("reward model batched / unbatched items/s", results["reward"]["engagement_batching"]["ratio"], "-"))
    if "learner" in results:
        rows += learner_rows(results["learner"]["ratios"])
    return rows


def learner_rows(ratios: dict[str, float]) -> list[tuple[str, float, str]]:
    """The learner part's ratios as summary rows, with their goals."""
    goals = {"peak_": ("learner peak, largest / smallest step (micro-batched)", "<= 1.15"),
             "whole_vs_micro_peak_": ("learner peak, whole batch / micro-batched", ">= 3"),
             "micro_vs_whole_tokens_per_s_": ("learner tokens/s, micro-batched / whole batch", ">= 1"),
             "micro_vs_whole_tokens_per_cpu_s_": ("learner tokens per CPU s, micro-batched / whole batch", ">= 1"),
             "packed_vs_one_a_row_step_s_": ("learner step, varied-length samples packed / one a row", "-"),
             "estimate_vs_measured_": ("memory plan estimate / measured peak", "0.75-1.25")}  # fmt: skip
    rows = []
    for key, value in ratios.items():
        prefix = max((p for p in goals if key.startswith(p)), key=len)
        name, goal = goals[prefix]
        rows.append((f"{name} ({key[len(prefix):].replace('_vs_', ' vs ')})", value, goal))
    return rows


def print_summary(results: dict[str, Any]) -> None:
    table = Table(title="polyray benchmark: ratios measured side by side in one run")
    for col in ("measure", "ratio", "goal"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, value, goal in summary_rows(results):
        table.add_row(escape(name), f"{value:.2f}", goal)
    console.print(table)


PARTS = ("rollout", "grpo", "polychromic", "reward", "generation", "learner", "peer", "chaos")
# --smoke runs each harness function once, leaving out the fits and engines that only repeat one with another setting:
# rollout: vLLM's own LoRA ops (raw_llm's harness, polyray's plugin off: a reference measurement only)
# grpo: the KL reference scored by the rollout worker, one step ahead (the one fit with a real pool that takes it);
# the other modes change one setting each and their ratios are the same division (grpo_ratios, unit-tested)
# polychromic: standard SFT and polychromic SFT, not the floor (SFT with another batch size) nor the canary on
# every step (the run-recovery e2e test runs it); peer: the larger model's learner step (run_case:
# tests/unit/test_bench_learner.py)
SMOKE = {"rollout": ["--prompts", "4", "--repeats", "1", "--syncs", "2", "--no-vllm-lora-ops"],
         "grpo": ["--steps", "4", "--rounds", "1", "--modes", "async_rollout_reference"],
         "polychromic": ["--steps", "4", "--diversity", "countdown_expr", "--no-async", "--no-canary", "--no-floor"],
         "reward": ["--requests", "20", "--max-seconds", "2"],
         "generation": ["--requests", "4", "--n", "2", "--max-tokens", "8", "--publishes", "2"],
         "chaos": ["--clients", "2", "--seconds", "3", "--kill-at", "1"],
         "learner": ["--sizes", "2", "--sizes", "4", "--whole-batch-sizes", "2", "--length", "32", "--micro-batch-tokens",
                     "64", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads", "2", "--kv-heads", "1",
                     "--head-dim", "32", "--vocab", "512", "--threads", "1"],
         "peer": ["--seeds", "1", "--warmup", "0", "--threads", "1", "--set", "phases.0.steps=2", "--set",
                  "phases.0.batch_size=4", "--set", "phases.1.steps=2", "--set", "phases.1.prompts_per_step=2", "--set",
                  "phases.1.group_size=4", "--set", "task.n_test=8", "--large-shape", "1,64,128,2,1,32,512", "--large-prompts", "2", "--large-n", "2", "--large-tokens", "16",
                  "--large-repeats", "1", "--large-learner-sequences", "0"]}  # fmt: skip
DEFAULTS = {"polychromic": ["--steps", "12"]}  # the table's budget: ~15 minutes on 2 cores


def run_all(parts: list[str], smoke: bool) -> dict[str, Any]:
    """Each part in its own interpreter (``polyray bench <part>``: a clean process for Ray and an
    in-process engine), then the summary table."""
    import subprocess

    results = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-all-") as tmp:
        for part in parts:
            console.rule(part)
            json_path = Path(tmp) / f"{part}.json"
            extra = SMOKE[part] if smoke else DEFAULTS.get(part, [])
            cmd = [sys.executable, "-m", "polyray.cli", "bench", part, *extra, "--json", str(json_path)]
            subprocess.run(cmd, check=True)
            results[part] = json.loads(json_path.read_text())
    print_summary(results)
    return results


def bench_chaos(services: list[str], clients: int, seconds: float, kill_at: float, config: str,
                max_recovery_s: float = 120.0, replicas: int = 1) -> dict[str, Any]:  # fmt: skip
    """Each service on loopback with ``replicas`` replicas (one CPU each): ``clients`` clients for ``seconds``,
    then the same load with one replica SIGKILLed ``kill_at`` seconds in (:mod:`.chaos`). The reward service
    also takes the learner's own retrying calls (code_exec items, so sandboxes run when the replica dies)
    during the kill."""
    import ray
    from ray import serve

    results: dict[str, Any] = {"clients": clients, "seconds": seconds, "kill_at": kill_at, "replicas": replicas}
    # a cluster of its own (address="local": never one RAY_ADDRESS names): the replicas it kills are its own
    ray.init(address="local", num_cpus=max(2, replicas), include_dashboard=False, log_to_driver=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if "reward" in services:
            results["reward"] = _chaos_reward(url, clients, seconds, kill_at, max_recovery_s, replicas)
        if "generation" in services:
            results["generation"] = _chaos_generation(url, clients, seconds, kill_at, max_recovery_s, config, replicas)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


CHAOS_CODE_ITEM = {"prompt": "def answer():\n", "completion": "    return 42\n",
                   "metadata": {"test": "import time\n\ndef check(candidate):\n    time.sleep(0.5)\n"
                                        "    assert candidate() == 42\n", "entry_point": "answer"}}  # fmt: skip


def _chaos_reward(url: str, clients: int, seconds: float, kill_at: float, max_recovery_s: float,
                  replicas: int = 1) -> dict[str, Any]:  # fmt: skip
    import threading

    import httpx
    from ray import serve

    from polyray import lifetime
    from polyray.config.reward import RewardConfig
    from polyray.drivers.bench.chaos import kill_replica, leftovers, retrying_calls, run_load
    from polyray.reward.client import get_reward_handle, score_via_handle
    from polyray.reward.deployment import build_reward_app
    from polyray.sandbox import WORK_ROOT

    serve.run(build_reward_app({"num_replicas": replicas}), name="reward", route_prefix="/reward")
    body = {"reward": "countdown", "items": [{"prompt": "nums 3 4 9 target 12\nexpr:", "completion": c}
                                             for c in (" 3+9", " 4*3", " 9+4-1", " 3*4", " 12", " 9+3", " 4+9-1", " 3+4")]}
    base = f"{url}/reward"
    httpx.post(f"{base}/v1/rewards", json=body, timeout=120).raise_for_status()  # warm-up
    learner = RewardConfig()  # the learner's own timeout and retries
    handle = get_reward_handle("reward")

    def score() -> bool:
        results = score_via_handle(handle, "code_exec", [CHAOS_CODE_ITEM], None, learner.timeout_s, learner.retries)
        return [r.score for r in results] == [1.0]

    def load(**kill) -> dict[str, Any]:  # the HTTP clients, and beside them the learner's calls
        stop = threading.Event()
        join = retrying_calls(score, stop)
        try:
            result = run_load(base, "/v1/rewards", body, clients, seconds, max_recovery_s=max_recovery_s, **kill)
        finally:
            stop.set()
            retrying = join()
        return {**result, "retrying": retrying}

    roots = [lifetime.shared_root(WORK_ROOT)]
    out: dict[str, Any] = {}
    with console.status(f"reward: {clients} clients + the learner's calls, {seconds:g} s"):
        out["steady"] = load()
    with console.status(f"reward: {clients} clients + the learner's calls, the replica SIGKILLed at {kill_at:g} s"):
        out["kill"] = load(kill=lambda: kill_replica("reward", roots), kill_at=kill_at)
    out["kill"].update(leftovers(out["kill"]["killed"]))
    serve.delete("reward")
    return out


def _chaos_generation(url: str, clients: int, seconds: float, kill_at: float, max_recovery_s: float,
                      config: str, replicas: int = 1) -> dict[str, Any]:  # fmt: skip
    import httpx
    from ray import serve

    from polyray import lifetime
    from polyray.config import load_config
    from polyray.config.services import GenerationServiceConfig
    from polyray.drivers.bench.chaos import kill_replica, leftovers, run_load
    from polyray.generation.deployment import SCRATCH, build_generation_app
    from polyray.models.source import prepare_model_dir

    run = load_config(config)
    cfg = GenerationServiceConfig(model_dir=str(prepare_model_dir(run.model, run.task)), num_cpus=1, num_replicas=replicas,
                                  max_model_len=run.rollout.max_model_len, max_lora_rank=run.rollout.max_lora_rank,
                                  max_num_seqs=max(4, clients))  # fmt: skip
    with console.status("starting the generation service"):
        serve.run(build_generation_app(cfg.model_dump()), name="generation", route_prefix="/generation")
    body = {"model": cfg.base_name, "prompt": "nums 3 4 9 target 12\nexpr:", "max_tokens": 8, "temperature": 1.0}
    base = f"{url}/generation"
    httpx.post(f"{base}/v1/completions", json=body, timeout=300).raise_for_status()  # warm-up
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    roots = [lifetime.shared_root(SCRATCH, shm)]
    out: dict[str, Any] = {}
    with console.status(f"generation: {clients} clients, {seconds:g} s"):
        out["steady"] = run_load(base, "/v1/completions", body, clients, seconds)
    with console.status(f"generation: {clients} clients, the replica SIGKILLed at {kill_at:g} s"):
        out["kill"] = run_load(base, "/v1/completions", body, clients, seconds,
                               kill=lambda: kill_replica("generation", roots), kill_at=kill_at,
                               max_recovery_s=max_recovery_s)  # fmt: skip
    out["kill"].update(leftovers(out["kill"]["killed"]))
    serve.delete("generation")
    return out


def print_chaos(results: dict[str, Any]) -> None:
    replicas = results.get("replicas", 1)
    table = Table(title=f"services on loopback, {replicas} replica{'s' if replicas > 1 else ''}, {results['clients']} clients,"
                        f" {results['seconds']:g} s of load; kill: {'one' if replicas > 1 else 'the'} replica SIGKILLed"
                        f" {results['kill_at']:g} s in")  # fmt: skip
    table.caption = ("back-pressure = 503/429 (shed load, retry); errors = any other non-200 (-1: no answer);"
                     " recovery = kill -> first 200 of a request sent after it; retry lost = the learner's retrying"
                     " reward calls that failed or came back wrong")  # fmt: skip
    for col in ("service", "run", "requests", "ok", "req/s", "p50 ms", "p99 ms", "back-pressure", "errors",
                "recovery s", "retry lost", "orphans", "leaked dirs"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("service", "run") else "right")
    for service in ("reward", "generation"):
        for name in ("steady", "kill"):
            r = results.get(service, {}).get(name)
            if r is None:
                continue
            retry = r.get("retrying")
            recovery = r.get("recovery_s")
            table.add_row(service, name, str(r["requests"]), str(r["ok"]), f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}",
                          f"{r['p99_ms']:.0f}", str(r["back_pressure"]), str(r["errors"]),
                          "–" if name == "steady" else ("never" if recovery is None else f"{recovery:.2f}"),
                          f"{retry['lost']} of {retry['calls']}" if retry else "–",
                          str(len(r["orphans"])) if "orphans" in r else "–",
                          str(len(r["leaked_dirs"])) if "leaked_dirs" in r else "–")  # fmt: skip
    console.print(table)
    for service in ("reward", "generation"):
        r = results.get(service, {}).get("kill", {})
        for pid, title in r.get("orphans", []):
            console.print(f"[red]{service}: process {pid} outlived its replica: {escape(title)}[/red]")
        for path in r.get("leaked_dirs", []):
            console.print(f"[red]{service}: {escape(path)} outlived its replica[/red]")
        outside = {"before the kill": r.get("errors_before_kill", 0),
                   "after it answered again": r.get("errors_after_recovery", 0)}  # fmt: skip
        for when, count in outside.items():
            if count:
                console.print(f"[red]{service}: {count} request(s) failed {when}[/red]")
