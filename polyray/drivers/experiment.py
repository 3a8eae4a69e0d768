"""``polyray experiment``: several runs x seeds on one Ray cluster, then one table with statistics.

An experiment file names a base run config, optionally the task every run trains on (any
task of the registry, in place of the base's), a set of *runs* (each a partial config merged
onto the base: usually its ``phases``) and the *models* to report, each ``run/phase``
(``base`` = the model before any phase). A run may *branch*: ``from: run/phase`` starts it,
per seed, from that run's adapter after that phase (``init_adapter``), so several recipes share
one SFT adapter per seed and differ only in what follows. Every run x seed is one Ray Tune
trial of the training pipeline (:mod:`polyray.drivers.sweep`: a grid over ``run`` and ``seed``),
``max_concurrent`` at once; the runs others branch from go first, as their own Tune experiment.
Running an experiment again (e.g. after an interruption, or with more seeds) reports
the runs it finished without running them, continues an unfinished one
(``run_pipeline(resume=True)``) and starts the new ones; a failed run is recorded and the
others go on. Aggregation (:mod:`polyray.drivers.experiment_report`, docs/algorithms.md §5): per model and metric, the mean and 95%
t-interval over seeds, conditional on the test prompts (every seed evaluates the same test split),
and a bootstrap interval that resamples seeds and those shared prompts jointly. A claim about a
model is a claim about its training runs, so the seed is the unit: per comparison, over the seeds
both models have, paired by seed id (a seed's models share the SFT start, training prompts,
sampling seeds and test prompts): a paired t-test with the interval of the mean difference, the
exact Wilcoxon signed-rank test (which cannot go below p = 0.0625 at 5 seeds) and d_z, and a TOST
equivalence test at a stated margin (``equivalence_margin``), each Holm-adjusted across all
comparisons x metrics of the experiment; an interval over seeds is labelled with what it holds
fixed (``conditional_on``). Prompts enter only within a seed: per seed a test paired by prompt,
and a bootstrap drawing seeds and one set of the shared prompts per resample for a CI of the
mean difference over seeds and prompts. Pooling prompts across seeds into one test would count
every test prompt once per seed and every run as more prompts.

Selection (``select``) is on validation only. A selection names candidate models, a validation
metric (``val/<m>``: each candidate run's last dynamics-probe measurement of its phase, on the
task's validation prompts) and a mode. The candidate with the best mean over seeds is reported
under the selection's label, with ``selected_on: validation`` and every candidate's value in
``selections``. The test set enters the table only for what was chosen, once: a run that reports no
model as is (every model of it a candidate, or none at all) runs with ``eval.split: val`` (its stage
evaluations on validation; :func:`candidate_runs`), and after the selection the chosen candidate's
phase is evaluated on test for each seed (:func:`polyray.drivers.selection.evaluate_on_test`, kept in
that run's results.json under ``test``, so a re-run does not evaluate it again). A test-set metric
is refused when the file is read.

An experiment can itself be a selection stage: ``split: val`` evaluates every run on the
validation prompts and reports and compares them there (the test set is never read), so that a
recipe can be chosen by the table's rule; a confirmation experiment then runs what was chosen on
test with fresh seeds (``--first-seed``: seeds first..first+N−1, none of them the selection's).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyray.config import RunConfig
from polyray.config.experiment import HEADLINE, ExperimentConfig
from polyray.config.sweep import SELECTED_ON
from polyray.drivers.experiment_report import aggregate, report_results, summary_table
from polyray.drivers.selection import best, error_line, evaluate_chosen
from polyray.drivers.sweep import TRIAL_EVAL, merge
from polyray.io import ConfigError, apply_overrides, console, format_validation_error, read_yaml_mapping


def seed_ids(seeds: int | Sequence[int]) -> list[int]:
    """The seed ids of an experiment: ``seeds`` as given, or 0..seeds−1 for a count."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def branch_adapter(out: Path, origin: str, seed: int) -> Path:
    """Where the run a branch starts from (``origin`` = 'run/phase') saves that phase's adapter."""
    run, _, phase = origin.partition("/")
    return Path(out) / "runs" / f"{run}-s{seed}" / "adapters" / phase


