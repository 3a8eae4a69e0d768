"""``polyray bench experiment``: runs per hour of a fixed small experiment, cold against warm, side by side.

The experiment: the embedded default's model and task, one run (SFT then GRPO, a few steps each) over
``seeds`` seeds, as ``polyray experiment`` runs it (Ray Tune trials, one at a time). Cold: every phase a
Ray Train fit with fresh ranks (``learner.keep_ranks`` false), every trial its own rollout engines
(``rollout.share_across_trials`` false); warm (the defaults): the learner's ranks kept across phases and
trials, the engines shared by the trials (:mod:`polyray.drivers.warm`). Each mode runs as its own ``polyray experiment`` process, the modes
alternating for ``repeats`` rounds, so both see the same machine. Per mode: runs per hour (the trials
over the process's wall time, Ray's start and the model's preparation included) and each phase's fixed
cost: its stage time (``results.json``) less its optimizer steps' (``metrics.jsonl`` ``step_s``), the
time a phase spends starting, setting up and ending rather than training; and how busy the machine's
cores were (every process's CPU time over the wall time: what trials run at once could fill at most).
``concurrent`` adds a mode whose trials run that many at once.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from polyray.drivers.bench.common import console
from polyray.io import ConfigError, read_log_jsonl

MODES = {"cold": ["learner.keep_ranks=false", "rollout.share_across_trials=false"], "warm": []}


def experiment_file(
    directory: Path, base: str, sft_steps: int, grpo_steps: int, n_test: int, concurrent: int = 1
) -> Path:
    """The bench's experiment config, written into ``directory`` (``experiment.yaml``; with ``concurrent`` > 1,
    ``experiment-concurrent.yaml``, whose trials run ``concurrent`` at once)."""
    import yaml

    spec = {
        "name": "bench_experiment",
        "max_concurrent": concurrent,
        "base": str(Path(base).resolve()),
        "task": {"type": "countdown", "n_train": 512, "n_test": n_test},
        "runs": {
            "sft_grpo": {
                "phases": [
                    {"type": "sft", "name": "sft", "steps": sft_steps, "batch_size": 32, "lr": 2.0e-3},
                    {
                        "type": "grpo",
                        "name": "grpo",
                        "steps": grpo_steps,
                        "prompts_per_step": 16,
                        "group_size": 8,
                        "lr": 3.0e-3,
                        "kl_beta": 0.02,
                        "async_rollouts": True,
                        "max_lag": 1,
                        "learner_workers": 1,
                    },
                ],
                "dynamics": {"every": 0},
            }
        },
        "models": {"sft": "sft_grpo/sft", "grpo": "sft_grpo/grpo"},
    }
    path = directory / ("experiment.yaml" if concurrent == 1 else "experiment-concurrent.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_mode(path: Path, out: Path, seeds: int, sets: list[str]) -> dict[str, Any]:
    """One ``polyray experiment`` process: its wall time, and per run its stage timings and phase fixed costs."""
    cmd = [
        sys.executable,
        "-m",
        "polyray.cli",
        "experiment",
        str(path),
        "--seeds",
        str(seeds),
        "--output-dir",
        str(out),
    ]
    cmd += [arg for s in sets for arg in ("--set", s)]
    cpu_before, started = _machine_busy_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    busy = _machine_busy_s() - cpu_before
    # its own output says why: its last line, and the run directory
    if proc.returncode != 0:
        last = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"bench experiment: the {' '.join(sets) or 'warm'} run failed in {out}: {last}")
    runs = sorted((out / "runs").iterdir())
    fixed = {phase: [phase_fixed_cost(run, phase) for run in runs] for phase in ("sft", "grpo")}
    return {
        "wall_s": round(wall, 2),
        "runs": len(runs),
        "runs_per_hour": round(3600 * len(runs) / wall, 1),
        "fixed_s": fixed,
        "busy_cores": round(busy / wall, 2),
        "cpu_s_per_run": round(busy / len(runs), 1),
    }


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every process: Ray's, the engines', the ranks')."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# these and every *_s key: when and where, not what was computed
TIMING_KEYS = {"time", "canary_nodes"}


def run_numbers(run_dir: Path) -> dict[str, Any]:
    """What a run computed: its evaluations and adapter versions, and every step row but its timings."""
    results = json.loads((run_dir / "results.json").read_text())
    rows = [
        {k: v for k, v in row.items() if k not in TIMING_KEYS and not k.endswith("_s")}
        for row in read_log_jsonl(run_dir / "metrics.jsonl")
    ]
    return {"phases": results["phases"], "versions": results["versions"], "steps": rows}


def same_numbers(cold: Path, warm: Path) -> list[str]:
    """The runs (by directory name) whose numbers differ between a cold and a warm round."""
    return [d.name for d in sorted((cold / "runs").iterdir()) if run_numbers(d) != run_numbers(warm / "runs" / d.name)]


def phase_fixed_cost(run_dir: Path, phase: str) -> float:
    """``train_<phase>`` of the run's results.json less the phase's optimizer steps (``step_s`` summed)."""
    stage = json.loads((run_dir / "results.json").read_text())["timings_s"][f"train_{phase}"]
    steps = sum(r["step_s"] for r in read_log_jsonl(run_dir / "metrics.jsonl") if r.get("phase") == phase)
    return round(stage - steps, 2)


def bench_experiment(
    config: str,
    seeds: int = 3,
    repeats: int = 1,
    sft_steps: int = 20,
    grpo_steps: int = 20,
    n_test: int = 32,
    concurrent: int = 1,
) -> dict[str, Any]:
    """Cold and warm, alternating for ``repeats`` rounds; per mode its rounds and medians, and warm ÷ cold.
    With ``concurrent`` > 1 a third mode runs that many trials at once (each its own engines and ranks, as
    concurrent trials run), and its runs per hour are set beside warm's."""
    import psutil

    from polyray.config import load_config

    # a config that is not there or not valid: one line, before anything runs
    load_config(config)
    modes = dict(MODES, **({"concurrent": []} if concurrent > 1 else {}))
    rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    # kept when a run fails: its outputs say why
    tmp = Path(tempfile.mkdtemp(prefix="polyray-bench-experiment-"))
    path = experiment_file(tmp, config, sft_steps, grpo_steps, n_test)
    paths = {mode: path for mode in MODES}
    if concurrent > 1:
        paths["concurrent"] = experiment_file(tmp, config, sft_steps, grpo_steps, n_test, concurrent)
    differ: list[str] = []
    for r in range(repeats):
        for mode, sets in modes.items():
            console.print(f"round {r + 1}/{repeats}: {mode} ({seeds} runs)")
            rounds[mode].append(run_mode(paths[mode], tmp / f"{mode}-{r}", seeds, sets))
        for other in [m for m in modes if m != "cold"]:
            differ += [
                f"round {r + 1}: {other} {name}" for name in same_numbers(tmp / f"cold-{r}", tmp / f"{other}-{r}")
            ]
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {mode: _medians(rs) for mode, rs in rounds.items()}
    ratio = summary["warm"]["runs_per_hour"] / summary["cold"]["runs_per_hour"]
    out = {
        "seeds": seeds,
        "repeats": repeats,
        "steps": {"sft": sft_steps, "grpo": grpo_steps},
        "rounds": rounds,
        "summary": summary,
        "warm_over_cold_runs_per_hour": round(ratio, 2),
        "runs_compared": seeds * repeats * (len(modes) - 1),
        "runs_differing": differ,
        "cores": psutil.cpu_count() or 1,
    }
    if concurrent > 1:
        out["concurrent"] = concurrent
        out["concurrent_over_warm_runs_per_hour"] = round(
            summary["concurrent"]["runs_per_hour"] / summary["warm"]["runs_per_hour"], 2
        )
    return out


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs_per_hour": statistics.median(r["runs_per_hour"] for r in rounds),
        "wall_s": statistics.median(r["wall_s"] for r in rounds),
        "fixed_s": {p: statistics.median(v for r in rounds for v in r["fixed_s"][p]) for p in ("sft", "grpo")},
        "busy_cores": statistics.median(r["busy_cores"] for r in rounds),
        "cpu_s_per_run": statistics.median(r["cpu_s_per_run"] for r in rounds),
    }


