"""The ``polyray`` command line. Heavy imports live inside the commands so ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from polyray.cli.bench import bench_app
from polyray.cli.check import check_command
from polyray.cli.common import bounded_interrupt, user_errors
from polyray.cli.evaluate import eval_command
from polyray.cli.export import export_command
from polyray.cli.serve import serve_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train LLMs for k-candidate deployment on Ray.")
model_app = typer.Typer(no_args_is_help=True, help="Base models.")
app.add_typer(model_app, name="model")
app.add_typer(
    serve_app,
    name="serve",
    help="Ray Serve endpoints: the reward service and the OpenAI-compatible generation service.",
)
app.add_typer(bench_app, name="bench")
app.command("eval")(eval_command)
app.command("check")(check_command)
app.command("export")(export_command)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"polyray {version('polyray')}")
        # run from a checkout that was never installed
        except PackageNotFoundError:
            typer.echo("polyray (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print polyray's version and exit."
    ),
) -> None:
    """Train LLMs for k-candidate deployment on Ray."""


def _load(config: Optional[Path], overrides: List[str]):
    from polyray.config import load_config

    with user_errors():
        return load_config(config, overrides)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config YAML, e.g. configs/quickstart.yaml."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set learner.lora.r=16 (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in the output directory (same config): finished phases and evaluations are kept.",
    ),
    serve_generation: bool = typer.Option(
        False,
        "--serve-generation",
        help="Serve the live policy over an OpenAI-compatible endpoint while the run lasts (settings: generation.*).",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Print Ray's, Serve's, vLLM's and transformers' log lines here instead of the run's library.log.",
    ),
):
    """Build/resolve the base model, train every phase on Ray, evaluate pass@k after each."""
    run_config = _load(config, set_)
    from polyray.drivers.run import run_pipeline

    with bounded_interrupt(), user_errors():
        run_pipeline(run_config, output_dir, resume, serve_generation=serve_generation, verbose=verbose)


@app.command()
def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/experiments/two_phase.yaml."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds per run (first-seed..first-seed+seeds-1)."),
    first_seed: int = typer.Option(
        0, "--first-seed", min=0, help="The first seed id (fresh seeds for a confirmation)."
    ),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
    set_: List[str] = typer.Option(
        [], "--set", help="Override a field of the base run: --set learner.threads=2 (repeatable)."
    ),
):
    """Run every run x seed of an experiment on Ray; write experiment.json and print mean ± CI and tests."""
    from polyray.drivers.experiment import run_experiment

    with bounded_interrupt(), user_errors():
        run_experiment(config, seeds, output_dir, set_, first_seed=first_seed)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Sweep YAML, e.g. configs/sweeps/lambda_seed.yaml."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
    resume: bool = typer.Option(
        False, "--resume", help="Restore the interrupted sweep in the output directory: finished trials are kept."
    ),
    set_: List[str] = typer.Option(
        [], "--set", help="Override a field of the base run: --set learner.threads=2 (repeatable)."
    ),
):
    """Run every trial of a search space (Ray Tune, one training run per trial); write sweep.json/csv and a report."""
    from polyray.drivers.sweep import run_sweep

    with bounded_interrupt(), user_errors():
        run_sweep(config, output_dir, resume, set_)


@app.command()
def interpolate(
    runs: List[Path] = typer.Argument(
        ...,
        help="Run directory whose adapter is α = 1, e.g. runs/k_candidate/runs/grpo_group-s0;"
        " several (one per seed): each, then the curve over seeds.",
    ),
    alphas: str = typer.Option(
        "0,0.25,0.5,0.75,1",
        "--alphas",
        help="Comma-separated α in [-1, 2] (1 is always added; outside [0, 1] extrapolates), e.g. --alphas=-0.5,0.5.",
    ),
    from_: Optional[str] = typer.Option(
        None, "--from", help="α = 0: a phase of RUN or an adapter directory (default: the adapter RUN started from)."
    ),
    to: Optional[str] = typer.Option(None, "--to", help="α = 1: a phase of RUN (default: its last)."),
    other: Optional[str] = typer.Option(
        None,
        "--other",
        help="A third adapter (a phase of RUN or an adapter directory): mix W0 + αΔW_to + bΔW_other instead,"
        " at every (α, b) of --alphas x --other-coefs (no --from).",
    ),
    other_coefs: Optional[str] = typer.Option(
        None, "--other-coefs", help="With --other: comma-separated b in [-1, 1.5] (default 0,0.5,1)."
    ),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Chosen α keeps val pass@1 within this of α = 1's."),
    val_prompts: Optional[int] = typer.Option(
        None, "--val-prompts", min=1, help="Validation prompts (default: the task's n_val)."
    ),
    test_prompts: Optional[int] = typer.Option(
        None, "--test-prompts", min=1, help="Test prompts (default: the task's n_test)."
    ),
    n_samples: Optional[int] = typer.Option(
        None, "--n-samples", min=1, help="Samples per prompt (default: the run's eval)."
    ),
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", help="Where outputs go (default RUN/interpolate/; one RUN)."
    ),
    summary: Optional[Path] = typer.Option(
        None,
        "--summary",
        help="Several RUNs: the curve over seeds goes here (default interpolation_seeds.json beside the runs).",
    ),
    validation_only: bool = typer.Option(
        False,
        "--validation-only",
        help="Evaluate on validation only (the test set is not read): for a first stage that must not see test.",
    ),
):
    """Interpolate two LoRA adapters (W0 + (1-α)ΔW_from + αΔW_to, no training); choose α on validation, report test.

    With --other, mixes W0 + αΔW_to + bΔW_other over a grid of (α, b) instead, chosen the same way (each ΔW
    is its adapter's whole delta from the base). With several RUNs (one per seed) each is interpolated (a RUN
    whose interpolation.json has the same grid is read back, not run again), then the curve over seeds: mean
    and t-interval per point, paired tests against α = 1 and α = 0 (with --other, b = 1 alone), and the point
    each seed chose on validation read on test. With --validation-only no test job runs and the curve over seeds
    is on validation."""
    from polyray.cli.common import fail
    from polyray.drivers.interpolate import interpolate_seeds, run_interpolation

    def numbers(text: str, option: str) -> list[float]:
        try:
            return [float(a) for a in (x.strip() for x in text.split(",")) if a]
        except ValueError:
            fail(f"{option}: {text!r} is not a comma-separated list of numbers")

    values = numbers(alphas, "--alphas")
    if len(runs) > 1 and output_dir is not None:
        fail("--output-dir: one RUN only (several write to each RUN/interpolate/)")
    options = {
        "from_": from_,
        "to": to,
        "val_prompts": val_prompts,
        "test_prompts": test_prompts,
        "n_samples": n_samples,
        "other": other,
        "other_coefs": None if other_coefs is None else numbers(other_coefs, "--other-coefs"),
        "validation_only": validation_only,
    }
    with bounded_interrupt(), user_errors():
        if len(runs) == 1:
            run_interpolation(runs[0], values, output_dir=output_dir, tolerance=tolerance, **options)
        else:
            interpolate_seeds(runs, values, summary, tolerance, **options)


@model_app.command("build-tiny")
def build_tiny(
    config: Optional[Path] = typer.Option(None, "--config", help="Run config whose model.tiny and task to build for."),
    set_: List[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write here instead of the cache."),
    shipped: bool = typer.Option(
        True,
        "--shipped/--no-shipped",
        help="Copy the build polyray ships for this model where it ships one; --no-shipped pretrains anyway (to"
        " check or refresh the shipped bytes in polyray/models/embedded/).",
    ),
):
    """Train the tokenizer, build and pretrain the embedded tiny Qwen3 model (cached by content hash)."""
    run_config = _load(config, set_)
    from rich.progress import Progress

    from polyray.models.tiny import build_tiny_model

    with Progress() as bar:
        task_id = bar.add_task("pretraining", total=run_config.model.tiny.pretrain_steps)
        path = build_tiny_model(
            run_config.model.tiny,
            run_config.task,
            output_dir,
            progress=lambda s, n, loss: bar.update(task_id, completed=s),
            use_shipped=shipped,
        )
    typer.echo(str(path))


@model_app.command("train-reward")
def train_reward(
    data: Path = typer.Option(..., "--data", help="JSONL with {prompt, response, engagement} per line."),
    out: Path = typer.Option(..., "--out", help="Output directory for the model and metrics.json."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    skip_bad_lines: bool = typer.Option(
        False, "--skip-bad-lines", help="Leave out bad lines (counted and reported) instead of stopping."
    ),
):
    """Train the engagement reward model (frozen MiniLM + ridge head); print its validation and test
    metrics beside a constant predictor; write the model and metrics.json to --out."""
    import json

    from polyray.io import JsonlReport, make_console
    from polyray.reward.engagement import train_engagement_model

    console, errors = make_console(stderr=False, min_width=120), make_console()
    report = JsonlReport()
    with user_errors(), console.status("embedding and fitting"):
        metrics = train_engagement_model(data, out, seed=seed, skip_bad_lines=skip_bad_lines, report=report)
    if report.skipped:
        errors.print(f"[yellow]warning:[/yellow] {report.summary(data)}", highlight=False)
        metrics["skipped_lines"] = report.skipped
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(_engagement_table(metrics))
    console.print(f"model and metrics.json written to {out}")


def _engagement_table(metrics: dict):
    from rich.table import Table

    table = Table(title=f"engagement model ({metrics['rows']} rows, ridge penalty {metrics['ridge_penalty']:g})")
    for column in ("split", "predictor", "Spearman", "Pearson", "MSE", "MAE", "n"):
        table.add_column(column, justify="left" if column in ("split", "predictor") else "right")
    for split in ("val", "test"):
        for label, m in (("model", metrics[split]), ("constant", metrics[f"{split}_constant_baseline"])):
            table.add_row(split, label, *(f"{m[k]:.3f}" for k in ("spearman", "pearson", "mse", "mae")), str(m["n"]))
    return table


def main(args: Optional[List[str]] = None, prog_name: Optional[str] = None) -> None:
    app(args=args, prog_name=prog_name)


def entry() -> None:
    """The ``polyray`` command's process (``[project.scripts]``, ``python -m polyray.cli``): :func:`main`, then
    an exit without the native libraries' teardown (:func:`polyray.lifetime.exit_process`)."""
    from polyray.lifetime import exit_process, exit_status

    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exit_status(exc)
    # outside the handler: the exception and the frames it holds are gone before the clean-up, as at sys.exit
    exit_process(code)
