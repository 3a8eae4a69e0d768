"""``polyray run``: the driver. A sequence of stage calls, one short function each.

resolve model -> start Ray -> launch rollout pool -> evaluate base ->
for each phase: fit (Ray Train) -> evaluate -> write results.

Results and the resolved config are written as soon as they exist, so a run that fails
half-way keeps everything it finished.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from polyray.config import ClusterConfig, RunConfig, dump_config

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=False,
    )


class Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 2)


def init_ray(cluster: ClusterConfig, needed_cpus: float, resources: dict[str, float] | None = None) -> None:
    """Join ``cluster.address`` (or $RAY_ADDRESS), else start a local cluster; no-op inside a Ray task."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cluster.address, log_to_driver=cluster.worker_logs)
        return
    num_cpus = cluster.num_cpus or max(int(needed_cpus + 0.999), os.cpu_count() or 1)
    ray.init(
        num_cpus=num_cpus, resources=resources, include_dashboard=cluster.dashboard, log_to_driver=cluster.worker_logs
    )


def needed_cpus(run: RunConfig) -> float:
    reward = run.reward.num_cpus if run.reward.endpoint else 0.0
    return (
        run.rollout.num_workers * run.rollout.cpus_per_worker + run.learner.num_workers * run.learner.cpus_per_worker
        + reward
    )


def build_model(run: RunConfig) -> Path:
    from polyray.models.source import resolve_model_dir
    from polyray.models.tiny import cached_model_dir

    if run.model.source == "embedded" and not (cached_model_dir(run.model.tiny, run.task) / "build_info.json").exists():
        with _progress() as bar:
            task_id = bar.add_task("build tiny model", total=run.model.tiny.pretrain_steps, info="")
            return resolve_model_dir(
                run.model, run.task, progress=lambda s, n, loss: bar.update(task_id, completed=s, info=f"loss {loss:.3f}")
            )
    return resolve_model_dir(run.model, run.task)


def evaluate_stage(name: str, pool, task, prompts, run: RunConfig, version: int | None) -> dict[str, Any]:
    from polyray.eval.sampling_eval import evaluate_policy

    with console.status(f"evaluating {name} on {len(prompts)} test prompts x {run.eval.n_samples} samples"):
        return evaluate_policy(pool, task, prompts, run.eval, version=version, seed=run.seed)


def train_stage(run: RunConfig, index: int, model_dir: Path, out: Path, pool, version: int, adapter: str | None):
    from polyray.learner.loop import run_phase

    phase = run.phases[index]
    with _progress() as bar:
        task_id = bar.add_task(f"{phase.name} ({phase.type})", total=phase.steps, info="starting workers")

        def show(state: dict[str, Any]) -> None:
            m = state.get("metrics") or {}
            keys = ("loss", "reward_mean", "kl", "step_s")
            info = "  ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
            bar.update(task_id, completed=state.get("step", 0), info=info or "starting workers")

        return run_phase(run, index, str(model_dir), out, pool, version, adapter, on_progress=show)


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
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "results.json")


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
        model_dir = build_model(run)
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
            pool = RolloutPool.launch(str(model_dir), run.rollout, run.model.dtype)
        with timer("eval_base"):
            results["phases"]["base"] = evaluate_stage("base", pool, task, test_prompts, run, None)
        write_results(out, results)
        version, adapter = 0, None
        for index, phase in enumerate(run.phases):
            with timer(f"train_{phase.name}"):
                trained = train_stage(run, index, model_dir, out, pool, version, adapter)
            version, adapter = trained["version"], trained["adapter_dir"]
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
