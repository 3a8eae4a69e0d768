"""Ray job entrypoints (``python -m jobs.<name> ...``): each is one ``polyray`` command, with the
same arguments, parser and exit codes (``polyray/cli/``), so a job and a terminal run alike."""

from __future__ import annotations

import sys

from polyray.lifetime import exit_process, exit_status

__all__ = ["exit_process", "run_command"]


def run_command(*command: str, argv: list[str] | None = None) -> int:
    """``polyray <command> <argv>`` (argv defaults to this process's arguments); its exit status."""
    from polyray.cli import main

    spec = sys.modules["__main__"].__spec__
    try:
        main(
            [*command, *(sys.argv[1:] if argv is None else argv)],
            prog_name=f"python -m {spec.name}" if spec else "polyray",
        )
    except SystemExit as exc:
        return exit_status(exc)
    return 0
