"""Benchmarks, each printed as figures measured side by side in one run (never asserted in tests).

``python -m jobs.benchmark polychromic [--steps 30]``
    polychromic SFT step time / standard SFT step time on the embedded default (same model,
    batch, learner and rollout pool), with where the polychromic step's time goes.
``python -m jobs.benchmark reward``
    the reward service: requests/s and p50/p99 latency on loopback for 1 and 32 clients,
    and the batched / unbatched throughput of the engagement model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=140)


def _step_stats(metrics_path: Path, phase: str, warmup: int) -> dict[str, float]:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    rows = [r for r in rows if r["phase"] == phase][warmup:]
    out = {"steps": len(rows), "step_s": statistics.median(r["step_s"] for r in rows)}
    for key in ("rollout_s", "diversity_s", "sync_s"):
        if key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
    return out


def bench_polychromic(
    steps: int, config: str, diversity: list[str], warmup: int = 3, with_async: bool = True
) -> dict[str, dict[str, float]]:
    """Run SFT, then polychromic SFT (per diversity function, and with rollouts one step ahead) for
    ``steps`` steps each from a fresh adapter, on one pool."""
    from polyray.config import load_config
    from polyray.learner.loop import run_phase
    from polyray.pipeline import build_model, init_ray, needed_cpus
    from polyray.rollout.pool import RolloutPool

    phases = [f"phases.0.steps={steps}", "phases.0.checkpoint_every=1000"]
    sft = load_config(config, phases)
    model_dir = build_model(sft)
    init_ray(sft.cluster, needed_cpus(sft))
    pool = RolloutPool.launch(str(model_dir), sft.rollout, sft.model.dtype)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="polyray-bench-") as tmp:
            out = Path(tmp)
            with console.status(f"standard SFT, {steps} steps"):
                version = run_phase(sft, 0, str(model_dir), out, pool, 0, None)["version"]
            results["sft"] = _step_stats(out / "metrics.jsonl", "sft", warmup)
            variants = [(name, []) for name in diversity]
            if with_async:
                variants.append((diversity[0], ["phases.0.async_rollouts=true", "phases.0.max_lag=1"]))
            for i, (name, extra) in enumerate(variants):
                label = f"polychromic_sft[{name}{', async' if extra else ''}]"
                poly = load_config(config, [*phases, "phases.0.type=polychromic_sft", f"phases.0.name=poly{i}",
                                            f"phases.0.diversity={name}", *extra])
                with console.status(f"{label}, {steps} steps"):
                    version = run_phase(poly, 0, str(model_dir), out, pool, version, None)["version"]
                results[label] = _step_stats(out / "metrics.jsonl", f"poly{i}", warmup)
    finally:
        pool.shutdown()
    return results


def print_polychromic(results: dict[str, dict[str, float]]) -> None:
    base = results["sft"]["step_s"]
    table = Table(title="polychromic SFT vs standard SFT: median step time (rank 0, after warm-up)")
    table.caption = "rollout s = generation the step waits for; update s = the rest (forward/backward, optimizer, broadcast)"
    for col in ("phase", "step s", "÷ SFT", "rollout s", "diversity s", "sync s", "update s"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for name, r in results.items():
        parts = [r.get(k, 0.0) for k in ("rollout_s", "diversity_s", "sync_s")]
        table.add_row(name, f"{r['step_s']:.3f}", f"{r['step_s'] / base:.2f}x",
                      *(f"{v:.3f}" for v in parts), f"{r['step_s'] - sum(parts):.3f}")
    console.print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("polychromic", help="polychromic SFT step time / SFT step time")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--diversity", nargs="+", default=["semantic", "countdown_expr"])
    p.add_argument("--json", default=None, help="Also write the figures here.")
    r = sub.add_parser("reward", help="reward service throughput and latency")
    r.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.which == "polychromic":
        results = bench_polychromic(args.steps, args.config, args.diversity)
        print_polychromic(results)
    else:
        from polyray.reward.bench import run_reward_benchmarks

        results = run_reward_benchmarks(console)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
