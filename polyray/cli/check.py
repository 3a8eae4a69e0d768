"""``polyray check CONFIG [--set ...]``: validate a run config and show what it would do, starting nothing.

A valid config given to ``polyray run`` starts training at once, so a mistake in a field
that loads fine (too few steps, the wrong data column, a model directory that does not
exist yet) costs a cluster start and a model build before it shows. ``check`` loads the
config exactly as ``run`` does (same ``--set``, same errors), reads the task's data, and
prints the resolved config and the plan: phases with their steps and batches, the actors
and the resources they reserve, the model source and the data. It never imports Ray, vLLM
or torch (a test holds it to that), so it answers in about a second on a laptop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from polyray.cli.common import user_errors


def check_command(
    config: Path = typer.Argument(..., help="Run config YAML, e.g. configs/quickstart.yaml."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set phases.grpo.lr=1e-4 (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print the plan only, not the resolved config."),
    model_config: Optional[str] = typer.Option(
        None,
        "--model-config",
        metavar="DIR|FILE|MODEL",
        help="Plan memory on this model's config.json (a directory holding one, the file, or a known model id such"
        " as Qwen/Qwen3-0.6B) instead of the run's model: a model not downloaded yet.",
    ),
    gpu_memory_gib: Optional[float] = typer.Option(
        None,
        "--gpu-memory-gib",
        min=1,
        help="Plan for GPUs of this memory (GiB): the learner's and rollout workers' gpu_memory_gib where they use GPUs.",
    ),
):
    """Validate a run config; print it resolved and the plan (phases, actors, resources, model, data); start nothing."""
    from polyray.cli.common import fail
    from polyray.io import dump_config

    with user_errors():
        runs, header = _runs(config, set_)
        shape = _model_config(model_config)
    problems: list[str] = []
    for label, run in runs:
        if gpu_memory_gib is not None:
            from polyray.cluster import with_gpu_memory

            run = with_gpu_memory(run, gpu_memory_gib)
        lines = plan_lines(run, problems, shape)
        if not quiet:
            typer.echo(f"# resolved config{label}")
            typer.echo(dump_config(run))
        typer.echo(f"# plan{label}")
        for line in header + lines:
            typer.echo(line)
    if problems:
        fail(problems[0] + (f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""))


def _runs(config: Path, overrides: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The run configs ``config`` stands for: itself (a run config), a sweep's base run (every point of its
    space validated), or each run of an experiment (seed 0); ``--set`` applies to each."""
    from polyray.config import RunConfig, load_config
    from polyray.io import ConfigError, apply_overrides, read_yaml_mapping

    top = read_yaml_mapping(config, allow_empty=True)
    if "space" in top and "base" in top:
        from polyray.drivers.sweep import load_sweep

        sweep, base = load_sweep(config)
        run = _validated(RunConfig, apply_overrides(base, list(overrides)), f"{config}: base + overrides")
        axes = ", ".join(
            f"{name} ({len(a.grid)} values)" if a.grid else f"{name} ({a.kind})" for name, a in sweep.space.items()
        )
        return [("", run)], [
            f"sweep over {axes}, num_samples {sweep.num_samples}; each trial is this base run with its point:"
        ]
    if "runs" in top and "base" in top:
        from polyray.drivers.experiment import load_experiment

        _, configs = load_experiment(config, 1)
        out = []
        for (name, _seed), run in configs.items():
            data = apply_overrides(run.model_dump(mode="json"), list(overrides))
            out.append((f" (run {name})", _validated(RunConfig, data, f"{config}: runs.{name}")))
        return out, []
    if not isinstance(top, dict):
        raise ConfigError(f"{config}: not a run, sweep or experiment config")
    return [("", load_config(config, overrides))], []


def _model_config(where: str | None) -> dict | None:
    if where is None:
        return None
    from polyray.io import ConfigError
    from polyray.models.shapes import read_model_config

    try:
        return read_model_config(where)
    except ValueError as exc:
        raise ConfigError(f"--model-config: {exc}") from None


def _validated(model, data: dict, source: str):
    from pydantic import ValidationError

    from polyray.io import ConfigError, format_validation_error

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data)) from None


