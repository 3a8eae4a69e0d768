"""The evaluation job (``polyray eval CONFIG``, ``python -m jobs.evaluate CONFIG``), top to bottom.

resolve models -> prepare the base model -> build tasks -> plan units (context check) ->
restore finished units (``units.jsonl``) -> generate (rollout pool) -> judge -> per-unit
metrics -> statistics / Pareto / dynamics / LoRA -> write ``results.json``, ``samples.jsonl``,
``report.html``, ``tables.tex``. Each unit is saved as soon as it is generated and again when
judged (:mod:`polyray.drivers.evaluate.store`), so a crash loses nothing and a rerun resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from polyray.cluster import init_ray, rollout_demand
from polyray.config.eval_job import EvalJobConfig, task_name
from polyray.drivers.evaluate.analyses import collect_dynamics, collect_lora, compute_pareto, compute_statistics
from polyray.drivers.evaluate.models import (
    ResolvedModel,
    load_reward_model,
    prepare_base_model,
    resolve_models,
    warn_other_base,
)
from polyray.drivers.evaluate.output import assemble_results, show_results, write_outputs
from polyray.drivers.evaluate.plan import EvalUnit, plan_units, warn_skips
from polyray.drivers.evaluate.store import UnitStore, unit_key
from polyray.drivers.evaluate.units import compute_unit_metrics, generate_unit, judge_unit
from polyray.eval.record import EvalRecord
from polyray.io import Timer, console, dump_config, make_progress, warn
from polyray.tasks import build_task


def run_eval(cfg: EvalJobConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the evaluation job; returns the results dict also written to ``results.json``."""
    out = Path(output_dir or Path("runs") / cfg.name).resolve()
    timer = Timer()
    models = resolve_models(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(dump_config(cfg))
    warn_other_base(cfg, models)
    reward_model = load_reward_model(cfg)
    with timer("model_build"):
        model_dir = prepare_base_model(cfg)
    tasks = {task_name(t): (t, build_task(t, reward_model)) for t in cfg.tasks}
    for _, task in tasks.values():
        if task.data_warning:
            warn(task.data_warning)
    with timer("plan"):
        units = plan_units(cfg, models, list(tasks.values()), load_tokenizer(model_dir))
    warn_skips(units)
    runnable = [u for u in units if u.skip_reason is None]
    store, keys = UnitStore(out), {id(u): unit_key(u, tasks[u.task_name][0], cfg) for u in runnable}
    stage = {id(u): store.restore(u, keys[id(u)], tasks[u.task_name][1]) for u in runnable}
    if any(stage.values()):
        console.print(f"resuming: {sum(1 for s in stage.values() if s)} of {len(runnable)} units found in {store.path}")

    to_generate = [u for u in runnable if stage[id(u)] is None]
    generate_all(cfg, model_dir, models, to_generate, timer, lambda u: store.save_generated(u, keys[id(u)]))
    with timer("judge"):
        judge_all([u for u in runnable if stage[id(u)] != "judged"], tasks, lambda u: store.save_judged(u, keys[id(u)]))
    labels = unit_labels(cfg, units)
    with timer("metrics"), console.status("metrics: pass@k, USQ, DER, diversity"):
        model_metrics, series, rows = measure_all(cfg, runnable, tasks, reward_model, labels)
    with timer("analyses"), console.status("statistics, Pareto frontier, dynamics, LoRA"):
        analyses = analyse(cfg, models, series, labels, model_metrics)

    results = assemble_results(cfg, model_dir, units, tasks, model_metrics, analyses, timer.timings)
    write_outputs(out, results, rows)
    show_results(results, out)
    return results


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def generate_all(
    cfg: EvalJobConfig, model_dir: Path, models: list[ResolvedModel], units: list[EvalUnit], timer, on_unit
) -> None:
    """Start Ray and the rollout pool (with the units' adapters), sample every unit (``on_unit`` after each), stop."""
    if not units:
        return
    from polyray.rollout.pool import RolloutPool
    from polyray.storage import share_model

    # set: workers get references into it, never this node's paths
    storage = cfg.cluster.storage
    demand = rollout_demand(cfg.rollout, cfg.cluster.worker_resources)
    with timer("ray_init"):
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.cpus_per_worker, demands=[demand])
    with timer("rollout_pool_start"), console.status(f"starting {cfg.rollout.num_workers} vLLM rollout worker(s)"):
        # the logprob selector ranks by the model's own likelihood, whatever the sampling temperature
        pool = RolloutPool.launch(
            share_model(storage, model_dir),
            cfg.rollout.model_copy(update={"logprobs_mode": "raw_logprobs"}),
            cfg.rollout.engine_dtype(cfg.model.dtype),
            cfg.seed,
            run=cfg.name,
            resources=cfg.cluster.worker_resources,
            wait=False,
            resource_wait_s=cfg.cluster.resource_wait_s,
        )
        try:
            # bounded: GPUs another job holds stop the wait, naming what a worker asks for
            pool.wait_ready(demand, cfg.cluster.resource_wait_s)
        except BaseException:
            pool.kill()
            raise
    try:
        used = {u.model.name for u in units}
        for m in models:
            if m.adapter is not None and m.name in used:
                pool.add_named_adapter(m.name, str(share_model(storage, m.adapter, "adapters")))
        with make_progress() as bar:
            for u in units:
                task_id = bar.add_task(f"generate {u.model.name} · {u.task_name}", total=len(u.inputs), info="")
                started = time.perf_counter()
                generate_unit(u, pool, cfg, lambda n, t=task_id: bar.advance(t, n))
                u.timings["generate"] = round(time.perf_counter() - started, 2)
                on_unit(u)
    finally:
        pool.shutdown()
    timer.timings["generate"] = round(sum(u.timings.get("generate", 0.0) for u in units), 2)


