"""Analyses across the evaluated models: paired statistics, Pareto frontier, dynamics, LoRA parameters."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from polyray.config.eval_job import EvalJobConfig
from polyray.drivers.evaluate.models import ResolvedModel, dynamics_file
from polyray.eval.analysis import load_dynamics, lora_difference, lora_parameter_analysis, pareto_frontier
from polyray.eval.record import EvalRecord
from polyray.eval.stats import compare_many


def compute_statistics(
    cfg: EvalJobConfig, models: list[ResolvedModel], series: dict[tuple[str, str], dict], labels: dict
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Paired tests over the prompts both models were evaluated on; Holm across all comparisons."""
    pairs = cfg.compare
    if pairs is None:
        pairs = [(m.name, models[0].name) for m in models[1:]]
    tasks = list(dict.fromkeys(t for t, _ in series))
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = []
    for tname in tasks:
        for a, b in pairs:
            sa, sb = series.get((tname, a)), series.get((tname, b))
            if sa is None or sb is None:
                skipped.append({"comparison": f"{a} vs {b}", "task": tname, "reason": "a model was not evaluated"})
                continue
            for metric in cfg.effective_compare_metrics:
                if metric not in sa or metric not in sb:
                    continue
                common = [pid for pid in sa[metric] if pid in sb[metric]]
                label = f"{labels[(tname, a)]} vs {labels[(tname, b)]}: {metric}"
                if len(common) < 2:
                    skipped.append({"comparison": label, "task": tname, "reason": f"{len(common)} common prompts"})
                    continue
                entries[label] = (
                    np.array([sa[metric][p] for p in common], dtype=np.float64),
                    np.array([sb[metric][p] for p in common], dtype=np.float64),
                )
    stats = compare_many(
        entries,
        paired=True,
        alpha=cfg.alpha,
        confidence=cfg.confidence,
        n_resamples=cfg.bootstrap_resamples,
        seed=cfg.seed,
    )
    return stats, skipped


def compute_pareto(cfg: EvalJobConfig, model_metrics: dict[str, EvalRecord]) -> tuple[dict[str, list], str | None]:
    """Per task: models on the (quality, diversity) plane and whether each is non-dominated."""
    by_task: dict[str, list[tuple[str, EvalRecord]]] = {}
    for label, m in model_metrics.items():
        by_task.setdefault(m.extra["task"], []).append((label, m))
    axis = cfg.pareto_diversity
    if axis is None:
        names = [d for d in cfg.diversity if all(d in m.diversity for m in model_metrics.values())]
        axis = names[0] if names else None
    out: dict[str, list] = {}
    if axis is None:
        return out, None
    for tname, items in by_task.items():
        pts = [(label, m.quality.mean, m.diversity[axis].mean) for label, m in items if axis in m.diversity]
        pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
        mask = pareto_frontier(pts)
        out[tname] = [
            {"model": p[0], "quality": p[1], "diversity": p[2], "on_frontier": bool(on)} for p, on in zip(pts, mask)
        ]
    return out, axis


def collect_dynamics(cfg: EvalJobConfig, models: list[ResolvedModel]) -> list[dict[str, Any]]:
    """Records of the configured dynamics files (and of adapter run directories), labelled by run."""

    def label_of(path: Path) -> str:
        return path.parent.name if path.name == "dynamics.jsonl" else path.stem

    sources = [(f, label_of(f)) for f in (dynamics_file(Path(p)) for p in cfg.dynamics) if f is not None]
    if cfg.dynamics_from_runs:
        for m in models:
            f = dynamics_file(m.run_dir) if m.run_dir else None
            if f is not None:
                sources.append((f, m.name.split("/")[0]))
    records, seen = [], set()
    for path, label in sources:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        for rec in load_dynamics(path):
            # the file carries no run label: load_dynamics used the stem
            if rec.get("run") == path.stem:
                rec["run"] = label
            records.append(rec)
    return records


def collect_lora(cfg: EvalJobConfig, models: list[ResolvedModel]) -> tuple[dict[str, list], dict[str, list]]:
    """Per-adapter analyses (all adapters, or those in ``lora`` pairs, first pair first) and pair differences."""
    adapters = {m.name: m.adapter for m in models if m.adapter is not None}
    wanted = list(dict.fromkeys(n for pair in cfg.lora for n in pair)) if cfg.lora else list(adapters)
    rows = {name: lora_parameter_analysis(adapters[name]) for name in wanted}
    diffs = {f"{b} - {a}": lora_difference(rows[a], rows[b]) for a, b in (cfg.lora or [])}
    return rows, diffs
