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

Outputs (``<out>/``, written by :mod:`polyray.drivers.sweep_report`): ``sweep.json`` and ``sweep.csv`` (every trial's parameters and metrics), the
selected setting and the best trial by the objective, and ``report.html`` in the evaluation job's report format: per
setting of the non-seed axes the mean and 95% t-interval over seeds of pass@k, USQ and
diversity on validation, and of the chosen setting on test (conditional on the evaluation prompts,
which every seed shares: the interval is about new training runs on these prompts,
``conditional_on`` in sweep.json), pass@k on validation against the swept value, and the quality x
diversity Pareto frontier. Tune's own CSV and TensorBoard logs are under ``<out>/tune/``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyray.config import RunConfig
from polyray.config.sweep import Axis, Objective, SweepConfig
from polyray.drivers.results import RunResults
from polyray.drivers.selection import evaluate_chosen
from polyray.drivers.sweep_report import attach_test, chosen_trials, summarise, summary_table, write_outputs
from polyray.io import ConfigError, apply_overrides, console, format_validation_error, read_yaml_mapping
from polyray.tracking import run_metrics, tune_callbacks

# Tune's experiment directory under the sweep's output directory
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
# a trial's own request: its driver only (Tune refuses an empty one)
TRIAL_CPUS = 0.01
# what a candidate run evaluates its stages on (never the test set)
TRIAL_EVAL = {"eval": {"split": "val"}}


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
    # trials are candidates: the test set is read for the chosen setting only
    base = merge(base, TRIAL_EVAL)
    for params in _points(sweep):
        try:
            run = RunConfig.model_validate(apply_params(base, params))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{path}: space point {params}")) from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: space: {exc}") from None
    if sweep.num_samples > 1 and not sampled_axes(sweep):
        raise ConfigError(
            f"{path}: num_samples: {sweep.num_samples} repeats of a grid-only space would repeat its"
            " trials; add a seed axis instead"
        )
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
    params: dict[str, Any],
    *,
    bases: dict[str, dict],
    out: str,
    run_dir: Callable[[dict, str], str],
    prefix: str,
    derived: Callable[[dict], dict] | None = None,
    warm=None,
    gpus: dict | None = None,
) -> None:
    """Tune function trainable: one training run at ``params`` (``run`` picks a base, the rest are
    dotted fields) in ``out / run_dir(params, trial_id)``: started, continued if the directory holds an
    unfinished run, or only reported if it holds a finished one. Reports after each evaluation
    (:func:`polyray.tracking.run_metrics`); Tune's logger callbacks track trials, so the run's
    own tracker is off. ``derived(params)``: more config fields that follow from the parameters
    (an experiment's branch run gets its seed's starting adapter). ``warm``: what the trials share
    (:mod:`polyray.drivers.warm`), or None. ``gpus``: the cluster's GPUs as the sweep read them once
    (:func:`polyray.cluster.cluster_gpus`), so a trial never probes nodes its siblings' actors fill."""
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
    run = RunConfig.model_validate(
        {
            **apply_params(bases[params.get("run", "")], fields),
            "name": run_name(prefix, directory),
            "tracking": {"backend": "none"},
        }
    )

    def report(results: RunResults) -> None:
        metrics = run_metrics(directory, results.evaluations, results.test, results.eval_split)
        tune.report({**metrics, "run_dir": str(directory)})

    results = _finished_results(directory, run)
    if results is None:
        resume = (directory / "config.resolved.yaml").is_file()
        run_pipeline(run, directory, resume=resume, on_stage=report, warm=warm, gpus=gpus)
    else:
        report(results)


