"""``polyray bench peer``: polyray against TRL on the same model, data, reward and budget.

Both trainers read their settings from one polyray config (``configs/quickstart.yaml`` by default), so
they cannot drift: the embedded model, the task's train prompts and references, the reward (scored by
polyray's own reward function in both), LoRA (r, alpha, dropout, target modules), and per phase the
steps, batch (SFT: references per step; GRPO: prompts per step x group size), learning rate and its
schedule, KL weight, clip range, advantage scaling, token-loss aggregation, max tokens, temperature,
top-p, weight decay, gradient clip and seed. :func:`peer_settings` maps them onto TRL's arguments and
refuses (one line naming the field) a config TRL cannot express.

Per seed, one after the other, never two at once:

1. **polyray**: ``polyray run`` of the config (:func:`polyray.drivers.run.run_pipeline`: Ray, the reward
   service on Ray Serve, the vLLM rollout pool, SFT then GRPO on Ray Train, test evaluations), timed end
   to end with each start-up cost measured by the run itself (``results.json``'s ``timings_s``).
2. **TRL**, in a fresh interpreter (:func:`run_trl`, ``python -m polyray.drivers.bench.peer_trl``):
   ``SFTTrainer`` from the base, then ``GRPOTrainer`` with transformers generation starting from
   **polyray's SFT adapter**, which is also its KL reference (TRL copies a pretrained adapter into a
   frozen ``ref`` adapter), as polyray's GRPO starts from and is anchored to the same adapter. Timed per
   step by a callback and end to end; both adapters are saved.

Then one rollout pool evaluates TRL's adapters with polyray's evaluator
(:func:`polyray.eval.policy_eval.evaluate_policy`, the same test prompts, samples per prompt and request
seeds as the polyray run's own evaluation of its adapters), and per seed the paired differences
(polyray − TRL) go through :func:`polyray.eval.stats.paired_t`.

Step time: median and interquartile range over the steps after ``warmup``. Tokens/s: completion
tokens per second of step time: for GRPO the sampled completions (each trainer's own lengths), for
SFT the references (+ end token) of the batch (the same data for both, so the SFT tokens/s ratio is the
inverse of the step-time ratio). End to end: from the start of the run (polyray: the driver; TRL: the
child's start, its interpreter and imports included) to the trained GRPO adapter, evaluations excluded
(polyray's driver is already imported; its Ray workers' imports are in its time).

The second half, vLLM / transformers ``generate`` and learner tokens/s on a larger model, is :mod:`.peer_large`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from polyray.config import RunConfig
from polyray.io import ConfigError

ENGINES = ("polyray", "trl")


# --------------------------------------------------------------------------- settings held equal


def _phase(run: RunConfig, kind: str) -> tuple[int, Any]:
    for i, p in enumerate(run.phases):
        if p.type == kind:
            return i, p
    raise ConfigError(f"phases: the peer benchmark needs a {kind} phase (it compares SFT, then GRPO from its adapter)")


def _schedule(phase, where: str) -> dict[str, Any]:
    """The phase's learning rate and schedule as TRL's (transformers') arguments: polyray's schedules are
    transformers' own (:mod:`polyray.learner.schedule`), with a floor TRL's have not."""
    if getattr(phase, "min_lr_ratio", 0.0):
        raise ConfigError(f"{where}.min_lr_ratio: TRL's schedules decay to 0; set it to 0 for the peer benchmark")
    name = "constant_with_warmup" if phase.lr_schedule == "constant" else phase.lr_schedule
    return {"lr_scheduler_type": name, "warmup_steps": phase.warmup_steps, "learning_rate": phase.lr}


def peer_settings(run: RunConfig) -> dict[str, Any]:
    """The settings both trainers use, read from ``run`` (its first SFT phase and the first GRPO phase
    after it), as TRL's arguments. A setting TRL cannot express is refused, naming the field."""
    s_index, sft = _phase(run, "sft")
    g_index, grpo = _phase(run, "grpo")
    if g_index < s_index:
        raise ConfigError(f"phases.{g_index}: the GRPO phase must come after the SFT phase it starts from")
    where = f"phases.{g_index}"
    if grpo.advantage.type != "group":
        raise ConfigError(f"{where}.advantage.type: {grpo.advantage.type!r} has no TRL equivalent (group)")
    losses = {"seq_mean_token_mean": "grpo", "token_mean": "dapo", "seq_mean_token_sum_norm": "dr_grpo"}
    if grpo.aggregation not in losses:
        raise ConfigError(f"{where}.aggregation: {grpo.aggregation!r} has no TRL loss_type ({', '.join(losses)})")
    if grpo.dynamic_sampling:
        raise ConfigError(f"{where}.dynamic_sampling: TRL's GRPOTrainer keeps every group; set it false")
    if grpo.kl_beta and grpo.kl_reference != "phase_start":
        raise ConfigError(f"{where}.kl_reference: the peer benchmark anchors both to the SFT adapter (phase_start)")
    if grpo.sampling.stop:
        raise ConfigError(
            f"{where}.sampling.stop: TRL's transformers generation has no stop strings here; leave it empty"
        )
    lora = run.learner.lora
    # TRL's configs default to bfloat16 autocast and gradient checkpointing; polyray's learner computes in the
    # model's dtype and checkpoints only when asked: TRL does the same here (both load the model in run.model.dtype)
    common = {
        "weight_decay": run.learner.weight_decay,
        "max_grad_norm": run.learner.grad_clip,
        "seed": run.seed,
        "data_seed": run.seed,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": run.learner.gradient_checkpointing,
    }
    return {
        "seed": run.seed,
        "dtype": run.model.dtype,
        "n_train": run.task.n_train,
        "lora": {
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": list(lora.target_modules),
        },
        "sft": {
            "name": sft.name,
            "max_steps": sft.steps,
            "per_device_train_batch_size": sft.batch_size,
            **_schedule(sft, f"phases.{s_index}"),
            **common,
        },
        "grpo": {
            "name": grpo.name,
            "max_steps": grpo.steps,
            "per_device_train_batch_size": grpo.prompts_per_step * grpo.group_size,
            "num_generations": grpo.group_size,
            "max_completion_length": grpo.sampling.max_tokens,
            "temperature": grpo.sampling.temperature,
            "top_p": grpo.sampling.top_p,
            "top_k": 0,
            "beta": grpo.kl_beta,
            "epsilon": grpo.clip_eps_low,
            "epsilon_high": grpo.clip_eps_high,
            "loss_type": losses[grpo.aggregation],
            "scale_rewards": "group" if grpo.advantage.scale_by_std else "none",
            "num_iterations": 1,
            **_schedule(grpo, where),
            **common,
        },
    }


# --------------------------------------------------------------------------- step statistics


def step_stats(seconds: list[float], tokens: list[float], warmup: int) -> dict[str, Any]:
    """Median, interquartile range and tokens/s over the steps after ``warmup`` (at least the last step)."""
    import numpy as np

    warmup = min(warmup, len(seconds) - 1)
    s, t = np.asarray(seconds[warmup:], dtype=float), np.asarray(tokens[warmup:], dtype=float)
    q1, median, q3 = np.percentile(s, [25, 50, 75])
    return {
        "steps": int(s.size),
        "warmup": warmup,
        "step_s": float(median),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "iqr_s": float(q3 - q1),
        "tokens_per_s": float(t.sum() / s.sum()),
    }


def reference_tokens(run: RunConfig, model_dir: str) -> float:
    """Mean completion tokens of an SFT reference (+ the end token), over the train prompts both trainers draw from."""
    from transformers import AutoTokenizer

    from polyray.models.source import format_for_model
    from polyray.tasks import build_task

    prompts = format_for_model(build_task(run.task), run.model, model_dir).prompts("train", run.task.n_train)
    return mean_reference_tokens(AutoTokenizer.from_pretrained(model_dir), prompts)


def mean_reference_tokens(tokenizer, prompts) -> float:
    return statistics.mean(len(tokenizer(p.reference, add_special_tokens=False)["input_ids"]) + 1 for p in prompts)


def polyray_steps(metrics_path: Path, phase, warmup: int, ref_tokens: float) -> dict[str, Any]:
    """Step statistics of ``phase`` from a run's metrics.jsonl."""
    from polyray.io import read_log_jsonl

    rows = [r for r in read_log_jsonl(metrics_path) if r["phase"] == phase.name]
    if phase.type == "grpo":
        tokens = [r["completion_len"] * r["kept_groups"] * phase.group_size for r in rows]
    else:
        tokens = [ref_tokens * phase.batch_size for _ in rows]
    return step_stats([r["step_s"] for r in rows], tokens, warmup) | {"total_step_s": sum(r["step_s"] for r in rows)}


# --------------------------------------------------------------------------- polyray's run


def run_polyray(run: RunConfig, out: Path, warmup: int) -> dict[str, Any]:
    """``polyray run`` of ``run`` in ``out``, then Ray (and Serve) shut down. Its step statistics, end to end
    seconds, start-up costs (each measured by the run), test pass@k of SFT and GRPO and adapter paths."""
    import ray

    from polyray.drivers.run import run_pipeline
    from polyray.drivers.startup import STARTUP_FILE

    started = time.perf_counter()
    results = run_pipeline(run, out)
    wall = time.perf_counter() - started
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()
    t = results.timings_s
    _, sft = _phase(run, "sft")
    _, grpo = _phase(run, "grpo")
    ref = reference_tokens(run, results.model_dir)
    steps = {
        "sft": polyray_steps(out / "metrics.jsonl", sft, warmup, ref),
        "grpo": polyray_steps(out / "metrics.jsonl", grpo, warmup, ref),
    }
    evals = sum(v for k, v in t.items() if k.startswith("eval_"))
    startup = {
        "model_build": t.get("model_build", 0.0),
        "ray_start": t.get("ray_init", 0.0),
        "serve_start": t.get("reward_service_start", 0.0),
        "vllm_engine_start": t.get("rollout_pool_start", 0.0),
    }
    # Ray Train's workers, model load, checkpoints, final save
    for key, phase in (("sft", sft), ("grpo", grpo)):
        startup[f"{key}_phase_overhead"] = t[f"train_{phase.name}"] - steps[key]["total_step_s"]
    return {
        "steps": steps,
        "end_to_end_s": wall - evals,
        "evaluations_s": evals,
        "startup_s": startup,
        "timings_s": t,
        # the run's start-up trace (startup.json): each component from asked for to ready
        "startup_trace": json.loads((out / STARTUP_FILE).read_text()),
        "eval": {key: _pass_at_k(results.evaluations[p.name]) for key, p in (("sft", sft), ("grpo", grpo))},
        "adapters": {"sft": str(out / "adapters" / sft.name), "grpo": str(out / "adapters" / grpo.name)},
    }


def _pass_at_k(record) -> dict[str, float]:
    return {f"pass@{k}": est.mean for k, est in record.pass_at_k.items()}


# --------------------------------------------------------------------------- TRL, in its own interpreter


def run_trl(
    config: str, overrides: list[str], sft_adapter: str, out: Path, threads: int, warmup: int, timeout_s: float = 3600
) -> dict[str, Any]:
    """TRL's SFT and GRPO in a fresh interpreter with ``threads`` torch threads; its step statistics,
    end-to-end seconds and adapter paths."""
    spec = {"config": config, "overrides": overrides, "sft_adapter": sft_adapter, "out": str(out), "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "polyray.drivers.bench.peer_trl", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"TRL run failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}\n{proc.stderr[-3000:]}"
        )
    raw = json.loads((out / "trl.json").read_text())
    steps = {k: step_stats(raw[k]["step_s"], raw[k]["tokens"], warmup) for k in ("sft", "grpo")}
    return {
        "steps": steps,
        "end_to_end_s": wall,
        "startup_s": {"imports_and_model_load": raw["load_s"]},
        "adapters": {k: raw[k]["adapter"] for k in ("sft", "grpo")},
        "trl_version": raw["trl_version"],
    }


