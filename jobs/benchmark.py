"""Ray job entrypoint for ``polyray bench``: ``python -m jobs.benchmark all [--json bench.json]``."""

from jobs import exit_process, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("bench", argv=argv)


if __name__ == "__main__":
    exit_process(main())