def print_experiment(results: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"experiment: {results['seeds']} runs a round, {results['repeats']} round(s), median")
    for column in ("mode", "runs/hour", "wall s", "SFT fixed s", "GRPO fixed s", "busy cores", "CPU-s/run"):
        table.add_column(column, justify="right")
    for mode, m in results["summary"].items():
        table.add_row(
            mode,
            f"{m['runs_per_hour']:.1f}",
            f"{m['wall_s']:.1f}",
            f"{m['fixed_s']['sft']:.2f}",
            f"{m['fixed_s']['grpo']:.2f}",
            f"{m['busy_cores']:.2f}",
            f"{m['cpu_s_per_run']:.1f}",
        )
    console.print(table)
    console.print(f"warm ÷ cold runs per hour: {results['warm_over_cold_runs_per_hour']:.2f}")
    if "concurrent" in results:
        console.print(
            f"concurrent ({results['concurrent']} trials at once) ÷ warm runs per hour:"
            f" {results['concurrent_over_warm_runs_per_hour']:.2f}"
        )
    warm, cores = results["summary"]["warm"], results["cores"]
    console.print(
        f"the machine's {cores} cores busy {warm['busy_cores']:.2f} in the warm run: trials at once, at warm's CPU per"
        f" run ({warm['cpu_s_per_run']:.1f} CPU-s), could reach at most {cores / warm['busy_cores']:.2f}x warm"
    )
    differ = results["runs_differing"]
    against = "warm and concurrent" if "concurrent" in results else "warm"
    console.print(
        f"runs whose evaluations and step rows (timings aside) differ, {against} against cold: {len(differ)} of"
        f" {results['runs_compared']}" + (f" ({', '.join(differ)})" if differ else "")
    )
    for mode in results["rounds"]:
        fixed = [r["fixed_s"] for r in results["rounds"][mode]]
        console.print(
            f"{mode}: phase fixed cost by run, s: " + "; ".join(f"SFT {f['sft']}, GRPO {f['grpo']}" for f in fixed)
        )