def plan_lines(run, problems: list[str] | None = None, model_config: dict | None = None) -> list[str]:
    """The plan of ``run`` as lines of text. A model or data that cannot be used is shown in its line and
    added to ``problems`` (raised when None), so one check shows every problem and the rest of the plan.
    ``model_config``: the ``config.json`` to plan memory on instead of the run's model's."""
    from polyray.cluster import run_demands
    from polyray.io import ConfigError, DataError

    def shown(what: str, fn, arg) -> str:
        try:
            return f"{what}: {fn(arg)}"
        except (ConfigError, DataError) as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            return f"{what}: error: {exc}"

    lines = [f"run {run.name} (seed {run.seed})", shown("model", _model, run.model), shown("data", _data, run.task)]
    lines.append(f"phases ({len(run.phases)}):")
    for i, phase in enumerate(run.phases):
        lines.append(f"  {i} {phase.name} [{phase.type}]: {phase.describe(run.phase_workers(i))}")
    if not run.phases:
        lines.append("  none: the base model is evaluated only")
    r, lr = run.rollout, run.learner
    lines.append("actors:")
    lines.append(
        f"  rollout workers: {r.num_workers} x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU,"
        f" tensor parallel {r.tensor_parallel_size}) = {r.num_workers * r.cpus_per_worker:g} CPU,"
        f" {r.num_workers * r.gpus_per_worker:g} GPU"
    )
    ranks, per_phase = run.most_learner_workers, [run.phase_workers(i) for i in range(len(run.phases))]
    lines.append(
        f"  learner ranks: {ranks} x ({lr.cpus_per_worker:g} CPU{', 1 GPU' if lr.use_gpu else ''})"
        f" = {ranks * lr.cpus_per_worker:g} CPU, {ranks if lr.use_gpu else 0} GPU"
        + (f" at most (per phase: {', '.join(map(str, per_phase))})" if len(set(per_phase)) > 1 else "")
        + f"; LoRA r={lr.lora.r}, alpha={lr.lora.alpha:g}"
    )
    if run.reward.endpoint:
        apps = 2 if run.reward.http_port is not None else 1
        lines.append(f"  reward replicas: {apps} x {run.reward.num_cpus:g} CPU")
    demands = run_demands(run)
    totals = {key: sum(d.count * d.bundle.get(key, 0.0) for d in demands) for key in ("CPU", "GPU")}
    where = run.cluster.address or "a local Ray cluster" + (
        f" of {run.cluster.num_cpus} CPUs" if run.cluster.num_cpus else ""
    )
    lines.append(f"  reserved at most: {totals['CPU']:g} CPU, {totals['GPU']:g} GPU on {where}")
    if run.env is not None:
        lines.append(shown("environment", _env, run.env))
    unit = "episodes" if run.env is not None else "samples"
    lines.append(f"evaluation: pass@k for k in {list(run.eval.ks)}, {run.eval.n_samples} {unit} per prompt")
    try:
        lines += memory_plan_lines(run, model_config)
    # cannot fit its declared GPU memory: shown like a data problem
    except ConfigError as exc:
        if problems is None:
            raise
        problems.append(str(exc))
        lines.append(f"memory plan: error: {exc}")
    return lines


def memory_plan_lines(run, config: dict | None = None) -> list[str]:
    """The memory plan (:mod:`polyray.learner.memory`) for ``config`` (a ``config.json`` mapping), else the
    model's when it is at hand without building or downloading anything (the embedded model's settings, a
    local directory, a hub model already in the cache, a model of :data:`polyray.models.shapes.KNOWN_CONFIGS`),
    sequences bounded by ``rollout.max_model_len`` (no tokenizer is loaded). A config that cannot fit its
    declared GPU memory raises the run's own one-line error."""
    from polyray.learner.memory import bound_lengths, check_run
    from polyray.models.shapes import KNOWN_CONFIGS
    from polyray.models.source import model_config, offline_model_dir

    if config is None:
        config = model_config(run.model, offline_model_dir(run.model, run.task)) or KNOWN_CONFIGS.get(run.model.source)
    if config is None:
        return ["memory plan: after the model is downloaded (the run plans it then; or --model-config DIR)"]
    return check_run(run, config, bound_lengths(run))


def _env(env) -> str:
    """The multi-turn environment and its limits; a custom one's file must exist (it is imported at the run's
    start: check imports nothing of the user's)."""
    from polyray.config.functions import is_file_ref, split_ref
    from polyray.io import ConfigError

    what = env.type
    if env.type == "custom":
        where, name = split_ref(env.environment)
        if is_file_ref(where) and not Path(where).is_file():
            raise ConfigError(f"env.environment: no file {where}")
        what = f"custom {name} from {where}"
    return (
        f"{what}, up to {env.max_turns} turns of {env.max_tokens} tokens, {env.max_total_tokens} tokens of history,"
        f" {env.max_seconds:g} s an episode"
    )


def _model(model) -> str:
    source = model.source
    if source == "embedded":
        t = model.tiny
        return (
            f"embedded tiny Qwen3 (built and cached on first use: {t.num_layers} layers, width {t.hidden_size},"
            f" {t.pretrain_steps} pretraining steps), {model.dtype}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return f"local directory {path.resolve()}, {model.dtype}, prompt format {model.prompt_format}"
    if path.is_absolute() or source.startswith("."):
        from polyray.io import ConfigError

        raise ConfigError(f"model.source: {source} is not a directory")
    return (
        f"hub id {source} (downloaded on first use unless cached), {model.dtype}, prompt format {model.prompt_format}"
    )


def _data(task) -> str:
    path = getattr(task, "path", None)
    if path is None:
        n = {s: getattr(task, f"n_{s}", None) for s in ("train", "val", "test")}
        return f"{task.type} (generated): " + ", ".join(f"{v} {s}" for s, v in n.items() if v is not None) + " prompts"
    if task.type in ("replies", "creative"):
        from polyray.io import JsonlReport
        from polyray.tasks.data import read_rows

        report = JsonlReport()
        rows = read_rows(path, task.format, task.fields, skip_bad_lines=task.skip_bad_lines, report=report)
        prompts = len({r.key for r in rows})
        refs = sum(r.response is not None for r in rows)
        systems = sum(r.system is not None for r in rows)
        shown = (
            f"{path}: {len(rows)} rows, {prompts} distinct prompts, {refs} with a reference,"
            f" {systems} with a system prompt"
        )
        if report.skipped:
            shown += f", {len(report.skipped)} bad rows skipped (first: {report.skipped[0]})"
        if prompts < 10:
            shown += "; too few for a run's train/val/test splits (at least 10)"
        return shown
    from polyray.io import iter_jsonl_objects
    from polyray.tasks.data import JsonlDataError

    if not task.skip_bad_lines:
        return f"{path}: {sum(1 for _ in iter_jsonl_objects(path, JsonlDataError))} problems"
    return f"{path}: {sum(1 for _ in Path(path).open('rb') if _.strip())} lines"
