"""``polyray eval CONFIG``: the evaluation job's command (registered in :mod:`polyray.cli`).

Heavy imports (Ray, vLLM, torch) happen inside the command so ``polyray --help`` stays
instant. A config that cannot be used ends with one ``error: ...`` line and exit code 2.
Also runnable on its own: ``python -m polyray.cli.evaluate CONFIG [--set K=V] [--output-dir DIR]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def eval_command(
    config: Path = typer.Argument(..., help="Eval config YAML, e.g. configs/eval/quickstart.yaml."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set models.2.path=runs/x (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
):
    """Sample n candidates per prompt for every model; write pass@k, USQ, diversity, statistics and a report."""
    from polyray.io import ConfigError
    from polyray.eval.job import load_eval_config, run_eval
    from polyray.models.source import ModelSourceError
    from polyray.tasks.jsonl import JsonlDataError

    try:
        cfg = load_eval_config(config, set_)
        run_eval(cfg, output_dir)
    except (ConfigError, ModelSourceError, JsonlDataError) as exc:
        _fail(str(exc))


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(eval_command)
    app()


if __name__ == "__main__":
    main()
