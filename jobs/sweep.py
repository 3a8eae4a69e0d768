"""Ray job entrypoint for ``polyray sweep``: ``ray job submit --working-dir . -- python -m jobs.sweep configs/sweeps/lambda_seed.yaml [--resume]``."""

from jobs import exit_process, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("sweep", argv=argv)


if __name__ == "__main__":
    exit_process(main())
