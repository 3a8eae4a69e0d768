"""Ray job entrypoint: ``ray job submit --working-dir . -- python -m jobs.sweep --config configs/sweeps/lambda_seed.yaml``."""

import argparse
import sys

from polyray.io import ConfigError, DataError
from polyray.models.source import ModelSourceError
from polyray.sweep import run_sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="Sweep YAML.")
    parser.add_argument("--output-dir", default=None, help="Output directory (default runs/<name>/).")
    parser.add_argument("--resume", action="store_true", help="Restore the interrupted sweep in the output directory.")
    args = parser.parse_args(argv)
    try:
        run_sweep(args.config, args.output_dir, args.resume)
    except (ConfigError, DataError, ModelSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
