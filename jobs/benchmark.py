"""Ray job entrypoint for ``polyray bench``: ``python -m jobs.benchmark all [--json bench.json]``."""

import sys

from jobs import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("bench", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