# --------------------------------------------------------------------------- evaluation of TRL's adapters


def evaluate_adapters(run: RunConfig, adapters: dict[int, dict[str, str]]) -> dict[int, dict[str, dict[str, float]]]:
    """Test pass@k of each seed's adapters (seed -> {"sft": dir, "grpo": dir}) with polyray's evaluator on one
    rollout pool: the run's test prompts, samples per prompt and the seed's request seeds, as its own run."""
    import ray

    from polyray.cluster import init_ray, needed_cpus
    from polyray.eval.policy_eval import build_eval_task, evaluate_policy
    from polyray.learner.lora import read_adapter
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    model_dir = prepare_model_dir(run.model, run.task)
    task = build_eval_task(run, model_dir)
    prompts = task.prompts("test")
    out: dict[int, dict[str, dict[str, float]]] = {}
    init_ray(run.cluster, needed_cpus(run))
    try:
        with tempfile.TemporaryDirectory(prefix="polyray-peer-eval-") as tmp:
            pool = RolloutPool.launch(
                str(model_dir), run.rollout, run.model.dtype, run.seed, open_store(Path(tmp) / "store")
            )
            try:
                version = 0
                for seed, dirs in adapters.items():
                    out[seed] = {}
                    for key, path in dirs.items():
                        version += 1
                        pool.publish(version, read_adapter(path), phase=f"trl-{key}-{seed}")
                        record = evaluate_policy(pool, task, prompts, run.eval, version=version, seed=seed)
                        out[seed][key] = _pass_at_k(record)
            finally:
                pool.shutdown()
    finally:
        ray.shutdown()
    return out


