"""The ``polyray`` command line. Heavy imports live inside the commands so ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from polyray.cli.evaluate import eval_command
from polyray.cli.serve import serve_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train LLMs for k-candidate deployment on Ray.")
model_app = typer.Typer(no_args_is_help=True, help="Base models.")
app.add_typer(model_app, name="model")
app.add_typer(serve_app, name="serve", help="Ray Serve endpoints (reward service).")
app.command("eval")(eval_command)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load(config: Optional[Path], overrides: List[str]):
    from polyray.config import load_config
    from polyray.io import ConfigError

    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config YAML, e.g. configs/quickstart.yaml."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set learner.lora.r=16 (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in the output directory (same config): finished phases and evaluations are kept."
    ),
    serve_generation: bool = typer.Option(
        False, "--serve-generation",
        help="Serve the live policy over an OpenAI-compatible endpoint while the run lasts (settings: generation.*).",
    ),
):
    """Build/resolve the base model, train every phase on Ray, evaluate pass@k after each."""
    run_config = _load(config, set_)
    from polyray.io import ConfigError, DataError
    from polyray.models.source import ModelSourceError
    from polyray.pipeline import run_pipeline

    try:
        run_pipeline(run_config, output_dir, resume, serve_generation=serve_generation)
    except (ConfigError, DataError, ModelSourceError) as exc:
        _fail(str(exc))


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/experiments/two_phase.yaml."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per run (0..seeds-1)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
):
    """Run every run x seed of an experiment on Ray; write experiment.json and print mean ± CI and tests."""
    from polyray.io import ConfigError, DataError
    from polyray.experiment import run_experiment
    from polyray.models.source import ModelSourceError

    try:
        run_experiment(config, seeds, output_dir)
    except (ConfigError, DataError, ModelSourceError) as exc:
        _fail(str(exc))


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Sweep YAML, e.g. configs/sweeps/lambda_seed.yaml."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
    resume: bool = typer.Option(
        False, "--resume", help="Restore the interrupted sweep in the output directory: finished trials are kept."
    ),
):
    """Run every trial of a search space (Ray Tune, one training run per trial); write sweep.json/csv and a report."""
    from polyray.io import ConfigError, DataError
    from polyray.models.source import ModelSourceError
    from polyray.sweep import run_sweep

    try:
        run_sweep(config, output_dir, resume)
    except (ConfigError, DataError, ModelSourceError) as exc:
        _fail(str(exc))


@model_app.command("build-tiny")
def build_tiny(
    config: Optional[Path] = typer.Option(None, "--config", help="Run config whose model.tiny and task to build for."),
    set_: List[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write here instead of the cache."),
):
    """Train the tokenizer, build and pretrain the embedded tiny Qwen3 model (cached by content hash)."""
    run_config = _load(config, set_)
    from rich.progress import Progress

    from polyray.models.tiny import build_tiny_model

    with Progress() as bar:
        task_id = bar.add_task("pretraining", total=run_config.model.tiny.pretrain_steps)
        path = build_tiny_model(
            run_config.model.tiny, run_config.task, output_dir, progress=lambda s, n, loss: bar.update(task_id, completed=s)
        )
    typer.echo(str(path))


def main() -> None:
    app()
