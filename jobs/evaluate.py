"""Ray job entrypoint for ``polyray eval``: ``ray job submit --working-dir . -- python -m jobs.evaluate configs/eval/quickstart.yaml``."""

from jobs import exit_process, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("eval", argv=argv)


if __name__ == "__main__":
    exit_process(main())
