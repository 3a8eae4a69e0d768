"""``polyray eval CONFIG``: the evaluation job's command (registered in :mod:`polyray.cli`).

Heavy imports (Ray, vLLM, torch) happen inside the command so ``polyray --help`` stays
instant. A config that cannot be used ends with one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from polyray.cli.common import bounded_interrupt, user_errors


def eval_command(
    config: Path = typer.Argument(..., help="Eval config YAML, e.g. configs/eval/quickstart.yaml."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set models.2.path=runs/x (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where outputs go (default runs/<name>/)."),
):
    """Sample n candidates per prompt for every model; write pass@k, USQ, diversity, statistics and a report."""
    from polyray.drivers.evaluate import load_eval_config, run_eval

    with bounded_interrupt(), user_errors():
        run_eval(load_eval_config(config, set_), output_dir)
