"""Ray job entrypoint for ``polyray run``: ``ray job submit --working-dir . -- python -m jobs.train configs/quickstart.yaml [--set K=V] [--resume]``."""

import sys

from jobs import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("run", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
