"""``polyray interpolate RUN``: the SFT ↔ GRPO adapter-interpolation curve, chosen on validation, read on test.

No training. For each α of the grid, the adapter of W0 + (1 − α)·ΔW_from + α·ΔW_to
(:func:`polyray.models.interpolate.interpolate_adapters`, WiSE-FT, arXiv 2504.10478; docs/algorithms.md
§8) is written under ``<out>/adapters/a<α>/``; ``from`` defaults to the adapter the run started from
(its ``init_adapter``: an experiment branch's SFT adapter) or else the phase before ``to``, ``to`` to
the run's last phase. Then polyray's evaluation job (:func:`polyray.drivers.evaluate.run_eval`, the
same sampling, pass@k and diversity as ``polyray eval``) runs twice with the run's model, rollout,
task and eval settings:

1. on the task's **validation** split (``<out>/val/``): α is chosen there
   (:func:`choose_alpha`, by :func:`polyray.drivers.selection.best_keeping`: the best val pass@K among the α whose val pass@1
   is within ``tolerance`` of α = 1's, the 'to' adapter, which is always evaluated);
2. on the **test** split once (``<out>/test/``), every α in one job, for the curve's table; each α is
   compared with α = 1 over the test prompts (paired, Holm), nothing is chosen there.

``<out>/interpolation.json``: the grid, both adapters, the rule, the chosen α with ``selected_on:
validation``, and per α its validation and test pass@k and diversity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from polyray.config import RunConfig
from polyray.config.eval import EVAL_TASK_CONFIGS
from polyray.config.rollout import MaxLoraRank
from polyray.drivers.selection import SELECTED_ON, best_keeping
from polyray.io import ConfigError, console, load_yaml_model
from polyray.models.interpolate import alpha_label, check_alphas, interpolate_adapters, interpolated_rank
from polyray.tasks import diversities_for

REFERENCE = 1.0  # the 'to' adapter: the pass@1 the selection must keep


def resolve_endpoints(run_dir: Path, cfg: RunConfig, from_: str | None, to: str | None) -> tuple[Path, Path]:
    """(from adapter dir, to adapter dir): phases of ``run_dir`` or adapter/run directories; errors name the option."""
    from polyray.drivers.evaluate.models import resolve_adapter_dirs

    try:
        phases = dict(resolve_adapter_dirs(run_dir))
    except ValueError as exc:
        raise ConfigError(f"RUN: {exc}") from None
    names = list(phases)
    to_name = to or names[-1]
    if to_name not in phases:
        raise ConfigError(f"--to: the run has no adapter for phase {to_name!r} (phases: {names})")

    def other(value: str, option: str) -> Path:
        if value in phases:
            return phases[value]
        try:
            found = resolve_adapter_dirs(value)
        except ValueError as exc:
            raise ConfigError(f"{option}: {value!r} is not a phase of the run ({names}) and {exc}") from None
        if len(found) != 1:
            raise ConfigError(f"{option}: {value} holds {len(found)} adapters; name one adapter directory")
        return found[0][1]

    if from_ is not None:
        start = other(from_, "--from")
    elif cfg.init_adapter:
        start = other(cfg.init_adapter, "init_adapter (the run's starting adapter)")
    elif names.index(to_name) > 0:
        start = phases[names[names.index(to_name) - 1]]
    else:
        raise ConfigError(f"--from: the run started from no adapter and {to_name!r} is its first phase: name one")
    if start == phases[to_name]:
        raise ConfigError("--from and --to are the same adapter")
    return start, phases[to_name]


def lora_rank_slot(rank: int) -> int:
    """The smallest LoRA rank vLLM reserves for that holds ``rank``."""
    fits = [r for r in get_args(MaxLoraRank) if r >= rank]
    if not fits:
        raise ConfigError(
            f"the interpolated adapters' rank {rank} exceeds vLLM's largest ({max(get_args(MaxLoraRank))})"
        )
    return min(fits)


def eval_job(
    cfg: RunConfig,
    adapters: dict[float, Path],
    rank: int,
    split: str,
    n_prompts: int | None,
    n_samples: int | None,
    name: str,
):
    """The evaluation job of every α's adapter (of LoRA rank ``rank``) on ``split``, with the run's model, rollout,
    task and eval settings; vLLM's max_lora_rank raised to hold ``rank``."""
    from polyray.drivers.evaluate import EvalJobConfig

    n = n_samples or cfg.eval.n_samples
    ks = sorted({k for k in cfg.eval.ks if k <= n} | {min(n, max(cfg.eval.ks))})  # fewer samples: pass@n the largest
    task = cfg.task.model_dump()
    default_prompts = task.get(f"n_{split}")
    entry = EVAL_TASK_CONFIGS[cfg.task.type](
        **task, split=split, **({"n_prompts": n_prompts or default_prompts} if (n_prompts or default_prompts) else {})
    )
    rank = max(cfg.rollout.max_lora_rank, lora_rank_slot(rank))
    reference = alpha_label(REFERENCE)
    labels = [alpha_label(a) for a in adapters]
    return EvalJobConfig(
        name=name, seed=cfg.seed, model=cfg.model, rollout=cfg.rollout.model_copy(update={"max_lora_rank": rank}),
        cluster=cfg.cluster, tasks=[entry], n_samples=n, ks=ks, sampling=cfg.eval.sampling,
        diversity=diversities_for(cfg.eval.diversity, cfg.task.type),
        models=[{"name": label, "kind": "adapter", "path": str(p)} for label, p in zip(labels, adapters.values())],
        compare=[(label, reference) for label in labels if label != reference] if split == "test" else [],
        lora=[],
    )  # fmt: skip


