"""``polyray sweep``'s results: the trials read from Tune, grouped by setting, the setting selected on
validation, and sweep.json, sweep.csv, report.html and the console table.

Nothing here runs anything: :mod:`polyray.drivers.sweep` runs the trials and evaluates the selected
setting's trials on test, once (:func:`polyray.drivers.selection.evaluate_chosen`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from polyray.config import RunConfig
from polyray.config.sweep import SELECTED_ON, SweepConfig
from polyray.drivers.selection import best, error_line

# what a setting's t-interval over seeds holds fixed: each metric's prompts (test or validation set,
# drawn from the task's seed, so the same for every run seed)
CONDITIONAL_ON = "evaluation prompts (the same test or validation prompts for every seed)"
# which trials' test sets are read: sweep.json's splits.test
TEST_FOR = "the selected setting only"


def _on_validation(key: str) -> bool:
    """Whether a trial metric ``<stage>/...`` was measured on validation (the probe's, or a stage evaluation's)."""
    from polyray.tracking import VAL_EVAL

    return key.split("/", 1)[-1].startswith(("val/", f"{VAL_EVAL}/"))


def _objective_key(sweep: SweepConfig, run: RunConfig) -> str:
    phase = sweep.objective.phase or (run.phases[-1].name if run.phases else "base")
    return f"{phase}/{sweep.objective.metric}"


def summarise(sweep: SweepConfig, run: RunConfig, grid) -> dict[str, Any]:
    """Every trial (parameters, metrics, status), the best one, per setting of the non-seed axes
    the mean and 95% t-interval over seeds, and the setting selected on validation."""
    objective = _objective_key(sweep, run)
    trials = []
    # validation numbers only: the test set is evaluated for the selected setting afterwards
    for result in grid:
        metrics = {
            k: v
            for k, v in (result.metrics or {}).items()
            if "/" in k and isinstance(v, (int, float)) and _on_validation(k)
        }
        trials.append(
            {
                "params": trial_params(result),
                "metrics": metrics,
                "run_dir": (result.metrics or {}).get("run_dir"),
                "error": error_line(result.error),
            }
        )
    top = best({i: t["metrics"].get(objective) for i, t in enumerate(trials)}, sweep.objective.mode)
    best_trial = {**trials[top], "selected_on": SELECTED_ON} if top is not None else None
    grouped = settings(trials)
    return {
        "name": sweep.name,
        "objective": {"key": objective, "mode": sweep.objective.mode, "selected_on": SELECTED_ON},
        "axes": list(sweep.space),
        "trials": trials,
        "best": best_trial,
        "settings": grouped,
        "selected": select_setting(grouped, objective, sweep.objective.mode),
        "conditional_on": CONDITIONAL_ON,
        "splits": {"trials": "validation", "selection": SELECTED_ON, "test": TEST_FOR},
    }


def chosen_trials(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of the selected setting (every seed) that finished with a run directory; none when
    nothing was selected."""
    selected = summary.get("selected")
    if not selected:
        return []
    return [
        t
        for t in summary["trials"]
        if t["run_dir"]
        and not t["error"]
        and {k: v for k, v in t["params"].items() if k != "seed"} == selected["params"]
    ]


def attach_test(summary: dict[str, Any], tested: dict[str, dict[str, float] | str]) -> dict[str, Any]:
    """``summary`` with the selected setting's test numbers (``tested``: run directory -> numbers or an
    error line, of its trials only) as ``selected.test``: per metric the mean and 95% t-interval over the
    seeds tested, each trial's own under its ``test``; no other setting gets any."""
    from polyray.eval.stats import interval_over_seeds

    selected = summary.get("selected")
    if not selected:
        return summary
    chosen = {t["run_dir"]: t for t in chosen_trials(summary)}
    unknown = sorted(set(tested) - set(chosen))
    if unknown:
        raise ValueError(f"test numbers for {unknown[0]}, which is no trial of the selected setting")
    numbers = {d: v for d, v in tested.items() if isinstance(v, dict)}
    for directory, values in numbers.items():
        chosen[directory]["test"] = values
    names = sorted({m for v in numbers.values() for m in v})
    selected["test"] = {
        "split": "test",
        "phase": summary["objective"]["key"].split("/")[0],
        "seeds": sorted(chosen[d]["params"].get("seed", 0) for d in numbers),
        "metrics": {m: interval_over_seeds([v[m] for v in numbers.values() if m in v]) for m in names},
        "errors": {d: e for d, e in tested.items() if isinstance(e, str)},
    }
    return summary


