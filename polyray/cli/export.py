"""``polyray export RUN [--phase P] [--merge] [--out DIR] [--push-to-hub REPO]``: a run's adapter for other tools.

The work is :mod:`polyray.models.export`; this command shows a progress bar while a merge runs
and ends a missing run, phase, adapter or a failed upload in one ``error:`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from polyray.cli.common import user_errors


def export_command(
    run: Path = typer.Argument(..., help="A run's output directory, e.g. runs/quickstart."),
    phase: Optional[str] = typer.Option(None, "--phase", help="Which phase's adapter (default: the run's last phase)."),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Merge the adapter into the base: a full model in standard Hugging Face format (vLLM loads it).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Where to write (default RUN/export/<phase>, or RUN/export/<phase>-merged)."
    ),
    push_to_hub: Optional[str] = typer.Option(
        None, "--push-to-hub", help="Also upload the export to this hub model repository (owner/name; needs a token)."
    ),
):
    """Write one phase's LoRA adapter with the tokenizer and chat template, or (--merge) the merged model."""
    from polyray.io import make_progress
    from polyray.models.export import MERGE_STEPS, export_run
    from polyray.models.export import push_to_hub as upload

    with user_errors():
        if merge:
            with make_progress() as bar:
                task_id = bar.add_task("merging", total=len(MERGE_STEPS), info="")

                def step(name: str) -> None:
                    bar.update(task_id, completed=MERGE_STEPS.index(name), info=name)

                path = export_run(run, out, phase, merge=True, on_step=step)
                bar.update(task_id, completed=len(MERGE_STEPS), info="done")
        else:
            path = export_run(run, out, phase)
        typer.echo(f"exported to {path}")
        if push_to_hub:
            typer.echo(f"uploaded to {upload(path, push_to_hub)}")
