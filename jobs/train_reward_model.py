"""Ray job entrypoint for ``polyray model train-reward``: ``python -m jobs.train_reward_model --data X.jsonl --out DIR [--seed 0]``."""

from jobs import exit_process, run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("model", "train-reward", argv=argv)


if __name__ == "__main__":
    exit_process(main())
