"""``polyray sweep``: the training pipeline as Ray Tune trials (Ray Train V2 inside), resumable.

A sweep file names a base run config, optionally the task every trial trains on and a partial
config merged onto the base (``overrides``), and a search ``space``: config fields by dotted
path (``phases.0.lam``, ``seed``), each a ``grid``, ``choice``, ``uniform`` or ``loguniform``
axis. Every point is one Tune trial; a trial is a function trainable that calls
:func:`polyray.drivers.run.run_pipeline`, which builds one ``TorchTrainer`` per phase (the pattern Ray
documents for Train V2 inside Tune) and reports the final evaluation to Tune.

The same machinery runs ``polyray experiment``: its runs x seeds are a grid over ``run`` (which
partial config) and ``seed`` (:func:`run_trials`).

Resources. Under Train V2 a trial's own request covers only its driver, so the trial function
asks for a token 0.01 CPU; its rollout actors, Train workers and the reward replica request theirs.
``max_concurrent_trials`` (default 1) keeps concurrent trials within what the cluster has; the
reward service is one Serve application shared by all trials, deployed by the sweep's driver.
The rollout actors and adapter store of a trial are created outside its placement group
(``scheduling_strategy="DEFAULT"``); a trial that ends, fails or is stopped takes them with it
(they are its children). The user's data is checked once, by the driver, before Ray starts.

Stable directories. A trial's run directory is named after its parameters
(``trials/phases.0.lam=0.3,seed=1``; with sampled axes, also Tune's trial id, which a restore
keeps), so a trial restored by ``Tuner.restore`` (``--resume``) finds its run and continues it
with ``run_pipeline(resume=True)``: finished phases and evaluations are kept, a phase cut off
mid-way resumes from its latest Ray Train checkpoint (same storage path and name). A trial Tune
already recorded as finished is not run again, and a trial whose run had finished only reports it.
Tune starts a trial in its own directory; the trial changes back to where the sweep was started,
so relative paths in the config are the user's.

Selection. The objective is a validation metric (``val/<m>``: the dynamics probe's last
measurement of the phase on the task's validation prompts); a test metric is refused when the sweep
file is read. The chosen setting (``selected``) is the setting of the non-seed axes with the best
mean objective over its seeds, with ``selected_on: validation``.

The test set is read once, for the chosen setting. Every trial runs with ``eval.split: val``: its
stage evaluations are on the validation prompts (``<stage>/val_eval/<m>``), and no trial reads the
test set. After the selection, the driver evaluates the objective's phase of each of the chosen
setting's trials on test (:func:`polyray.drivers.selection.evaluate_on_test`: that phase's adapter from the
trial's store, recorded in the trial's results.json under ``test``; a sweep resumed after an
interruption evaluates only what is missing), and ``selected.test`` holds those numbers: the only
test numbers of the sweep.

Outputs (``<out>/``): ``sweep.json`` and ``sweep.csv`` (every trial's parameters and metrics), the
selected setting and the best trial by the objective, and ``report.html`` in the evaluation job's report format: per
setting of the non-seed axes the mean and 95% t-interval over seeds of pass@k, USQ and
diversity on validation, and of the chosen setting on test (conditional on the evaluation prompts,
which every seed shares: the interval is about new training runs on these prompts,
``conditional_on`` in sweep.json), pass@k on validation against the swept value, and the quality x
diversity Pareto frontier. Tune's own CSV and TensorBoard logs are under ``<out>/tune/``.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyray.config import RunConfig
from polyray.config.sweep import SELECTED_ON, Axis, Objective, SweepConfig
from polyray.drivers.selection import best, error_line, evaluate_chosen
from polyray.io import ConfigError, apply_overrides, console, format_validation_error, read_yaml_mapping
from polyray.tracking import run_metrics, tune_callbacks

TUNE_DIR = "tune"  # Tune's experiment directory under the sweep's output directory
TRIALS_DIR = "trials"
TRIAL_CPUS = 0.01  # a trial's own request: its driver only (Tune refuses an empty one)
TRIAL_EVAL = {"eval": {"split": "val"}}  # what a candidate run evaluates its stages on (never the test set)


def merge(base: dict, patch: dict) -> dict:
    """Deep merge of mappings; lists and scalars in ``patch`` replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_params(data: dict, params: dict[str, Any]) -> dict:
    """``data`` with each dotted path of ``params`` set to its value as is (list items by index)."""
    from polyray.io import set_path

    out = copy.deepcopy(data)
    for key, value in params.items():
        set_path(out, key.split("."), value)
    return out


