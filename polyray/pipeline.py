"""``polyray run``: the driver. A sequence of stage calls, one short function each.

resolve model -> start Ray -> launch rollout pool -> evaluate base ->
for each phase: fit (Ray Train) -> evaluate -> write results.

Results and the resolved config are written as soon as they exist, so a run that fails
half-way keeps everything it finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.cluster import init_ray, needed_cpus
from polyray.config import RunConfig
from polyray.io import Timer, console, dump_config, make_progress, write_json_atomic
from polyray.models.source import prepare_model_dir


def evaluate_stage(name: str, pool, task, prompts, run: RunConfig, version: int | None) -> dict[str, Any]:
    from polyray.eval.policy_eval import evaluate_policy

    with console.status(f"evaluating {name} on {len(prompts)} test prompts x {run.eval.n_samples} samples"):
        return evaluate_policy(pool, task, prompts, run.eval, version=version, seed=run.seed)


def train_stage(run: RunConfig, index: int, model_dir: Path, out: Path, pool, version: int, adapter: str | None):
    from polyray.eval.dynamics import DynamicsProbe
    from polyray.learner.loop import run_phase

    phase = run.phases[index]
    probe = DynamicsProbe(run, index, out, pool) if run.dynamics.every else None
    with make_progress() as bar:
        task_id = bar.add_task(f"{phase.name} ({phase.type})", total=phase.steps, info="starting workers")

        def show(state: dict[str, Any]) -> None:
            m = state.get("metrics") or {}
            keys = ("loss", "reward_mean", "kl", "step_s")
            info = "  ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
            bar.update(task_id, completed=state.get("step", 0), info=info or "starting workers")

        return run_phase(run, index, str(model_dir), out, pool, version, adapter, on_progress=show, dynamics=probe)


def results_table(results: dict[str, Any], ks: list[int]) -> Table:
    table = Table(title="polyray run: test-set evaluation")
    table.add_column("model")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    table.add_column("reward", justify="right")
    table.add_column("distinct", justify="right")
    for name, r in results["phases"].items():
        table.add_row(name, *[f"{r[f'pass@{k}']:.3f}" for k in ks], f"{r['reward_mean']:.3f}", f"{r['distinct_frac']:.2f}")
    return table


def write_results(out: Path, results: dict[str, Any]) -> None:
    write_json_atomic(out / "results.json", results)


def run_pipeline(run: RunConfig, output_dir: Path | None = None) -> dict[str, Any]:
    from polyray.learner.phases import PHASES
    from polyray.rollout.pool import RolloutPool
    from polyray.tasks import build_task

    out = Path(output_dir or Path("runs") / run.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(dump_config(run))
    timer = Timer()
    results: dict[str, Any] = {"name": run.name, "phases": {}, "timings_s": timer.timings, "versions": {}}
    task = build_task(run.task)
    test_prompts = task.prompts("test", run.task.n_test)

    with timer("model_build"):
        model_dir = prepare_model_dir(run.model, run.task)
    results["model_dir"] = str(model_dir)
    with timer("ray_init"):
        init_ray(run.cluster, needed_cpus(run))
    if run.reward.endpoint and any(PHASES[p.type].uses_rewards for p in run.phases):
        from polyray.reward.service import ensure_reward_service

        with timer("reward_service_start"), console.status("starting the reward service (Ray Serve)"):
            ensure_reward_service(run.reward)
    pool = None
    try:
        with timer("rollout_pool_start"), console.status(f"starting {run.rollout.num_workers} vLLM rollout worker(s)"):
            pool = RolloutPool.launch(str(model_dir), run.rollout, run.model.dtype, run.seed)
        with timer("eval_base"):
            results["phases"]["base"] = evaluate_stage("base", pool, task, test_prompts, run, None)
        write_results(out, results)
        version, adapter = 0, None
        for index, phase in enumerate(run.phases):
            with timer(f"train_{phase.name}"):
                trained = train_stage(run, index, model_dir, out, pool, version, adapter)
            version, adapter = trained["version"], trained["adapter_dir"]
            pool.register_saved(version, adapter)  # a worker restarted during evaluation reloads it from disk
            results["versions"][phase.name] = version
            with timer(f"eval_{phase.name}"):
                results["phases"][phase.name] = evaluate_stage(phase.name, pool, task, test_prompts, run, version)
            write_results(out, results)
    finally:
        if pool is not None:
            pool.shutdown()
    results["timings_s"]["total"] = round(sum(v for k, v in timer.timings.items() if k != "total"), 2)
    write_results(out, results)
    console.print(results_table(results, run.eval.ks))
    console.print(f"outputs in {out}")
    return results
