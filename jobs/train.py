"""Ray job entrypoint: ``ray job submit --working-dir . -- python -m jobs.train --config configs/quickstart.yaml``."""

import argparse
import sys

from polyray.config import load_config
from polyray.io import ConfigError, DataError
from polyray.models.source import ModelSourceError
from polyray.pipeline import run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="Run config YAML.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override.")
    parser.add_argument("--output-dir", default=None, help="Output directory (default runs/<name>/).")
    parser.add_argument("--resume", action="store_true", help="Continue the run in the output directory.")
    args = parser.parse_args(argv)
    try:
        run_pipeline(load_config(args.config, args.overrides), args.output_dir, args.resume)
    except (ConfigError, DataError, ModelSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
