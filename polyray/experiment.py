"""``polyray experiment``: several runs x seeds on one Ray cluster, then one table with statistics.

An experiment file names a base run config, a set of *runs* (each a partial config merged
onto the base: usually its ``phases``) and the *models* to report, each ``run/phase``
(``base`` = the model before any phase). Every run x seed is one :func:`run_pipeline`
call executed as a Ray task; a custom resource ``polyray_run_slot`` caps how many run at
once (1 on a laptop, more on a cluster), and Ray queues the rest.

A run whose ``results.json`` already holds every phase is not run again, so an
interrupted experiment resumes where it stopped; a failed run is recorded and the
others go on. Aggregation: per model and metric, the mean and 95% t-interval over
seeds; per comparison, Mann-Whitney U and Cohen's d over seeds and, because a handful of
seeds gives little power, the same tests over prompts (per-prompt pass@k, pooled over
seeds, paired by prompt).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from polyray.config import RunConfig
from polyray.io import ConfigError, StrictModel, console, format_validation_error, make_progress

METRICS = ("pass@1", "pass@5", "pass@10", "reward_mean")


class ExperimentConfig(StrictModel):
    """Runs x seeds and the models reported from them."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Experiment name (runs/<name>/).")
    base: str = Field(..., description="Base run config, relative to the experiment file.")
    runs: dict[str, dict[str, Any]] = Field(..., description="Run name -> partial run config merged onto the base.")
    models: dict[str, str] = Field(..., description="Model label -> 'run/phase' ('base' before any phase).")
    compare: list[tuple[str, str]] = Field(default_factory=list, description="(treatment, control) model labels.")
    max_concurrent: int = Field(1, ge=1, description="Runs executing at once on the cluster.")

    @model_validator(mode="after")
    def _references_resolve(self) -> "ExperimentConfig":
        for label, ref in self.models.items():
            run, _, phase = ref.partition("/")
            if run not in self.runs or not phase:
                raise ValueError(f"models.{label}: {ref!r} is not 'run/phase' with a run from runs ({sorted(self.runs)})")
        for pair in self.compare:
            for label in pair:
                if label not in self.models:
                    raise ValueError(f"compare: unknown model {label!r} (models: {sorted(self.models)})")
        return self


