"""Ray job entrypoint: ``ray job submit --working-dir . -- python -m jobs.sweep --config configs/sweeps/lambda_seed.yaml``."""

import argparse
import sys

from jobs import exit_code
from polyray.sweep import run_sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="Sweep YAML.")
    parser.add_argument("--output-dir", default=None, help="Output directory (default runs/<name>/).")
    parser.add_argument("--resume", action="store_true", help="Restore the interrupted sweep in the output directory.")
    args = parser.parse_args(argv)
    return exit_code(lambda: run_sweep(args.config, args.output_dir, args.resume))


if __name__ == "__main__":
    sys.exit(main())
