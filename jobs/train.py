"""Ray job entrypoint for ``polyray run``: ``ray job submit --working-dir . -- python -m jobs.train configs/quickstart.yaml [--set K=V] [--resume]``."""

from jobs import exit_process, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("run", argv=argv)


if __name__ == "__main__":
    exit_process(main())