def _merge(base: dict, patch: dict) -> dict:
    """Deep merge of mappings; lists and scalars in ``patch`` replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_experiment(path: str | Path, seeds: int) -> tuple[ExperimentConfig, dict[tuple[str, int], RunConfig]]:
    """The experiment and one validated :class:`RunConfig` per (run, seed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        exp = ExperimentConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
    base_path = (path.parent / exp.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {exp.base} not found")
    base = yaml.safe_load(base_path.read_text()) or {}
    configs = {}
    for run_name, patch in exp.runs.items():
        for seed in range(seeds):
            data = _merge(base, {**patch, "name": f"{exp.name}-{run_name}-s{seed}", "seed": seed})
            try:
                configs[run_name, seed] = RunConfig.model_validate(data)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{path}: runs.{run_name}")) from None
        phases = {"base"} | {p.name for p in configs[run_name, 0].phases}
        for label, ref in exp.models.items():
            run, _, phase = ref.partition("/")
            if run == run_name and phase not in phases:
                raise ConfigError(f"{path}: models.{label}: run {run!r} has no phase {phase!r} ({sorted(phases)})")
    return exp, configs


def _finished(out: Path, run: RunConfig) -> bool:
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return {"base", *(p.name for p in run.phases)} <= set(results.get("phases", {}))


def _run_one(config: dict[str, Any], out: str) -> dict[str, Any]:
    """Ray task body: one pipeline on the cluster the task runs in."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from polyray.pipeline import run_pipeline

    # a run an earlier invocation left unfinished is continued, not started over
    return run_pipeline(RunConfig.model_validate(config), Path(out), resume=(Path(out) / "config.resolved.yaml").is_file())


def run_experiment(path: str | Path, seeds: int, output_dir: Path | None = None) -> dict[str, Any]:
    import ray

    from polyray.cluster import init_ray, needed_cpus
    from polyray.models.source import prepare_model_dir

    exp, configs = load_experiment(path, seeds)
    out = Path(output_dir or Path("runs") / exp.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(configs.values()))
    prepare_model_dir(first.model, first.task)  # once, before runs race to build it
    init_ray(first.cluster, needed_cpus(first), resources={"polyray_run_slot": exp.max_concurrent})

    # A joined cluster without run slots schedules runs by their actors' CPU/GPU needs alone.
    slots = {"polyray_run_slot": 1} if ray.cluster_resources().get("polyray_run_slot") else {}
    task = ray.remote(_run_one).options(num_cpus=0, resources=slots, max_retries=0)
    pending, errors = {}, {}
    for (run_name, seed), cfg in configs.items():
        run_dir = out / "runs" / f"{run_name}-s{seed}"
        if _finished(run_dir, cfg):
            continue
        pending[task.remote(cfg.model_dump(mode="json"), str(run_dir))] = (run_name, seed)
    with make_progress() as bar:
        bar_id = bar.add_task(f"experiment {exp.name}", total=len(configs), completed=len(configs) - len(pending), info="")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run_name, seed = pending.pop(done[0])
            try:
                ray.get(done[0])
                info = f"{run_name} seed {seed} done"
            except Exception as exc:  # one failed run must not lose the others
                errors[f"{run_name}-s{seed}"] = f"{type(exc).__name__}: {exc}"[-2000:]
                info = f"[red]{run_name} seed {seed} failed"
            bar.update(bar_id, advance=1, info=info)

    summary = aggregate(exp, configs, out, seeds)
    summary["errors"] = errors
    (out / "experiment.json").write_text(json.dumps(summary, indent=2))
    console.print(summary_table(summary))
    for name, err in errors.items():
        console.print(f"[red]run {name} failed:[/red] {err.splitlines()[-1] if err else ''}")
    console.print(f"outputs in {out}")
    return summary


def _per_prompt_passk(phase_result: dict[str, Any], k: int) -> list[float]:
    from polyray.eval.passk import compute_pass_at_k

    return [compute_pass_at_k(r["n"], r["c"], k) for r in phase_result["per_prompt"]]


def aggregate(exp: ExperimentConfig, configs, out: Path, seeds: int) -> dict[str, Any]:
    """experiment.json: per model mean/CI over seeds, per comparison tests over seeds and prompts."""
    from polyray.eval.stats import compare_models, mean_ci

    per_seed: dict[str, list[dict[str, Any]]] = {}
    for label, ref in exp.models.items():
        run_name, _, phase = ref.partition("/")
        per_seed[label] = []
        for seed in range(seeds):
            try:
                results = json.loads((out / "runs" / f"{run_name}-s{seed}" / "results.json").read_text())
                per_seed[label].append(results["phases"][phase])
            except (OSError, ValueError, KeyError):
                continue
    models: dict[str, Any] = {}
    for label, rows in per_seed.items():
        if not rows:
            models[label] = {"n_seeds": 0}
            continue
        metric_names = [m for m in rows[0] if m in METRICS or m.startswith("diversity/")]
        models[label] = {"n_seeds": len(rows), "run": exp.models[label]}
        for m in metric_names:
            values = [r[m] for r in rows]
            models[label][m] = {**mean_ci(values), "values": values} if len(values) > 1 else {"mean": values[0], "values": values}
    comparisons = {}
    for treat, ctrl in exp.compare:
        a_rows, b_rows = per_seed[treat], per_seed[ctrl]
        if not a_rows or not b_rows:
            continue
        entry: dict[str, Any] = {}
        for m in METRICS:
            if m not in a_rows[0]:
                continue
            a, b = [r[m] for r in a_rows], [r[m] for r in b_rows]
            over_seeds = compare_models(a, b, paired=False) if min(len(a), len(b)) > 1 else {}
            k = int(m.split("@")[1]) if m.startswith("pass@") else None
            over_prompts = {}
            if k is not None and len(a_rows) == len(b_rows):
                pa = [v for r in a_rows for v in _per_prompt_passk(r, k)]
                pb = [v for r in b_rows for v in _per_prompt_passk(r, k)]
                over_prompts = compare_models(pa, pb, paired=True)
            entry[m] = {
                "difference": sum(a) / len(a) - sum(b) / len(b),
                "over_seeds": _brief(over_seeds),
                "over_prompts": _brief(over_prompts),
            }
        comparisons[f"{treat} vs {ctrl}"] = entry
    return {"name": exp.name, "seeds": seeds, "models": models, "comparisons": comparisons}


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a compare_models result (the full dict is long)."""
    if not stats:
        return {}
    keep = {}
    for key in ("mann_whitney", "wilcoxon", "paired_t"):
        if key in stats:
            keep[f"{key}_p"] = stats[key]["pvalue"]
    for key in ("cohens_d", "cohens_dz", "cliffs_delta", "bootstrap_ci"):
        if key in stats:
            keep[key] = stats[key]
    return keep


def summary_table(summary: dict[str, Any]):
    from rich.table import Table

    models = summary["models"]
    div = sorted({m for v in models.values() for m in v if m.startswith("diversity/")})
    table = Table(title=f"experiment {summary['name']}: mean ±95% CI over {summary['seeds']} seeds (test prompts)")
    table.add_column("model", no_wrap=True)
    for m in [*METRICS, *div]:
        table.add_column(m.replace("diversity/", "").replace("reward_mean", "reward"), justify="right", no_wrap=True)
    for label, v in models.items():
        cells = []
        for m in [*METRICS, *div]:
            cell = v.get(m)
            if cell is None:
                cells.append("-")
            elif "half_width" in cell:
                cells.append(f"{cell['mean']:.3f}±{cell['half_width']:.3f}")
            else:
                cells.append(f"{cell['mean']:.3f}")
        table.add_row(label, *cells)
    return table