def _branch_fields(params: dict[str, Any], *, out: str, origins: dict[str, str]) -> dict[str, Any]:
    """A trial's seed-dependent fields: a branch run's starting adapter (see :func:`polyray.drivers.sweep.pipeline_trial`)."""
    origin = origins.get(params.get("run", ""))
    return {"init_adapter": str(branch_adapter(Path(out), origin, params["seed"]))} if origin else {}


def experiment_dir(exp: ExperimentConfig, output_dir: Path | None = None) -> Path:
    """The experiment's output directory: ``output_dir``, default ``runs/<name>``, absolute."""
    return Path(output_dir or Path("runs") / exp.name).resolve()


def load_experiment(
    path: str | Path, seeds: int | Sequence[int], out: Path | None = None, overrides: Sequence[str] = ()
) -> tuple[ExperimentConfig, dict[tuple[str, int], RunConfig]]:
    """The experiment and one validated :class:`RunConfig` per (run, seed); a branch run's
    ``init_adapter`` points into ``out`` (default ``runs/<name>``). ``overrides`` (``--set`` items)
    change the base run every run starts from."""
    path = Path(path)
    try:
        exp = ExperimentConfig.model_validate(read_yaml_mapping(path, "experiment file", allow_empty=True))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    base_path = (path.parent / exp.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {exp.base} not found")
    base = read_yaml_mapping(base_path, "base run config", allow_empty=True)
    if exp.task is not None:
        base["task"] = exp.task
    base = apply_overrides(base, list(overrides))
    configs = {}
    origins = exp.origins()
    out = experiment_dir(exp, out)
    candidates = candidate_runs(exp)
    ids = seed_ids(seeds)
    first = ids[0]
    for run_name, patch in exp.runs.items():
        patch = {k: v for k, v in patch.items() if k != "from"}
        for seed in ids:
            data = merge(base, {**patch, "name": f"{exp.name}-{run_name}-s{seed}", "seed": seed})
            # nothing of it is reported as is: its test set is read only if chosen
            if run_name in candidates or exp.split == "val":
                data = merge(data, TRIAL_EVAL)
            if run_name in origins:
                data["init_adapter"] = str(branch_adapter(out, origins[run_name], seed))
            try:
                configs[run_name, seed] = RunConfig.model_validate(data)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{path}: runs.{run_name}")) from None
        phases = {"base"} if configs[run_name, first].eval.base else set()
        phases |= {p.name for p in configs[run_name, first].phases}
        for label, ref in exp.models.items():
            run, _, phase = ref.partition("/")
            if run == run_name and phase not in phases:
                raise ConfigError(f"{path}: models.{label}: run {run!r} has no phase {phase!r} ({sorted(phases)})")
    for name, origin in origins.items():
        run, _, phase = origin.partition("/")
        if phase not in {p.name for p in configs[run, first].phases}:
            raise ConfigError(f"{path}: runs.{name}.from: run {run!r} has no phase {phase!r}")
    for label, sel in exp.select.items():
        for cand in sel.among:
            _check_selection(configs, exp.models[cand], sel.metric, f"{path}: select.{label}: {cand}")
    # a margin for a k no run evaluates would compare nothing
    if isinstance(exp.equivalence_margin, dict):
        ks = {k for run in configs.values() for k in run.eval.ks}
        for metric in exp.equivalence_margin:
            at = HEADLINE.match(metric)
            if metric != "*" and at.group(1) and int(at.group(2)) not in ks:
                raise ConfigError(
                    f"{path}: equivalence_margin: unknown metric {metric!r} (the runs' eval.ks are {sorted(ks)})"
                )
    return exp, configs


def candidate_runs(exp: ExperimentConfig) -> set[str]:
    """The runs that report no model as is: each of their models is a candidate of a selection (or they
    have none, e.g. a run others only branch from). They evaluate their stages on validation."""
    owner = {cand for sel in exp.select.values() for cand in sel.among}
    direct = {exp.models[label].partition("/")[0] for label in exp.models if label not in owner}
    return set(exp.runs) - direct


def evaluate_chosen_on_test(
    exp: ExperimentConfig, out: Path, seeds: int | Sequence[int], selections: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Each selection's chosen candidate evaluated on test, per seed that has its run
    (:func:`polyray.drivers.selection.evaluate_chosen`: once; a run that has it is only read). Returns
    '<run>-s<seed>' -> the error line of one that could not be evaluated."""
    errors: dict[str, str] = {}
    for sel in selections.values():
        if sel["run"] is None:
            continue
        run_name, _, phase = sel["run"].partition("/")
        directories = [out / "runs" / f"{run_name}-s{seed}" for seed in seed_ids(seeds)]
        tested = evaluate_chosen([d for d in directories if (d / "results.json").is_file()], phase)
        errors.update({Path(d).name: f"test evaluation: {r}" for d, r in tested.items() if isinstance(r, str)})
    return errors


def _check_selection(configs: dict[tuple[str, int], RunConfig], ref: str, metric: str, where: str) -> None:
    """The candidate ``ref`` (run/phase) measures ``metric`` on validation: its run's dynamics probe is on
    and measures that metric, and the phase is a trained one (``base`` has no probe)."""
    run_name, _, phase = ref.partition("/")
    run = next(cfg for (name, _), cfg in configs.items() if name == run_name)
    if phase == "base" or not run.dynamics.every:
        raise ConfigError(
            f"{where}: {ref} has no validation measurement (set dynamics.every in runs.{run_name}"
            " and select a trained phase)"
        )
    name = metric.removeprefix("val/")
    known = [f"pass@{k}" for k in run.dynamics.ks] + ["reward_mean"] + [f"diversity/{m}" for m in run.dynamics.metrics]
    if name not in known:
        raise ConfigError(f"{where}: the dynamics probe of runs.{run_name} measures {known}, not {name!r}")


def select_models(exp: ExperimentConfig, out: Path, seeds: int | Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per selection, its candidates' validation values per seed (the phase's last dynamics-probe
    measurement, :func:`polyray.tracking.run_metrics`) and the one with the best mean over the seeds
    that measured it (ties: the first listed); no test record is read."""
    from polyray.tracking import run_metrics

    selections: dict[str, dict[str, Any]] = {}
    for label, sel in exp.select.items():
        among: dict[str, dict[str, Any]] = {}
        for cand in sel.among:
            run_name, _, phase = exp.models[cand].partition("/")
            have = {}
            for seed in seed_ids(seeds):
                value = run_metrics(out / "runs" / f"{run_name}-s{seed}").get(f"{phase}/{sel.metric}")
                if value is not None:
                    have[seed] = float(value)
            among[cand] = {
                "run": exp.models[cand],
                "seeds": sorted(have),
                "values": [have[s] for s in sorted(have)],
                "mean": sum(have.values()) / len(have) if have else None,
            }
        chosen = best({c: among[c]["mean"] for c in sel.among}, sel.mode)
        selections[label] = {
            "chosen": chosen,
            "run": exp.models[chosen] if chosen else None,
            "metric": sel.metric,
            "mode": sel.mode,
            "selected_on": SELECTED_ON,
            "among": among,
        }
    return selections


def reported_models(exp: ExperimentConfig, selections: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Label -> 'run/phase' of every model of the table: a selection's chosen candidate under its label
    (None when no candidate was measured), the candidates themselves left out."""
    return {
        label: selections[label]["run"] if label in exp.select else exp.models[label] for label in exp.reported_labels()
    }


def _experiment_run_dir(params: dict[str, Any], trial_id: str) -> str:
    return f"runs/{params['run']}-s{params['seed']}"


def run_experiment(
    path: str | Path,
    seeds: int,
    output_dir: Path | None = None,
    overrides: Sequence[str] = (),
    first_seed: int = 0,
) -> dict[str, Any]:
    """Every run x seed as a Ray Tune trial (:func:`polyray.drivers.sweep.run_trials`). Each invocation is a
    new Tune experiment over the current runs and seeds (so added seeds or runs are scheduled);
    a run a previous invocation finished is only reported, and an unfinished one is continued.
    The seeds are ``first_seed`` .. ``first_seed + seeds − 1``."""
    import time

    from ray import tune

    from polyray.drivers.sweep import run_trials
    from polyray.drivers.sweep_report import trial_params

    ids = seed_ids(range(first_seed, first_seed + seeds))
    exp, configs = load_experiment(path, ids, output_dir, overrides)
    out = experiment_dir(exp, output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bases = {run_name: configs[run_name, ids[0]].model_dump(mode="json") for run_name in exp.runs}
    origins = exp.origins()
    derived = functools.partial(_branch_fields, out=str(out), origins=origins)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    errors: dict[str, str] = {}
    roots, branches = [r for r in exp.runs if r not in origins], [r for r in exp.runs if r in origins]
    # one engine and one rank keeper for both waves
    shared: dict[str, Any] = {}
    try:
        for wave, names in ((exp.name, roots), (f"{exp.name}-branches", branches)):
            ready = _ready_seeds(out, names, origins, ids, errors)
            if not names or not ready:
                continue
            space = {"run": tune.grid_search(names), "seed": tune.grid_search(ready)}
            grid = run_trials(
                f"{wave}-{stamp}",
                out,
                space,
                bases,
                _experiment_run_dir,
                [configs[r, ready[0]] for r in names],
                max_concurrent=exp.max_concurrent,
                prefix=exp.name,
                derived=derived,
                variants=[configs[r, ids[0]] for r in exp.runs],
                shared=shared,
            )
            for result in grid:
                if result.error is not None:
                    params = trial_params(result)
                    errors[f"{params.get('run', '?')}-s{params.get('seed', '?')}"] = error_line(result.error)
    finally:
        if shared.get("warm") is not None:
            shared["warm"].close()

    # select_models chooses on validation; only the chosen are evaluated on test
    errors.update(evaluate_chosen_on_test(exp, out, ids, select_models(exp, out, ids)))
    return _write_outputs(exp, out, ids, errors)


def _ready_seeds(out: Path, names: list[str], origins: dict[str, str], ids: list[int], errors: dict[str, str]):
    """The seeds whose runs in ``names`` can start: a branch needs its seed's starting adapter, and the
    root run may have failed (recorded in ``errors``)."""
    ready = list(ids)
    for seed in ids:
        missing = [r for r in names if r in origins and not branch_adapter(out, origins[r], seed).is_dir()]
        for r in missing:
            errors[f"{r}-s{seed}"] = f"not started: {origins[r]} of seed {seed} has no adapter (that run failed)"
        if missing:
            ready.remove(seed)
    return ready


def _write_outputs(exp: ExperimentConfig, out: Path, ids: list[int], errors: dict[str, str]) -> dict[str, Any]:
    """``experiment.json``, the report and the console summary of the experiment's runs so far."""
    summary = summarise(exp, out, ids)
    summary["errors"] = errors
    (out / "experiment.json").write_text(json.dumps(summary, indent=2))
    from polyray.eval.report import write_report

    write_report(out, report_results(exp, summary, out))
    console.print(summary_table(summary))
    for name, err in errors.items():
        console.print(f"[red]run {name} failed:[/red] {err.splitlines()[-1] if err else ''}")
    console.print(f"outputs in {out}")
    return summary


def summarise(exp: ExperimentConfig, out: Path, seeds: int | Sequence[int]) -> dict[str, Any]:
    """experiment.json's content (:func:`polyray.drivers.experiment_report.aggregate`) of the runs in ``out``:
    the selections are made on validation first, before any test record is read."""
    ids = seed_ids(seeds)
    selections = select_models(exp, out, ids)
    return aggregate(exp, out, ids, selections, reported_models(exp, selections))