def select_setting(groups: list[dict[str, Any]], objective: str, mode: str) -> dict[str, Any] | None:
    """The setting with the best mean ``objective`` (a validation metric) over its seeds; ties: the first.
    None when no setting measured it."""
    if not objective.split("/", 1)[-1].startswith("val/"):
        raise ValueError(f"a sweep selects on validation metrics only, not {objective!r}")
    scored = [s for s in groups if objective in s["metrics"]]
    top = best({i: s["metrics"][objective]["mean"] for i, s in enumerate(scored)}, mode)
    if top is None:
        return None
    chosen = scored[top]
    return {
        "params": chosen["params"],
        "seeds": chosen["seeds"],
        "objective": objective,
        "value": chosen["metrics"][objective],
        "selected_on": SELECTED_ON,
        "candidates": {_label(s["params"]): s["metrics"][objective]["mean"] for s in scored},
    }


def trial_params(result) -> dict[str, Any]:
    """A Tune result's parameters: its config, or for a trial that never reported (its config then
    is None in Ray 2.60) the ``params.json`` Tune wrote into its directory."""
    if result.config:
        return dict(result.config)
    try:
        return json.loads((Path(result.path) / "params.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}


def settings(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials grouped by every parameter but ``seed``: per metric mean, 95% t-interval over seeds, n
    (:func:`polyray.eval.stats.interval_over_seeds`)."""
    from polyray.eval.stats import interval_over_seeds

    groups: dict[str, list[dict]] = {}
    for t in trials:
        key = json.dumps({k: v for k, v in sorted(t["params"].items()) if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(t)
    out = []
    for key, members in groups.items():
        names = sorted({m for t in members for m in t["metrics"]})
        stats = {
            name: interval_over_seeds([t["metrics"][name] for t in members if name in t["metrics"]]) for name in names
        }
        out.append(
            {"params": json.loads(key), "seeds": sorted(t["params"].get("seed", 0) for t in members), "metrics": stats}
        )
    return out


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    """``sweep.json``, ``sweep.csv`` (a row per trial: parameters, validation metrics, then the test
    metrics that only the selected setting's trials have, named ``test:<metric>``) and ``report.html``."""
    from polyray.eval.report import write_report
    from polyray.io import write_json_atomic

    write_json_atomic(out / "sweep.json", summary)
    params = sorted({k for t in summary["trials"] for k in t["params"]})
    metrics = sorted({k for t in summary["trials"] for k in t["metrics"]})
    tests = sorted({k for t in summary["trials"] for k in t.get("test", {})})
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*params, *metrics, *(f"test:{k}" for k in tests), "run_dir", "error"])
        for t in summary["trials"]:
            writer.writerow(
                [
                    *(t["params"].get(k, "") for k in params),
                    *(t["metrics"].get(k, "") for k in metrics),
                    *(t.get("test", {}).get(k, "") for k in tests),
                    t["run_dir"] or "",
                    t["error"] or "",
                ]
            )
    write_report(out, report_results(summary))


def _label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "all"


def report_results(summary: dict[str, Any]) -> dict[str, Any]:
    """The sweep as the evaluation report's ``results`` (polyray.eval.report): a model per setting
    of the non-seed axes on validation (``<setting> (validation)``: its trials' stage evaluations),
    and the selected setting on test (``<setting> (test)``), values mean and CI over seeds, of the
    objective's phase."""
    from polyray.eval.record import at_key, records_from_summaries
    from polyray.tracking import VAL_EVAL

    phase = summary["objective"]["key"].split("/")[0]
    val = {f"{_label(s['params'])} (validation)": s["metrics"] for s in summary["settings"]}
    models = records_from_summaries(val, prefix=f"{phase}/{VAL_EVAL}/")
    axes = [a for a in summary["axes"] if a != "seed"]
    selected = summary.get("selected")
    chosen = _label(selected["params"]) if selected else None
    tested = (selected or {}).get("test") or {}
    if tested.get("metrics"):
        models.update(records_from_summaries({f"{chosen} (test)": tested["metrics"]}, prefix=f"{phase}/"))
    results: dict[str, Any] = {
        "title": f"polyray sweep: {summary['name']} ({phase}: every setting on validation,"
        " the test set for the selected one only; mean and 95% t-interval over"
        " seeds, conditional on the evaluation prompts; "
        + (f"{chosen} selected on validation)" if chosen else "nothing selected)"),
        "models": models,
    }
    if selected:
        results["selection"] = [
            {
                "what": "setting",
                "chosen": chosen,
                "metric": selected["objective"],
                "selected_on": selected["selected_on"],
                "among": selected["candidates"],
            }
        ]
    if len(axes) == 1:
        results["axis"] = {
            "name": axes[0],
            "points": [
                {
                    "x": s["params"][axes[0]],
                    **{
                        at_key("pass", k): v.to_json()
                        for k, v in models[f"{_label(s['params'])} (validation)"].pass_at_k.items()
                    },
                }
                for s in summary["settings"]
            ],
        }
    return results


def summary_table(summary: dict[str, Any]):
    """A row per setting on validation (the objective and the stage evaluations), and one more for the
    selected setting on test: the sweep's only test numbers."""
    from rich.table import Table

    from polyray.tracking import VAL_EVAL

    phase = summary["objective"]["key"].split("/")[0]
    objective = summary["objective"]["key"]
    selected = summary.get("selected")
    chosen = _label(selected["params"]) if selected else None
    table = Table(
        title=f"polyray sweep {summary['name']}: {phase}, mean [95% t-interval] over seeds (conditional on"
        " the evaluation prompts); every setting on validation, the test set for the selected one only",
        caption=(
            f"* selected on validation by mean {objective} over seeds; the test set chose nothing"
            if chosen
            else "nothing selected: no test set was read"
        ),
    )
    table.add_column("setting")
    table.add_column("split")
    table.add_column("seeds", justify="right")
    table.add_column(objective.split("/", 1)[1] + " (selects)", justify="right")
    heads = ("pass@", "usq@", "diversity/")
    val_prefix = f"{phase}/{VAL_EVAL}/"
    tested = (selected or {}).get("test") or {}
    names = sorted(
        {k[len(val_prefix) :] for s in summary["settings"] for k in s["metrics"] if k.startswith(val_prefix)}
        | {k.split("/", 1)[1] for k in tested.get("metrics", {})}
    )
    names = [n for n in names if n.startswith(heads)]
    for name in names:
        table.add_column(name, justify="right")

    def cell(v):
        if v is None:
            return "-"
        return f"{v['mean']:.3f}" + (f" [{v['low']:.3f}, {v['high']:.3f}]" if v["low"] is not None else "")

    for s in summary["settings"]:
        label = _label(s["params"]) + (" *" if _label(s["params"]) == chosen else "")
        table.add_row(
            label,
            "validation",
            str(len(s["seeds"])),
            cell(s["metrics"].get(objective)),
            *[cell(s["metrics"].get(val_prefix + n)) for n in names],
        )
    if tested:
        table.add_row(
            f"{chosen} *",
            "test",
            str(len(tested["seeds"])),
            "-",
            *[cell(tested["metrics"].get(f"{phase}/{n}")) for n in names],
        )
    return table