# --------------------------------------------------------------------------- the whole comparison


def paired(per_seed: dict[int, dict[str, Any]], path: tuple[str, ...]) -> dict[str, Any]:
    """polyray and TRL's value at ``path`` per seed, their means and the paired t-test of polyray − TRL."""
    from polyray.eval.stats import paired_t

    def at(d, keys):
        for k in keys:
            d = d[k]
        return d

    seeds = sorted(per_seed)
    a = [at(per_seed[s]["polyray"], path) for s in seeds]
    b = [at(per_seed[s]["trl"], path) for s in seeds]
    return {
        "polyray": a,
        "trl": b,
        "polyray_mean": statistics.mean(a),
        "trl_mean": statistics.mean(b),
        "paired_t": paired_t(a, b).to_json(),
    }


# pass@k "at least TRL's": polyray's mean over seeds no more than this below TRL's, by a one-sided paired test
NONINFERIORITY_MARGIN = 0.02
# name -> path under each engine's per-seed results
COMPARED = {
    "sft_step_s": ("steps", "sft", "step_s"),
    "grpo_step_s": ("steps", "grpo", "step_s"),
    "sft_tokens_per_s": ("steps", "sft", "tokens_per_s"),
    "grpo_tokens_per_s": ("steps", "grpo", "tokens_per_s"),
    "end_to_end_s": ("end_to_end_s",),
}