def trial_slug(params: dict[str, Any]) -> str:
    """A stable, readable directory name for a point of the space."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)

    slug = ",".join(f"{k}={fmt(v)}" for k, v in sorted(params.items()))
    return "".join(c if c.isalnum() or c in "=,._-" else "_" for c in slug)[:200] or "trial"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[SweepConfig, dict[str, Any]]:
    """The sweep and its base run mapping (base + task + the sweep's overrides + ``--set`` items);
    every grid point is validated as a :class:`RunConfig` now, so a bad axis fails before anything starts."""
    path = Path(path)
    try:
        sweep = SweepConfig.model_validate(read_yaml_mapping(path, "sweep file", allow_empty=True))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    base = read_yaml_mapping((path.parent / sweep.base).resolve(), "base run config", allow_empty=True)
    if sweep.task is not None:
        base["task"] = sweep.task
    base = apply_overrides(merge(base, sweep.overrides), list(overrides))
    base = merge(base, TRIAL_EVAL)  # trials are candidates: the test set is read for the chosen setting only
    for params in _points(sweep):
        try:
            run = RunConfig.model_validate(apply_params(base, params))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{path}: space point {params}")) from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: space: {exc}") from None
    if sweep.num_samples > 1 and not sampled_axes(sweep):
        raise ConfigError(f"{path}: num_samples: {sweep.num_samples} repeats of a grid-only space would repeat its"
                          " trials; add a seed axis instead")  # fmt: skip
    _check_objective(sweep.objective, run, path)
    return sweep, base


def sampled_axes(sweep: SweepConfig) -> list[str]:
    return [name for name, axis in sweep.space.items() if axis.kind != "grid"]


def _check_objective(objective: Objective, run: RunConfig, path: Path) -> None:
    phases = [p.name for p in run.phases]
    if objective.phase is not None and objective.phase not in ["base", *phases]:
        raise ConfigError(f"{path}: objective.phase: no phase {objective.phase!r} (phases: {phases})")
    if not run.dynamics.every or (objective.phase or (phases or ["base"])[-1]) == "base":
        raise ConfigError(
            f"{path}: objective.metric {objective.metric!r} is measured on validation prompts by the dynamics"
            " probe during a phase: set dynamics.every (e.g. to the phases' steps) in overrides"
        )
    name = objective.metric.removeprefix("val/")
    known = [f"pass@{k}" for k in run.dynamics.ks] + ["reward_mean"] + [f"diversity/{m}" for m in run.dynamics.metrics]
    if name not in known:
        raise ConfigError(f"{path}: objective.metric: the dynamics probe measures {known}, not {name!r}")


def _axis_values(axis: Axis) -> list[Any]:
    """Every value an axis can give that a config could reject: all grid and choice values, both bounds."""
    return list(axis.grid or axis.choice or getattr(axis, axis.kind))


def _points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Points to validate: each value of each axis, the other axes at their first value (one axis at
    a time, so a large space costs a few validations, not its product)."""
    first = {name: _axis_values(axis)[0] for name, axis in sweep.space.items()}
    points = [first]
    for name, axis in sweep.space.items():
        points += [{**first, name: v} for v in _axis_values(axis)[1:]]
    return points


# ------------------------------------------------------------------------------ the trial
def run_name(prefix: str, directory: Path) -> str:
    """A run name (``[A-Za-z0-9_.-]``) from the experiment's name and the trial's directory."""
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in f"{prefix}-{directory.name}")[:120]


