"""A run's directory and ``results.json``: opened for a new run or checked for a resume, written after
every stage, read back, shown as a table.

``results.json`` holds per stage (``base``, each phase) the :class:`~polyray.eval.record.EvalRecord`
of its evaluation on ``eval.split`` (``eval_split``), in the record's JSON form, and under ``test``
the test evaluations a selection asked for afterwards (:mod:`polyray.drivers.selection`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.config import RunConfig
from polyray.eval.record import EvalRecord
from polyray.io import ConfigError, dump_config, write_json_atomic
from polyray.rollout.store import STORE_DIR

SPLIT_NAMES = {"test": "test", "val": "validation"}


def results_table(results: dict[str, Any], ks: list[int]) -> Table:
    """The stage evaluations' table (test set, or validation for a selection's candidate): per stage
    pass@k, USQ at the largest k, mean reward, distinct samples and, where measured, distinct
    expressions (two measures, two names: :data:`polyray.eval.record.METRIC_LABELS`)."""
    from polyray.eval.record import metric_label

    split = SPLIT_NAMES[results.get("eval_split", "test")]
    table = Table(
        title=f"polyray run: {split}-set evaluation"
        + (
            " (a candidate of a selection: the test set is evaluated for the chosen one only)"
            if split != "test"
            else ""
        )
    )
    table.add_column("model")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    usq = [k for k in ks if k > 1][-1:]  # USQ at the largest k (a selector ranking by likelihood)
    for k in usq:
        table.add_column(f"usq@{k}", justify="right")
    table.add_column("reward", justify="right")
    table.add_column(metric_label("distinct_samples"), justify="right")
    exprs = any("countdown_expr" in r.diversity for r in results["phases"].values())
    if exprs:
        table.add_column(metric_label("diversity/countdown_expr"), justify="right")
    nan = float("nan")
    for name, r in results["phases"].items():
        distinct = r.distinct_samples.mean if r.distinct_samples is not None else nan
        expr = (
            [f"{r.diversity['countdown_expr'].mean if 'countdown_expr' in r.diversity else nan:.2f}"] if exprs else []
        )
        table.add_row(
            name,
            *[f"{r.pass_at_k[k].mean:.3f}" for k in ks],
            *[f"{r.usq_at_k[k].mean if k in r.usq_at_k else nan:.3f}" for k in usq],
            f"{r.reward_mean.mean:.3f}",
            f"{distinct:.2f}",
            *expr,
        )
    return table


RECORD_KEYS = ("phases", "test")  # results.json's stage -> record mappings: on eval.split, and on test afterwards


def write_results(out: Path, results: dict[str, Any]) -> None:
    """``results.json``: the run's results with each stage's record in its JSON form."""
    records = {
        key: {name: EvalRecord.from_json(r).to_json() for name, r in results[key].items()}
        for key in RECORD_KEYS
        if key in results
    }
    write_json_atomic(out / "results.json", {**results, **records})


def read_results(path: Path) -> dict[str, Any]:
    """A run's ``results.json`` with each stage's record read back (:meth:`EvalRecord.from_json`)."""
    results = json.loads(Path(path).read_text())
    results["phases"] = {name: EvalRecord.from_json(r) for name, r in results.get("phases", {}).items()}
    if "test" in results:
        results["test"] = {name: EvalRecord.from_json(r) for name, r in results["test"].items()}
    return results


def open_run_dir(run: RunConfig, out: Path, resume: bool) -> dict[str, Any]:
    """Create ``out`` for a new run, or check it holds this run for ``resume``; returns the results so far.

    A resume may come from another working directory and Ray session: paths compare relative to the
    working directory and inputs by content (:mod:`polyray.config.resume`)."""
    import yaml

    from polyray.config.resume import read_inputs, record_inputs, resume_differences

    resolved = dump_config(run)
    config_file, results_file = out / "config.resolved.yaml", out / "results.json"
    started = config_file.is_file() or (out / "checkpoints").exists() or (out / STORE_DIR).exists()
    fresh = {"name": run.name, "eval_split": run.eval.split, "phases": {}, "versions": {}}
    if not resume:
        if started:
            raise ConfigError(f"{out} already holds a run: continue it with --resume, or choose another --output-dir")
        out.mkdir(parents=True, exist_ok=True)
        record_inputs(out, yaml.safe_load(resolved))
        config_file.write_text(resolved)
        return fresh
    if not config_file.is_file():
        raise ConfigError(f"--resume: {out} holds no run ({config_file.name} is missing)")
    changed = resume_differences(yaml.safe_load(config_file.read_text()), yaml.safe_load(resolved), read_inputs(out))
    if changed:
        raise ConfigError(f"--resume: the config differs from the run's {config_file} in: {', '.join(changed)}")
    if not results_file.is_file():
        return fresh
    results = read_results(results_file)
    results.setdefault("versions", {})
    results["resumed"] = results.get("resumed", 0) + 1
    return results


def stage_done(results: dict[str, Any], stage: str) -> None:
    """Log a finished stage in ``results["stages"]`` with the attempt that ran it (0, then 1 per resume)."""
    results.setdefault("stages", []).append({"stage": stage, "attempt": results.get("resumed", 0), "time": time.time()})