def _metrics(results: dict[str, Any], label: str, ks: Sequence[int]) -> dict[str, float]:
    record = results["models"][label]
    out = {f"pass@{k}": record[f"pass@{k}"]["mean"] for k in ks}
    out.update(
        {key: (v["mean"] if isinstance(v, dict) else v) for key, v in record.items() if key.startswith("diversity/")}
    )
    return out


def choose_alpha(val_metrics: dict[float, dict[str, float]], ks: Sequence[int], tolerance: float) -> float:
    """The α to deploy, from validation metrics: the best pass@K (largest k) among the α whose pass@1
    (else pass@ at the smallest k) is at least α = 1's minus ``tolerance``; ties go to the larger α."""
    keep = "pass@1" if 1 in ks else f"pass@{min(ks)}"
    larger_first = sorted(val_metrics, reverse=True)  # best_keeping's ties go to the first
    return best_keeping({a: val_metrics[a][f"pass@{max(ks)}"] for a in larger_first},
                        {a: val_metrics[a][keep] for a in larger_first}, REFERENCE, tolerance)  # fmt: skip


def _check_request(run_dir: Path, alphas: Sequence[float], tolerance: float) -> tuple[RunConfig, list[float]]:
    """The run's resolved config and the α grid (with α = 1 added), or a ConfigError naming the bad input."""
    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        raise ConfigError(f"RUN: {run_dir} has no config.resolved.yaml (not a polyray run directory)")
    cfg = load_yaml_model(resolved, [], RunConfig)
    try:
        grid = check_alphas(alphas)
    except ValueError as exc:
        raise ConfigError(f"--{exc}") from None
    if tolerance < 0:
        raise ConfigError(f"--tolerance: must be >= 0, got {tolerance}")
    if REFERENCE not in grid:
        grid.append(REFERENCE)  # the 'to' adapter's pass@1 is what the choice keeps
    return cfg, grid


