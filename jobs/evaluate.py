"""Ray job entrypoint for the evaluation job.

    ray job submit --working-dir . -- python -m jobs.evaluate --config configs/eval/quickstart.yaml

Samples every configured model on every task through the rollout pool and writes
results.json, samples.jsonl, report.html and tables.tex (see polyray/eval/job/).
"""

import argparse
import sys

from jobs import exit_code
from polyray.eval.job import load_eval_config, run_eval


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Eval config YAML.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override.")
    parser.add_argument("--output-dir", default=None, help="Output directory (default runs/<name>/).")
    args = parser.parse_args(argv)
    return exit_code(lambda: run_eval(load_eval_config(args.config, args.overrides), args.output_dir))


if __name__ == "__main__":
    sys.exit(main())