def compare_engines(per_seed: dict[int, dict[str, Any]], margin: float = NONINFERIORITY_MARGIN) -> tuple[dict, dict]:
    """(compared, ratios): each measure's paired comparison over seeds (``COMPARED``, then test pass@k after each
    phase), each pass@k with its non-inferiority test at ``margin``; polyray / TRL of the step and end-to-end means."""
    from polyray.eval.stats import noninferiority_paired

    first = per_seed[min(per_seed)]
    compared = {name: paired(per_seed, path) for name, path in COMPARED.items()}
    for key in ("sft", "grpo"):
        # the config's eval.ks, in order
        for k in first["polyray"]["eval"][key]:
            c = compared[f"{key}_{k}"] = paired(per_seed, ("eval", key, k))
            c["noninferiority"] = noninferiority_paired(c["polyray"], c["trl"], margin).to_json()
    ratios = {
        f"{name[:-2]}_polyray_vs_trl": compared[name]["polyray_mean"] / compared[name]["trl_mean"]
        for name in ("grpo_step_s", "sft_step_s", "end_to_end_s")
    }
    return compared, ratios


def bench_peer(
    config: str,
    overrides: list[str],
    seeds: list[int],
    warmup: int,
    threads: int,
    on_stage=None,
    margin: float = NONINFERIORITY_MARGIN,
) -> dict[str, Any]:
    """polyray then TRL per seed (never at once), then TRL's adapters evaluated on one pool; the paired comparison,
    and for each test pass@k the paired non-inferiority test of polyray against TRL at ``margin``."""
    from polyray.config import load_config

    say = on_stage or (lambda text: None)
    # TRL has no such probe: it would only lengthen polyray's run
    overrides = ["dynamics.every=0", *overrides]
    settings = None
    per_seed: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-peer-") as tmp:
        for seed in seeds:
            seed_overrides = [*overrides, f"seed={seed}", f"name=peer-seed{seed}"]
            run = load_config(config, seed_overrides)
            settings = settings or peer_settings(run)
            out = Path(tmp) / f"seed{seed}"
            say(f"seed {seed}: polyray run (SFT {run.phases[0].steps} steps, then GRPO)")
            poly = run_polyray(run, out / "polyray", warmup)
            say(f"seed {seed}: TRL (SFTTrainer, then GRPOTrainer from polyray's SFT adapter)")
            (out / "trl").mkdir(parents=True)
            trl = run_trl(config, seed_overrides, poly["adapters"]["sft"], out / "trl", threads, warmup)
            per_seed[seed] = {"polyray": poly, "trl": trl}
        say("evaluating TRL's adapters with polyray's evaluator")
        run = load_config(config, [*overrides, f"seed={seeds[0]}"])
        evals = evaluate_adapters(run, {s: per_seed[s]["trl"]["adapters"] for s in seeds})
    for seed in seeds:
        per_seed[seed]["trl"]["eval"] = evals[seed]
        for r in per_seed[seed].values():
            # temporary directories, gone
            r.pop("adapters")
    compared, ratios = compare_engines(per_seed, margin)
    startup = {
        k: statistics.median(per_seed[s]["polyray"]["startup_s"][k] for s in seeds)
        for k in per_seed[seeds[0]]["polyray"]["startup_s"]
    }
    return {
        "config": config,
        "overrides": overrides,
        "seeds": seeds,
        "warmup": warmup,
        "trl_threads": threads,
        "trl_version": per_seed[seeds[0]]["trl"]["trl_version"],
        "settings": settings,
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "compared": compared,
        "ratios": ratios,
        "polyray_startup_s": startup,
    }