def _finished_results(directory: Path, run: RunConfig) -> RunResults | None:
    """The results of a run in ``directory`` that evaluated every phase, else None."""
    from polyray.drivers.results import read_results

    try:
        results = read_results(directory / "results.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return results if {"base", *(p.name for p in run.phases)} <= set(results.evaluations) else None


def sweep_cpus(run: RunConfig, concurrent: int) -> float:
    """Ray CPUs a sweep of ``run``'s trials holds at once: ``concurrent`` trials, each its run's actors and its
    own driver (:data:`TRIAL_CPUS`), sharing the reward apps' replicas."""
    from polyray.cluster import needed_cpus

    reward = run.reward.service_cpus()
    return (needed_cpus(run) - reward + TRIAL_CPUS) * concurrent + reward


def sweep_demands(runs: list[RunConfig]):
    """What the cluster must hold for a sweep of ``runs``' trials to start: one trial's rollout workers,
    learner ranks and driver, each kind at its largest over ``runs``, and the reward replicas the trials
    share. More trials at once are Tune's to place as the cluster has room (their pending placement
    groups are what an autoscaler grows for)."""
    from polyray.cluster import Demand, run_demands

    largest: dict[str, Demand] = {}
    for run in runs:
        for d in run_demands(run):
            held = largest.get(d.what)
            if held is None or _demand_size(d) > _demand_size(held):
                largest[d.what] = d
    return [*largest.values(), Demand("trial drivers", 1, {"CPU": TRIAL_CPUS})]


def _demand_size(d) -> tuple[float, float]:
    return d.count * d.bundle.get("GPU", 0.0), d.count * d.bundle.get("CPU", 0.0)


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
    variants: list[RunConfig] | None = None,
    shared: dict[str, Any] | None = None,
):
    """Run (or, with ``resume``, restore) the Tune experiment ``name`` of pipeline trials; returns
    Tune's ResultGrid. ``configs``: one run config per base, checked here before anything starts;
    ``prefix``: of every trial's run name (default ``name``); ``derived``: see :func:`pipeline_trial`;
    ``variants``: configs spanning what the trials may differ in (default ``configs``), which decide what
    they can share (:func:`polyray.drivers.warm.start_warm`); ``shared``: a holder whose ``"warm"`` is used,
    or set, for the caller's next call (the caller closes it), so two waves share one engine."""
    from ray import tune

    from polyray.cluster import check_gpus, cluster_gpus, init_ray, reads_gpu_memory, uses_gpus
    from polyray.drivers.preflight import check_inputs
    from polyray.models.source import prepare_model_dir

    for run in configs:
        # the user's data, once, before Ray starts (not once per trial)
        check_inputs(run)
    first = configs[0]
    # once, before trials race to build it
    prepare_model_dir(first.model, first.task)
    init_ray(first.cluster, sweep_cpus(first, max_concurrent), demands=sweep_demands(variants or configs))
    # read once, before the trials' actors fill the GPUs a probe would wait for (an experiment's later
    # waves find them filled by the engines the waves share: the first wave's reading is kept)
    gpus = (shared or {}).get("gpus")
    if gpus is None and any(map(uses_gpus, configs)):
        gpus = cluster_gpus(first.cluster.resource_wait_s, required=any(map(reads_gpu_memory, configs)))
        if shared is not None:
            shared["gpus"] = gpus
    for run in configs:
        check_gpus(run, gpus or {})
    # the reward apps serve every trial, deployed outside their placement groups
    if first.reward.endpoint:
        from polyray.config.run import custom_reward_functions
        from polyray.reward.service import ensure_reward_service

        ensure_reward_service(first.reward, custom_reward_functions(*configs), wait_s=first.cluster.resource_wait_s)
    from polyray.drivers.warm import start_warm

    warm = (shared or {}).get("warm")
    # engines and learner ranks the trials share, one after another
    if warm is None:
        warm = start_warm(variants or configs, max_concurrent)
        if shared is not None:
            shared["warm"] = warm
    trainable = tune.with_resources(
        tune.with_parameters(
            pipeline_trial,
            bases=bases,
            out=str(out),
            run_dir=run_dir,
            prefix=prefix or name,
            derived=derived,
            warm=warm,
            gpus=gpus,
        ),
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
                name=name,
                storage_path=str(tune_dir),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=1,
                callbacks=tune_callbacks(first.tracking, name),
            ),
        )
    try:
        return tuner.fit()
    finally:
        if warm is not None and shared is None:
            warm.close()


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
        raise ConfigError(
            f"--resume: {out / TUNE_DIR / sweep.name} holds no Tune experiment to restore; run without --resume"
        )
    if not resume and restorable:
        raise ConfigError(f"{out} already holds this sweep: continue it with --resume, or choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    first = RunConfig.model_validate(apply_params(base, _points(sweep)[0]))
    space = {k: axis.tune_domain() for k, axis in sweep.space.items()}
    run_dir = sampled_run_dir if sampled_axes(sweep) else grid_run_dir
    grid = run_trials(
        sweep.name,
        out,
        space,
        {"": base},
        run_dir,
        [first],
        num_samples=sweep.num_samples,
        max_concurrent=sweep.max_concurrent_trials,
        resume=resume,
        variants=[RunConfig.model_validate(apply_params(base, point)) for point in _points(sweep)],
    )
    summary = summarise(sweep, first, grid)
    summary = attach_test(summary, evaluate_selected_on_test(summary))
    write_outputs(out, summary)
    console.print(summary_table(summary))
    console.print(f"outputs in {out}")
    return summary


def evaluate_selected_on_test(summary: dict[str, Any]) -> dict[str, dict[str, float] | str]:
    """Run directory -> the test-set numbers of the objective's phase, for each trial of the selected
    setting (:func:`polyray.drivers.selection.evaluate_chosen`, once per trial: a re-run reads them back),
    or the error line of one that could not be evaluated. Needs Ray and the trials' directories."""
    phase = summary["objective"]["key"].split("/")[0]
    tested = evaluate_chosen([t["run_dir"] for t in chosen_trials(summary)], phase)
    return {
        d: r if isinstance(r, str) else {f"{phase}/{k}": v for k, v in r.scalars().items()} for d, r in tested.items()
    }
