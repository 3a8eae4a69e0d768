"""Ray job entrypoint: ``python -m jobs.train_reward_model --data X.jsonl --out DIR [--seed 0]``.

Trains the engagement reward model (frozen MiniLM + ridge head, see
polyray/reward/engagement.py), prints validation/test metrics next to a constant
predictor, and writes the model plus ``metrics.json`` to ``--out``.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.table import Table

from polyray.io import JsonlReport, make_console
from polyray.reward.engagement import EngagementDataError, train_engagement_model


def metrics_table(metrics: dict) -> Table:
    table = Table(title=f"engagement model ({metrics['rows']} rows, ridge penalty {metrics['ridge_penalty']:g})")
    for column in ("split", "predictor", "Spearman", "Pearson", "MSE", "MAE", "n"):
        table.add_column(column, justify="left" if column in ("split", "predictor") else "right")
    for split in ("val", "test"):
        for label, m in (("model", metrics[split]), ("constant", metrics[f"{split}_constant_baseline"])):
            table.add_row(
                split,
                label,
                f"{m['spearman']:.3f}",
                f"{m['pearson']:.3f}",
                f"{m['mse']:.3f}",
                f"{m['mae']:.3f}",
                str(m["n"]),
            )
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="JSONL with {prompt, response, engagement} per line.")
    parser.add_argument("--out", required=True, help="Output directory for the model and metrics.json.")
    parser.add_argument("--seed", type=int, default=0, help="Split seed.")
    parser.add_argument(
        "--skip-bad-lines", action="store_true", help="Leave out bad lines (counted and reported) instead of stopping."
    )
    args = parser.parse_args(argv)
    console, errors = make_console(stderr=False, min_width=120), make_console()
    report = JsonlReport()
    try:
        with console.status("embedding and fitting"):
            metrics = train_engagement_model(
                args.data, args.out, seed=args.seed, skip_bad_lines=args.skip_bad_lines, report=report
            )
    except EngagementDataError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)  # one line, never folded
        return 2
    if report.skipped:
        errors.print(f"[yellow]warning:[/yellow] {report.summary(args.data)}", highlight=False)
        metrics["skipped_lines"] = report.skipped
    (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    console.print(metrics_table(metrics))
    console.print(f"model and metrics.json written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