def run_interpolation(
    run_dir: str | Path,
    alphas: Sequence[float],
    from_: str | None = None,
    to: str | None = None,
    output_dir: str | Path | None = None,
    tolerance: float = 0.01,
    val_prompts: int | None = None,
    test_prompts: int | None = None,
    n_samples: int | None = None,
) -> dict[str, Any]:
    """Write every α's adapter, evaluate them on validation, choose α there, evaluate on test once; see the module doc."""
    from polyray.drivers.evaluate import run_eval
    from polyray.models.source import prepare_model_dir

    run_dir = Path(run_dir).resolve()
    cfg, grid = _check_request(run_dir, alphas, tolerance)
    start, end = resolve_endpoints(run_dir, cfg, from_, to)
    out = Path(output_dir or run_dir / "interpolate").resolve()
    rank = interpolated_rank(start, end)
    console.print(f"interpolating {start} (α = 0) -> {end} (α = 1) at α = {grid}; rank {rank}")
    with console.status("writing the interpolated adapters"):
        adapters = interpolate_adapters(
            prepare_model_dir(cfg.model, cfg.task), start, end, grid, out / "adapters", cfg.model.dtype
        )
    val_job = eval_job(cfg, adapters, rank, "val", val_prompts, n_samples, f"{cfg.name}-interpolate-val")
    val = run_eval(val_job, out / "val")
    ks, top = val_job.ks, max(val_job.ks)
    val_metrics = {a: _metrics(val, alpha_label(a), ks) for a in grid}
    chosen = choose_alpha(val_metrics, ks, tolerance)
    test_job = eval_job(cfg, adapters, rank, "test", test_prompts, n_samples, f"{cfg.name}-interpolate-test")
    test = run_eval(test_job, out / "test")  # read once, for the table: nothing is chosen on it
    test_metrics = {a: _metrics(test, alpha_label(a), ks) for a in grid}
    summary = {
        "run": str(run_dir),
        "from": str(start),
        "to": str(end),
        "alphas": grid,
        "model": "W0 + (1 - alpha) dW_from + alpha dW_to (peft cat combination, exact)",
        "selection": {
            "rule": f"max val pass@{top} among alpha with val pass@{1 if 1 in ks else min(ks)} >= that of alpha = 1"
            f" minus {tolerance}",
            "chosen": chosen,
            "selected_on": SELECTED_ON,
            "tolerance": tolerance,
            "among": {alpha_label(a): m for a, m in val_metrics.items()},
        },
        "curve": [
            {"alpha": a, "adapter": str(adapters[a]), "val": val_metrics[a], "test": test_metrics[a]} for a in grid
        ],
        "test_stats": test.get("stats", {}),
        "splits": {
            "val": {"n_prompts": val_job.tasks[0].n_prompts},
            "test": {"n_prompts": test_job.tasks[0].n_prompts},
        },
    }
    (out / "interpolation.json").write_text(json.dumps(summary, indent=2))
    show_curve(summary, ks, out)
    return summary


def show_curve(summary: dict[str, Any], ks: Sequence[int], out: Path) -> None:
    from rich.table import Table

    chosen = summary["selection"]["chosen"]
    table = Table(title="adapter interpolation (* = chosen on validation)")
    table.add_column("α", justify="right")
    for split in ("val", "test"):
        for k in ks:
            table.add_column(f"{split} pass@{k}", justify="right")
    for row in summary["curve"]:
        mark = " *" if row["alpha"] == chosen else ""
        table.add_row(f"{row['alpha']:g}{mark}", *(f"{row[s][f'pass@{k}']:.3f}" for s in ("val", "test") for k in ks))
    console.print(table)
    console.print(f"α = {chosen:g} chosen on validation: {summary['selection']['rule']}")
    console.print(f"written to {out} (interpolation.json, adapters/, val/, test/)")


def interpolate_seeds(
    runs: Sequence[str | Path],
    alphas: Sequence[float],
    summary_path: str | Path | None = None,
    tolerance: float = 0.01,
    **options: Any,
) -> dict[str, Any]:
    """:func:`run_interpolation` on each run (one per seed; a run whose ``interpolation.json`` has this α grid
    and tolerance is read back, not run again), then :func:`summarize_seeds`, written to ``summary_path``
    (default ``interpolation_seeds.json`` in the runs' common directory) and printed."""
    import os

    grid = sorted({*alphas, REFERENCE})
    done = []
    for run in map(Path, runs):
        previous = run / "interpolate" / "interpolation.json"
        found = json.loads(previous.read_text()) if previous.is_file() else None
        if found and sorted(found["alphas"]) == grid and found["selection"]["tolerance"] == tolerance:
            console.print(f"{run}: read back {previous}")
            done.append(found)
        else:
            done.append(run_interpolation(run, alphas, tolerance=tolerance, **options))
    result = summarize_seeds(done)
    out = Path(summary_path or Path(os.path.commonpath([Path(r).resolve() for r in runs])) / "interpolation_seeds.json")
    out.write_text(json.dumps(result, indent=2))
    show_seeds(result, out)
    return result