def judge_all(units: list[EvalUnit], tasks: dict, on_unit) -> None:
    with make_progress() as bar:
        for u in units:
            total = sum(len(g) for g in u.samples)
            task_id = bar.add_task(f"judge {u.model.name} · {u.task_name}", total=total, info="")
            started = time.perf_counter()
            judge_unit(u, tasks[u.task_name][1], lambda n, t=task_id: bar.advance(t, n))
            u.timings["judge"] = round(time.perf_counter() - started, 2)
            on_unit(u)


def unit_labels(cfg: EvalJobConfig, units: list[EvalUnit]) -> dict[tuple[str, str], str]:
    """Table label of each (task, model): the model name, plus ``[task]`` when there are several tasks."""
    single_task = len(cfg.tasks) == 1
    return {
        (u.task_name, u.model.name): u.model.name if single_task else f"{u.model.name} [{u.task_name}]" for u in units
    }


def measure_all(cfg: EvalJobConfig, units: list[EvalUnit], tasks: dict, reward_model, labels: dict):
    """(evaluation record per label, per-prompt series per (task, model), samples.jsonl rows)."""
    model_metrics: dict[str, EvalRecord] = {}
    series: dict[tuple[str, str], dict] = {}
    rows: list[dict] = []
    for u in units:
        started = time.perf_counter()
        record, rows_of_unit, by_id = compute_unit_metrics(u, tasks[u.task_name][1], cfg, reward_model)
        record.extra["timings_s"]["metrics"] = round(time.perf_counter() - started, 2)
        model_metrics[labels[(u.task_name, u.model.name)]] = record
        series[(u.task_name, u.model.name)] = by_id
        rows.extend({"task": u.task_name, "model": u.model.name, **r.to_dict()} for r in rows_of_unit)
    return model_metrics, series, rows


def analyse(cfg: EvalJobConfig, models, series, labels, model_metrics) -> dict[str, Any]:
    stats, stats_skipped = compute_statistics(cfg, models, series, labels)
    frontier, pareto_axis = compute_pareto(cfg, model_metrics)
    lora_rows, lora_diffs = collect_lora(cfg, models)
    return {
        "stats": stats,
        "stats_skipped": stats_skipped,
        "frontier": frontier,
        "pareto_axis": pareto_axis,
        "dynamics": collect_dynamics(cfg, models),
        "lora_rows": lora_rows,
        "lora_diffs": lora_diffs,
    }