def pipeline_trial(
    params: dict[str, Any], *, bases: dict[str, dict], out: str, run_dir: Callable[[dict, str], str], prefix: str,
    derived: Callable[[dict], dict] | None = None,
) -> None:
    """Tune function trainable: one training run at ``params`` (``run`` picks a base, the rest are
    dotted fields) in ``out / run_dir(params, trial_id)``: started, continued if the directory holds an
    unfinished run, or only reported if it holds a finished one. Reports after each evaluation
    (:func:`polyray.tracking.run_metrics`); Tune's logger callbacks track trials, so the run's
    own tracker is off. ``derived(params)``: more config fields that follow from the parameters
    (an experiment's branch run gets its seed's starting adapter)."""
    import os

    from ray import tune

    # Tune runs a trial in its own directory: relative paths in the config (data files, a local
    # model) are the user's, relative to where the sweep was started
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from polyray.drivers.run import run_pipeline

    fields = {k: v for k, v in params.items() if k != "run"}
    fields.update(derived(params) if derived is not None else {})
    directory = Path(out) / run_dir(params, tune.get_context().get_trial_id())
    run = RunConfig.model_validate({**apply_params(bases[params.get("run", "")], fields),
                                    "name": run_name(prefix, directory), "tracking": {"backend": "none"}})  # fmt: skip

    def report(results: dict[str, Any]) -> None:
        tune.report({**run_metrics(results, directory), "run_dir": str(directory)})

    results = _finished_results(directory, run)
    if results is None:
        run_pipeline(run, directory, resume=(directory / "config.resolved.yaml").is_file(), on_stage=report)
    else:
        report(results)


def _finished_results(directory: Path, run: RunConfig) -> dict[str, Any] | None:
    """The results of a run in ``directory`` that evaluated every phase, else None."""
    from polyray.drivers.results import read_results

    try:
        results = read_results(directory / "results.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return results if {"base", *(p.name for p in run.phases)} <= set(results.get("phases", {})) else None


def sweep_cpus(run: RunConfig, concurrent: int) -> float:
    """Ray CPUs a sweep of ``run``'s trials holds at once: ``concurrent`` trials, each its run's actors and its
    own driver (:data:`TRIAL_CPUS`), sharing the reward apps' replicas."""
    from polyray.cluster import needed_cpus

    reward = run.reward.service_cpus()
    return (needed_cpus(run) - reward + TRIAL_CPUS) * concurrent + reward


def run_trials(
    name: str,
    out: Path,
    param_space: dict[str, Any],
    bases: dict[str, dict],
    run_dir: Callable[[dict, str], str],
    configs: list[RunConfig],
    *,
    num_samples: int = 1,
    max_concurrent: int = 1,
    resume: bool = False,
    prefix: str | None = None,
    derived: Callable[[dict], dict] | None = None,
):
    """Run (or, with ``resume``, restore) the Tune experiment ``name`` of pipeline trials; returns
    Tune's ResultGrid. ``configs``: one run config per base, checked here before anything starts;
    ``prefix``: of every trial's run name (default ``name``); ``derived``: see :func:`pipeline_trial`."""
    from ray import tune

    from polyray.cluster import init_ray
    from polyray.models.source import prepare_model_dir
    from polyray.drivers.run import check_inputs

    for run in configs:
        check_inputs(run)  # the user's data, once, before Ray starts (not once per trial)
    first = configs[0]
    prepare_model_dir(first.model, first.task)  # once, before trials race to build it
    init_ray(first.cluster, sweep_cpus(first, max_concurrent))
    if first.reward.endpoint:  # the reward apps serve every trial, deployed outside their placement groups
        from polyray.config.run import custom_reward_functions
        from polyray.reward.service import ensure_reward_service

        ensure_reward_service(first.reward, custom_reward_functions(*configs), wait_s=first.cluster.resource_wait_s)
    trainable = tune.with_resources(
        tune.with_parameters(pipeline_trial, bases=bases, out=str(out), run_dir=run_dir, prefix=prefix or name,
                             derived=derived),
        {"cpu": TRIAL_CPUS},
    )
    tune_dir = out / TUNE_DIR
    if resume:
        tuner = tune.Tuner.restore(str(tune_dir / name), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name=name, storage_path=str(tune_dir), failure_config=tune.FailureConfig(max_failures=1), verbose=1,
                callbacks=tune_callbacks(first.tracking, name),
            ),
        )
    return tuner.fit()