# --------------------------------------------------------------------------- printing


def _cell(values: dict[str, Any], key: str, fmt: str) -> str:
    return fmt.format(values[key]) if values.get(key) is not None else "-"


def print_peer(results: dict[str, Any], console) -> None:
    """The side-by-side table (means over seeds, the paired test of polyray − TRL), then polyray's start-up costs."""
    from rich.table import Table

    s = results["settings"]
    g = s["grpo"]
    table = Table(
        title=f"polyray vs TRL {results['trl_version']}: {len(results['seeds'])} seed(s), SFT"
        f" {s['sft']['max_steps']} steps x {s['sft']['per_device_train_batch_size']}, GRPO {g['max_steps']}"
        f" steps x {g['per_device_train_batch_size'] // g['num_generations']} prompts x {g['num_generations']},"
        f" {g['max_completion_length']} tokens, T {g['temperature']:g}, LoRA r {s['lora']['r']}, both in {s['dtype']}"
        f"{', gradient checkpointing' if g.get('gradient_checkpointing') else ''}"
    )
    table.caption = (
        "step s: median over the steps after warm-up (per seed, then the mean over seeds); tokens/s:"
        " completion tokens per second of step; end to end: start to trained GRPO adapter, evaluations"
        " excluded; p: paired t-test over seeds of polyray − TRL; ≥ TRL − m: one-sided paired"
        " non-inferiority test of pass@k at margin m (p, and the one-sided 95% lower bound)"
    )
    for col in ("measure", "polyray", "TRL", "polyray / TRL", "polyray − TRL (95% CI)", "p", "≥ TRL − m"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, c in results["compared"].items():
        t = c["paired_t"]
        ci = f"[{t['low']:+.3f}, {t['high']:+.3f}]" if t.get("low") is not None else "-"
        ratio = c["polyray_mean"] / c["trl_mean"] if c["trl_mean"] else float("nan")
        ni = c.get("noninferiority")
        shown = (
            "-" if not ni or ni["pvalue"] is None else f"m {ni['margin']:g}: p {ni['pvalue']:.3f}, > {ni['low']:+.3f}"
        )
        table.add_row(
            name.replace("_", " "),
            f"{c['polyray_mean']:.3f}",
            f"{c['trl_mean']:.3f}",
            f"{ratio:.2f}",
            ci,
            _cell(t, "pvalue", "{:.3f}"),
            shown,
        )
    console.print(table)
    per = results["per_seed"]
    iqr = "; ".join(
        f"seed {seed}: GRPO IQR polyray {r['polyray']['steps']['grpo']['iqr_s']:.3f} s,"
        f" TRL {r['trl']['steps']['grpo']['iqr_s']:.3f} s"
        for seed, r in per.items()
    )
    console.print(iqr)
    startup = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in results["polyray_startup_s"].items())
    console.print(f"polyray's fixed costs (medians over seeds, measured by the run): {startup}")
    from polyray.drivers.startup import startup_table

    first = results["seeds"][0]
    trace = per[str(first)]["polyray"].get("startup_trace")
    if trace:
        console.print(startup_table(trace, title=f"polyray's start-up, seed {first} (s from the run's start)"))