def _common_grid(summaries: Sequence[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """The α grid and the ks every seed's summary shares, or a ConfigError saying why they cannot be pooled."""
    if len(summaries) < 2:
        raise ConfigError(f"RUN: a summary over seeds needs 2 or more runs, got {len(summaries)}")
    grids = {tuple(s["alphas"]) for s in summaries}
    if len(grids) != 1:
        raise ConfigError(f"RUN: the runs were interpolated at different α grids {sorted(grids)}: use one --alphas")
    grid = list(next(iter(grids)))
    if 0.0 not in grid:
        raise ConfigError("--alphas: a summary over seeds compares with α = 0 ('from'): include 0")
    return grid, sorted(int(k.split("@")[1]) for k in summaries[0]["curve"][0]["test"] if k.startswith("pass@"))


def summarize_seeds(summaries: Sequence[dict[str, Any]], margin: float = 0.01) -> dict[str, Any]:
    """The curve over seeds: one :func:`run_interpolation` summary per seed (the same grid), on test.

    Per α, each test pass@k's mean and 95% t-interval over seeds, conditional on the test prompts; pass@1
    against α = 1 ('to', e.g. GRPO) by paired TOST at ±``margin`` (docs/algorithms.md §5) and the largest
    pass@k against α = 0 ('from', e.g. SFT) by paired t. Then the α each seed chose on validation, read on
    test as one model ("chosen"), with the same two tests and its largest pass@k against α = 1, Holm across
    those three. Pairing: every α of a seed is evaluated in one job, on the same prompts."""
    import numpy as np

    from polyray.eval.stats import equivalence_tost, holm, interval_over_seeds, paired_t

    grid, ks = _common_grid(summaries)
    top = f"pass@{max(ks)}"

    def values(alpha_of: Sequence[float], metric: str) -> np.ndarray:
        return np.array(
            [next(r for r in s["curve"] if r["alpha"] == a)["test"][metric] for s, a in zip(summaries, alpha_of)]
        )

    def at(alpha: float, metric: str) -> np.ndarray:
        return values([alpha] * len(summaries), metric)

    def equivalent_to(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return {"difference": float((a - b).mean()), **equivalence_tost(a, b, margin, paired=True).to_json()}

    def above(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return {"difference": float((a - b).mean()), **paired_t(a, b).to_json()}

    curve = []
    for alpha in grid:
        row: dict[str, Any] = {"alpha": alpha, **{f"pass@{k}": interval_over_seeds(at(alpha, f"pass@{k}")) for k in ks}}
        if alpha != REFERENCE:
            row["pass@1_vs_to"] = equivalent_to(at(alpha, "pass@1"), at(REFERENCE, "pass@1"))
        if alpha != 0.0:
            row[f"{top}_vs_from"] = above(at(alpha, top), at(0.0, top))
        curve.append(row)
    chosen = [s["selection"]["chosen"] for s in summaries]
    chosen_tests = {
        "pass@1_vs_to": equivalent_to(values(chosen, "pass@1"), at(REFERENCE, "pass@1")),
        f"{top}_vs_from": above(values(chosen, top), at(0.0, top)),
        f"{top}_vs_to": above(values(chosen, top), at(REFERENCE, top)),
    }
    holm_p = holm([t["pvalue"] if t["pvalue"] is not None else 1.0 for t in chosen_tests.values()]).adjusted
    for t, adjusted in zip(chosen_tests.values(), holm_p):
        t["pvalue_holm"] = adjusted
    return {
        "runs": [s["run"] for s in summaries],
        "alphas": grid,
        "ks": ks,
        "n_seeds": len(summaries),
        "conditional_on": "test prompts",
        "margin": margin,
        "curve": curve,
        "chosen": {
            "alphas": chosen,
            "selected_on": SELECTED_ON,
            "rule": summaries[0]["selection"]["rule"],
            **{f"pass@{k}": interval_over_seeds(values(chosen, f"pass@{k}")) for k in ks},
            "tests": chosen_tests,
        },
    }


def show_seeds(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    top = f"pass@{max(summary['ks'])}"

    def iv(v):
        return f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    def diff(t):
        return (
            f"{t['difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] p {t['pvalue']:.3g}"
            if t.get("pvalue") is not None
            else "–"
        )

    table = Table(
        title=f"adapter interpolation over {summary['n_seeds']} seeds (test; 95% t-interval, conditional on"
        " the test prompts)"
    )
    for column in ("α", "pass@1", top, "pass@1 − α=1 (90%, TOST)", f"{top} − α=0 (95%, paired t)"):
        table.add_column(column, justify="right")
    rows = [(f"{r['alpha']:g}", r) for r in summary["curve"]]
    rows.append((f"chosen {summary['chosen']['alphas']}", {**summary["chosen"], **summary["chosen"]["tests"]}))
    for label, r in rows:
        table.add_row(
            label, iv(r["pass@1"]), iv(r[top]), diff(r.get("pass@1_vs_to", {})), diff(r.get(f"{top}_vs_from", {}))
        )
    console.print(table)
    t = summary["chosen"]["tests"]
    holm = ", ".join(f"{name} {v['pvalue_holm']:.3g}" for name, v in t.items())
    console.print(
        f"chosen on validation, read on test: {top} − α=1 {diff(t[top + '_vs_to'])}; Holm across its 3 tests: {holm}"
    )
    console.print(f"written to {out}")
