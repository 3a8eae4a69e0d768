"""The evaluation job's outputs: strict JSON, the results document, the terminal table.

``results.json``'s ``models`` holds per label the unit's evaluation record in its JSON form
(:class:`polyray.eval.record.EvalRecord`: ``"pass@k": {mean, low, high}``, ``"usq@k"``,
``"reward_mean"``, ``"diversity/<name>"``, ``"der@k"``, ``"usq_by_selector"``, ...).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from polyray.config.eval_job import EvalJobConfig
from polyray.drivers.evaluate.plan import EvalUnit
from polyray.eval.record import Estimate, EvalRecord
from polyray.io import console, warn, write_json_atomic
from polyray.tasks import TASK_DIVERSITIES


def json_safe(o: Any) -> Any:
    """NaN/inf -> None, numpy -> Python, tuple keys stay out: strict JSON."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def assemble_results(
    cfg: EvalJobConfig,
    model_dir: Path,
    units: list[EvalUnit],
    tasks: dict,
    model_metrics: dict[str, EvalRecord],
    analyses: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """The ``results.json`` document (JSON-safe: NaN -> null, numpy -> Python)."""
    binary = not any(task.graded for _, task in tasks.values())
    results: dict[str, Any] = {
        "title": f"polyray evaluation: {cfg.name}",
        "name": cfg.name,
        "model_dir": str(model_dir),
        "ks": list(cfg.ks),
        "n_samples": cfg.n_samples,
        "usq_k": cfg.headline_k,
        "usq_selector": cfg.headline_selector,
        "selectors": cfg.effective_selectors,
        "diversity_metrics": list(cfg.diversity),
        "models": {label: record.to_json() for label, record in model_metrics.items()},
        "tasks": {
            name: {
                "type": tc.type,
                "split": tc.split,
                "n_prompts_requested": tc.n_prompts,
                "skipped_too_long": {u.model.name: len(u.skipped_ids) for u in units if u.task_name == name},
                "skipped_prompt_ids": {
                    u.model.name: u.skipped_ids for u in units if u.task_name == name and u.skipped_ids
                },
            }
            for name, (tc, _) in tasks.items()
        },
        "skipped": [
            {"task": u.task_name, "model": u.model.name, "reason": u.skip_reason} for u in units if u.skip_reason
        ],
        "table": {"usq_k": cfg.headline_k},
        "stats": analyses["stats"],
        "stats_skipped": analyses["stats_skipped"],
        "pareto": {
            "diversity": analyses["pareto_axis"],
            "quality_label": f"pass@{min(cfg.ks)}" if binary else "quality",
        },
        "pareto_frontier": analyses["frontier"],
        "dynamics": analyses["dynamics"],
        "lora": analyses["lora_rows"],
        "lora_differences": analyses["lora_diffs"],
        "timings_s": timings,
    }
    results["timings_s"]["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
    return json_safe(results)


def write_outputs(out: Path, results: dict[str, Any], rows: list[dict]) -> None:
    """``results.json``, ``samples.jsonl``, ``report.html`` and ``tables.tex``."""
    from polyray.eval.report import write_report, write_samples_jsonl

    write_json_atomic(out / "results.json", results)
    write_samples_jsonl(out / "samples.jsonl", rows)
    write_report(out, results)


def show_results(results: dict[str, Any], out: Path) -> None:
    if results["models"]:
        console.print(results_table(results))
    else:
        warn("no model was evaluated on any prompt (see results.json 'skipped')")
    console.print(f"outputs in {out}")


def results_table(results: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    from polyray.eval.record import metric_label

    ks = results["ks"]
    divs = [d for d in ("semantic", "distinct_2", *TASK_DIVERSITIES) if d in results["diversity_metrics"]][:2]
    table = Table(title=f"polyray eval: {results['name']}")
    table.add_column("model")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    table.add_column(f"USQ@{results['usq_k']} ({results['usq_selector']})", justify="right")
    table.add_column(f"oracle/random@{results['usq_k']}", justify="right")
    for d in divs:
        table.add_column(metric_label(d), justify="right")
    table.add_column("prompts", justify="right")

    def f(v: Estimate | None) -> str:
        if v is None or not math.isfinite(v.mean):
            return "–"
        return f"{v.mean:.3f}" + (f" ±{(v.high - v.low) / 2:.3f}" if v.has_interval else "")

    usq_k = results["usq_k"]
    for label, m in results["models"].items():
        rec = EvalRecord.from_json(m)
        u = rec.usq_by_selector.get(rec.usq_selector, {}).get(usq_k) or {}
        head = rec.usq_at_k.get(usq_k)
        bounds = f"{u['oracle']:.3f}/{u['random']:.3f}" if u else "–"
        cells = [f(rec.pass_at_k.get(k)) for k in ks] + [f(head) if head else "–", bounds]
        cells += [f(rec.diversity[d]) if d in rec.diversity else "–" for d in divs]
        cells.append(f"{rec.n_prompts}/{rec.extra.get('n_prompts_requested', rec.n_prompts)}")
        # "name [task]" is not rich markup
        table.add_row(escape(label), *cells)
    return table