def grid_run_dir(params: dict[str, Any], trial_id: str) -> str:
    """A grid-only sweep's trial directory: its parameters say which point it is."""
    return f"{TRIALS_DIR}/{trial_slug(params)}"


def sampled_run_dir(params: dict[str, Any], trial_id: str) -> str:
    """A sampled sweep's trial directory: parameters and Tune's trial id (kept by a restore), since two
    trials may draw the same value."""
    return f"{TRIALS_DIR}/{trial_slug(params)[:160]}-{trial_id}"


def run_sweep(
    path: str | Path, output_dir: Path | None = None, resume: bool = False, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Run every trial of the sweep at ``path`` (or continue it), its base run changed by ``overrides``
    (``--set`` items); write and return its summary."""
    from ray import tune

    sweep, base = load_sweep(path, overrides)
    out = Path(output_dir or Path("runs") / sweep.name).resolve()
    restorable = tune.Tuner.can_restore(str(out / TUNE_DIR / sweep.name))
    if resume and not restorable:
        raise ConfigError(f"--resume: {out / TUNE_DIR / sweep.name} holds no Tune experiment to restore; run without --resume")
    if not resume and restorable:
        raise ConfigError(f"{out} already holds this sweep: continue it with --resume, or choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    first = RunConfig.model_validate(apply_params(base, _points(sweep)[0]))
    space = {k: axis.tune_domain() for k, axis in sweep.space.items()}
    run_dir = sampled_run_dir if sampled_axes(sweep) else grid_run_dir
    grid = run_trials(sweep.name, out, space, {"": base}, run_dir, [first],
                      num_samples=sweep.num_samples, max_concurrent=sweep.max_concurrent_trials, resume=resume)  # fmt: skip
    summary = summarise(sweep, first, grid)
    summary = attach_test(summary, evaluate_selected_on_test(summary))
    write_outputs(out, summary)
    console.print(summary_table(summary))
    console.print(f"outputs in {out}")
    return summary


# ------------------------------------------------------------------------------ outputs
# what a setting's t-interval over seeds holds fixed: each metric's prompts (test or validation set,
# drawn from the task's seed, so the same for every run seed)
CONDITIONAL_ON = "evaluation prompts (the same test or validation prompts for every seed)"
TEST_FOR = "the selected setting only"  # which trials' test sets are read: sweep.json's splits.test


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
    for result in grid:  # validation numbers only: the test set is evaluated for the selected setting afterwards
        metrics = {k: v for k, v in (result.metrics or {}).items()
                   if "/" in k and isinstance(v, (int, float)) and _on_validation(k)}  # fmt: skip
        trials.append({"params": trial_params(result), "metrics": metrics, "run_dir": (result.metrics or {}).get("run_dir"),
                       "error": error_line(result.error)})  # fmt: skip
    top = best({i: t["metrics"].get(objective) for i, t in enumerate(trials)}, sweep.objective.mode)
    best_trial = {**trials[top], "selected_on": SELECTED_ON} if top is not None else None
    grouped = settings(trials)
    return {"name": sweep.name, "objective": {"key": objective, "mode": sweep.objective.mode, "selected_on": SELECTED_ON},
            "axes": list(sweep.space), "trials": trials, "best": best_trial, "settings": grouped,
            "selected": select_setting(grouped, objective, sweep.objective.mode), "conditional_on": CONDITIONAL_ON,
            "splits": {"trials": "validation", "selection": SELECTED_ON, "test": TEST_FOR}}  # fmt: skip


def chosen_trials(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of the selected setting (every seed) that finished with a run directory; none when
    nothing was selected."""
    selected = summary.get("selected")
    if not selected:
        return []
    return [t for t in summary["trials"] if t["run_dir"] and not t["error"]
            and {k: v for k, v in t["params"].items() if k != "seed"} == selected["params"]]  # fmt: skip


def evaluate_selected_on_test(summary: dict[str, Any]) -> dict[str, dict[str, float] | str]:
    """Run directory -> the test-set numbers of the objective's phase, for each trial of the selected
    setting (:func:`polyray.drivers.selection.evaluate_chosen`, once per trial: a re-run reads them back),
    or the error line of one that could not be evaluated. Needs Ray and the trials' directories."""
    phase = summary["objective"]["key"].split("/")[0]
    tested = evaluate_chosen([t["run_dir"] for t in chosen_trials(summary)], phase)
    return {d: r if isinstance(r, str) else {f"{phase}/{k}": v for k, v in r.scalars().items()}
            for d, r in tested.items()}  # fmt: skip


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
        "split": "test", "phase": summary["objective"]["key"].split("/")[0],
        "seeds": sorted(chosen[d]["params"].get("seed", 0) for d in numbers),
        "metrics": {m: interval_over_seeds([v[m] for v in numbers.values() if m in v]) for m in names},
        "errors": {d: e for d, e in tested.items() if isinstance(e, str)},
    }  # fmt: skip
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
    return {"params": chosen["params"], "seeds": chosen["seeds"], "objective": objective,
            "value": chosen["metrics"][objective], "selected_on": SELECTED_ON,
            "candidates": {_label(s["params"]): s["metrics"][objective]["mean"] for s in scored}}  # fmt: skip


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
        stats = {name: interval_over_seeds([t["metrics"][name] for t in members if name in t["metrics"]])
                 for name in names}
        out.append({"params": json.loads(key), "seeds": sorted(t["params"].get("seed", 0) for t in members), "metrics": stats})
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
            writer.writerow([*(t["params"].get(k, "") for k in params), *(t["metrics"].get(k, "") for k in metrics),
                             *(t.get("test", {}).get(k, "") for k in tests), t["run_dir"] or "", t["error"] or ""])  # fmt: skip
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
    results: dict[str, Any] = {"title": f"polyray sweep: {summary['name']} ({phase}: every setting on validation,"
                                        " the test set for the selected one only; mean and 95% t-interval over"
                                        " seeds, conditional on the evaluation prompts; "
                                        + (f"{chosen} selected on validation)" if chosen else "nothing selected)"),
                               "models": models}  # fmt: skip
    if selected:
        results["selection"] = [{"what": "setting", "chosen": chosen, "metric": selected["objective"],
                                 "selected_on": selected["selected_on"], "among": selected["candidates"]}]
    if len(axes) == 1:
        results["axis"] = {"name": axes[0], "points": [
            {"x": s["params"][axes[0]],
             **{at_key("pass", k): v.to_json()
                for k, v in models[f"{_label(s['params'])} (validation)"].pass_at_k.items()}}
            for s in summary["settings"]]}  # fmt: skip
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
    table = Table(title=f"polyray sweep {summary['name']}: {phase}, mean [95% t-interval] over seeds (conditional on"
                        " the evaluation prompts); every setting on validation, the test set for the selected one only",
                  caption=(f"* selected on validation by mean {objective} over seeds; the test set chose nothing"
                           if chosen else "nothing selected: no test set was read"))  # fmt: skip
    table.add_column("setting")
    table.add_column("split")
    table.add_column("seeds", justify="right")
    table.add_column(objective.split("/", 1)[1] + " (selects)", justify="right")
    heads = ("pass@", "usq@", "diversity/")
    val_prefix = f"{phase}/{VAL_EVAL}/"
    tested = (selected or {}).get("test") or {}
    names = sorted({k[len(val_prefix):] for s in summary["settings"] for k in s["metrics"] if k.startswith(val_prefix)}
                   | {k.split("/", 1)[1] for k in tested.get("metrics", {})})  # fmt: skip
    names = [n for n in names if n.startswith(heads)]
    for name in names:
        table.add_column(name, justify="right")

    def cell(v):
        if v is None:
            return "-"
        return f"{v['mean']:.3f}" + (f" [{v['low']:.3f}, {v['high']:.3f}]" if v["low"] is not None else "")

    for s in summary["settings"]:
        label = _label(s["params"]) + (" *" if _label(s["params"]) == chosen else "")
        table.add_row(label, "validation", str(len(s["seeds"])), cell(s["metrics"].get(objective)),
                      *[cell(s["metrics"].get(val_prefix + n)) for n in names])  # fmt: skip
    if tested:
        table.add_row(f"{chosen} *", "test", str(len(tested["seeds"])), "-",
                      *[cell(tested["metrics"].get(f"{phase}/{n}")) for n in names])  # fmt: skip
    return table
