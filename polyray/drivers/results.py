"""A run's directory and ``results.json``: opened for a new run or checked for a resume, written after
every stage, read back, shown as a table.

``results.json`` holds per stage (``base``, each phase) the :class:`~polyray.eval.record.EvalRecord`
of its evaluation on ``eval.split`` (``eval_split``), in the record's JSON form, and under ``test``
the test evaluations a selection asked for afterwards (:mod:`polyray.drivers.selection`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.config import RunConfig
from polyray.eval.record import EvalRecord
from polyray.io import ConfigError, dump_config, write_json_atomic
from polyray.rollout.store import STORE_DIR
from polyray.tasks import TASK_DIVERSITIES

SPLIT_NAMES = {"test": "test", "val": "validation"}


@dataclass
class RunResults:
    """A run's results: what ``results.json`` holds, evaluations and training phases named apart.

    ``evaluations``: stage (``base``, then each training phase by name) -> its evaluation on ``eval_split``
    (test, or val for a candidate of a selection), written as ``phases`` in the file; ``test``: stage -> the
    test-set evaluation a selection asked for afterwards; ``versions``: training phase -> the adapter
    version it ended at; ``stages``: every finished stage with the attempt that ran it (0, then 1 per
    resume). Keys of the file this record does not know are kept in ``extra`` and written back.
    """

    name: str = ""
    eval_split: str = "test"
    evaluations: dict[str, EvalRecord] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    test: dict[str, EvalRecord] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    resumed: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    model_dir: str | None = None
    quality_judge: dict[str, Any] | None = None
    # what the numbers depend on beyond the config (polyray.fingerprint)
    fingerprint: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        """The record of a ``results.json`` (its stage records as dicts or :class:`EvalRecord`)."""
        data = dict(data)
        records = {
            key: {k: EvalRecord.from_json(r) for k, r in (data.pop(key, None) or {}).items()}
            for key in ("phases", "test")
        }
        known = {
            "name",
            "eval_split",
            "versions",
            "stages",
            "resumed",
            "timings_s",
            "model_dir",
            "quality_judge",
            "fingerprint",
        }
        fields_ = {k: data.pop(k) for k in known & set(data)}
        return cls(evaluations=records["phases"], test=records["test"], **fields_, extra=data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "eval_split": self.eval_split,
            "phases": {k: r.to_json() for k, r in self.evaluations.items()},
            "versions": dict(self.versions),
        }
        if self.test:
            out["test"] = {k: r.to_json() for k, r in self.test.items()}
        optional = {
            "stages": self.stages,
            "resumed": self.resumed,
            "timings_s": self.timings_s,
            "model_dir": self.model_dir,
            "quality_judge": self.quality_judge,
            "fingerprint": self.fingerprint,
        }
        out.update({k: v for k, v in optional.items() if v})
        return {**self.extra, **out}

    def stage_done(self, stage: str) -> None:
        """Log a finished stage with the attempt that ran it."""
        self.stages.append({"stage": stage, "attempt": self.resumed, "time": time.time()})


def write_run_report(out: Path, results: RunResults) -> Path:
    """The run's ``report.html`` (and ``tables.tex``): its training curves (``metrics.jsonl``), its evaluations
    (pass@k, USQ, diversity) and the dynamics probe (``dynamics.jsonl``); a panel the run has no data for is
    left out. Returns the report's path."""
    from polyray.drivers.startup import STARTUP_FILE
    from polyray.eval.report import write_report
    from polyray.io import read_log_jsonl

    def rows(name: str) -> list[dict[str, Any]]:
        path = out / name
        return [{"run": results.name, **r} for r in read_log_jsonl(path)] if path.is_file() else []

    startup = out / STARTUP_FILE
    report = {
        "title": f"polyray run: {results.name}",
        "models": dict(results.evaluations),
        "startup": json.loads(startup.read_text()) if startup.is_file() else None,
        "training": rows("metrics.jsonl"),
        "dynamics": rows("dynamics.jsonl"),
    }
    return write_report(out, report, omit_missing=True)["html"]


def results_table(results: RunResults, ks: list[int]) -> Table:
    """The stage evaluations' table (test set, or validation for a selection's candidate): per stage
    pass@k, USQ at the largest k, mean reward, distinct samples and, where measured, distinct
    expressions (two measures, two names: :data:`polyray.eval.record.METRIC_LABELS`)."""
    from polyray.eval.record import metric_label

    split = SPLIT_NAMES[results.eval_split]
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
    # USQ at the largest k (a selector ranking by likelihood)
    usq = [k for k in ks if k > 1][-1:]
    for k in usq:
        table.add_column(f"usq@{k}", justify="right")
    table.add_column("reward", justify="right")
    table.add_column(metric_label("distinct_samples"), justify="right")
    # a task's own diversity (its answers told apart as the task reads them) where the run logged one
    own = [d for d in TASK_DIVERSITIES if any(d in r.diversity for r in results.evaluations.values())]
    for d in own:
        table.add_column(metric_label(f"diversity/{d}"), justify="right")
    # a multi-turn run's: pass@(smallest k) after the first turn and after the last
    turns = sorted({t for r in results.evaluations.values() for t in episode_turns(r)})
    by_turn = [f"turn{t}/pass@{ks[0]}" for t in (turns[:1] + turns[-1:] if len(turns) > 1 else turns)]
    for key in by_turn:
        table.add_column(key.replace("/", " "), justify="right")
    nan = float("nan")
    for name, r in results.evaluations.items():
        distinct = r.distinct_samples.mean if r.distinct_samples is not None else nan
        expr = [f"{r.diversity[d].mean if d in r.diversity else nan:.2f}" for d in own]
        table.add_row(
            name,
            *[f"{r.pass_at_k[k].mean:.3f}" for k in ks],
            *[f"{r.usq_at_k[k].mean if k in r.usq_at_k else nan:.3f}" for k in usq],
            f"{r.reward_mean.mean:.3f}",
            f"{distinct:.2f}",
            *expr,
            *[f"{r.extra.get(key, nan):.3f}" for key in by_turn],
        )
    return table


def episode_turns(record) -> list[int]:
    """The turns a multi-turn evaluation measured pass@k after (its ``turn<t>/pass@<k>`` extras)."""
    return sorted({int(key[4:].split("/", 1)[0]) for key in record.extra if key.startswith("turn") and "/pass@" in key})


def write_results(out: Path, results: RunResults) -> None:
    """``results.json``: the run's results in their JSON form, written whole or not at all."""
    write_json_atomic(out / "results.json", results.to_json())


def read_results(path: Path) -> RunResults:
    """A run's ``results.json`` read back (:meth:`RunResults.from_json`)."""
    return RunResults.from_json(json.loads(Path(path).read_text()))


def open_run_dir(run: RunConfig, out: Path, resume: bool) -> RunResults:
    """Create ``out`` for a new run, or check it holds this run for ``resume``; returns the results so far.

    A resume may come from another working directory and Ray session: paths compare relative to the
    working directory and inputs by content (:mod:`polyray.config.resume`)."""
    import yaml

    from polyray.config.resume import read_inputs, record_inputs, resume_differences

    resolved = dump_config(run)
    config_file, results_file = out / "config.resolved.yaml", out / "results.json"
    started = config_file.is_file() or (out / "checkpoints").exists() or (out / STORE_DIR).exists()
    fresh = RunResults(name=run.name, eval_split=run.eval.split)
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
    results.resumed += 1
    return results
