"""Ray job entrypoint: ``ray job submit --working-dir . -- python -m jobs.train --config configs/quickstart.yaml``."""

import argparse
import sys

from jobs import exit_code
from polyray.config import load_config
from polyray.pipeline import run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="Run config YAML.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override.")
    parser.add_argument("--output-dir", default=None, help="Output directory (default runs/<name>/).")
    parser.add_argument("--resume", action="store_true", help="Continue the run in the output directory.")
    parser.add_argument("--serve-generation", action="store_true", help="Serve the live policy (OpenAI API) meanwhile.")
    args = parser.parse_args(argv)
    return exit_code(lambda: run_pipeline(load_config(args.config, args.overrides), args.output_dir, args.resume,
                                          serve_generation=args.serve_generation))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
