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
others go on. Aggregation (docs/algorithms.md §5): per model and metric, the mean and 95%
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
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from polyray.config import RunConfig
from polyray.config.experiment import HEADLINE, ExperimentConfig, headline_metrics
from polyray.config.sweep import SELECTED_ON
from polyray.drivers.selection import best, error_line, evaluate_chosen, record_on_test
from polyray.drivers.sweep import TRIAL_EVAL, merge
from polyray.io import ConfigError, apply_overrides, console, format_validation_error, read_yaml_mapping

if TYPE_CHECKING:
    from polyray.eval.record import EvalRecord


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
            if run_name in candidates or exp.split == "val":  # nothing of it is reported as is: its test set is read only if chosen
                data = merge(data, TRIAL_EVAL)
            if run_name in origins:
                data["init_adapter"] = str(branch_adapter(out, origins[run_name], seed))
            try:
                configs[run_name, seed] = RunConfig.model_validate(data)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"{path}: runs.{run_name}")) from None
        phases = {"base"} | {p.name for p in configs[run_name, first].phases}
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
    if isinstance(exp.equivalence_margin, dict):  # a margin for a k no run evaluates would compare nothing
        ks = {k for run in configs.values() for k in run.eval.ks}
        for metric in exp.equivalence_margin:
            at = HEADLINE.match(metric)
            if metric != "*" and at.group(1) and int(at.group(2)) not in ks:
                raise ConfigError(f"{path}: equivalence_margin: unknown metric {metric!r} (the runs' eval.ks are"
                                  f" {sorted(ks)})")
    return exp, configs


def candidate_runs(exp: ExperimentConfig) -> set[str]:
    """The runs that report no model as is: each of their models is a candidate of a selection (or they
    have none, e.g. a run others only branch from). They evaluate their stages on validation."""
    owner = {cand for sel in exp.select.values() for cand in sel.among}
    direct = {exp.models[label].partition("/")[0] for label in exp.models if label not in owner}
    return set(exp.runs) - direct


def evaluate_chosen_on_test(exp: ExperimentConfig, out: Path, seeds: int | Sequence[int],
                            selections: dict[str, dict[str, Any]]) -> dict[str, str]:
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
        raise ConfigError(f"{where}: {ref} has no validation measurement (set dynamics.every in runs.{run_name}"
                          " and select a trained phase)")  # fmt: skip
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
                value = run_metrics({}, out / "runs" / f"{run_name}-s{seed}").get(f"{phase}/{sel.metric}")
                if value is not None:
                    have[seed] = float(value)
            among[cand] = {"run": exp.models[cand], "seeds": sorted(have), "values": [have[s] for s in sorted(have)],
                           "mean": sum(have.values()) / len(have) if have else None}  # fmt: skip
        chosen = best({c: among[c]["mean"] for c in sel.among}, sel.mode)
        selections[label] = {"chosen": chosen, "run": exp.models[chosen] if chosen else None, "metric": sel.metric,
                             "mode": sel.mode, "selected_on": SELECTED_ON, "among": among}  # fmt: skip
    return selections


def reported_models(exp: ExperimentConfig, selections: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Label -> 'run/phase' of every model of the table: a selection's chosen candidate under its label
    (None when no candidate was measured), the candidates themselves left out."""
    return {label: selections[label]["run"] if label in exp.select else exp.models[label]
            for label in exp.reported_labels()}  # fmt: skip


def _experiment_run_dir(params: dict[str, Any], trial_id: str) -> str:
    return f"runs/{params['run']}-s{params['seed']}"


def run_experiment(
    path: str | Path, seeds: int, output_dir: Path | None = None, overrides: Sequence[str] = (), first_seed: int = 0,
) -> dict[str, Any]:
    """Every run x seed as a Ray Tune trial (:func:`polyray.drivers.sweep.run_trials`). Each invocation is a
    new Tune experiment over the current runs and seeds (so added seeds or runs are scheduled);
    a run a previous invocation finished is only reported, and an unfinished one is continued.
    The seeds are ``first_seed`` .. ``first_seed + seeds − 1``."""
    import time

    from ray import tune

    from polyray.drivers.sweep import run_trials, trial_params

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
    for wave, names in ((exp.name, roots), (f"{exp.name}-branches", branches)):
        ready = list(ids)
        for seed in ids:  # a branch needs its seed's starting adapter: the root run may have failed
            missing = [r for r in names if r in origins and not branch_adapter(out, origins[r], seed).is_dir()]
            for r in missing:
                errors[f"{r}-s{seed}"] = f"not started: {origins[r]} of seed {seed} has no adapter (that run failed)"
            if missing:
                ready.remove(seed)
        if not names or not ready:
            continue
        space = {"run": tune.grid_search(names), "seed": tune.grid_search(ready)}
        grid = run_trials(f"{wave}-{stamp}", out, space, bases, _experiment_run_dir, [configs[r, ready[0]] for r in names],
                          max_concurrent=exp.max_concurrent, prefix=exp.name, derived=derived)  # fmt: skip
        for result in grid:
            if result.error is not None:
                params = trial_params(result)
                errors[f"{params.get('run', '?')}-s{params.get('seed', '?')}"] = error_line(result.error)

    errors.update(evaluate_chosen_on_test(exp, out, ids, select_models(exp, out, ids)))  # on validation
    summary = aggregate(exp, configs, out, ids)
    summary["errors"] = errors
    (out / "experiment.json").write_text(json.dumps(summary, indent=2))
    from polyray.eval.report import write_report

    write_report(out, report_results(exp, summary, out))
    console.print(summary_table(summary))
    for name, err in errors.items():
        console.print(f"[red]run {name} failed:[/red] {err.splitlines()[-1] if err else ''}")
    console.print(f"outputs in {out}")
    return summary


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a :func:`polyray.eval.stats.compare_over_seeds` result, flat and JSON-safe.

    ``ci95`` is the t-interval of the difference (paired: of the mean per-seed difference; unpaired:
    Welch's), conditional on the test prompts; ``<test>_p_holm`` and ``equivalent`` (TOST's Holm p
    < 0.05) are added by :func:`aggregate` once every comparison is known.
    """
    from polyray.eval.stats import finite_or_none as _num

    if not stats:
        return {}
    paired = stats["design"] == "paired"
    t = stats.get("paired_t" if paired else "welch_t") or {}
    keep: dict[str, Any] = {"design": stats["design"], "n_seeds": stats["n"][0]}
    keep.update(conditional_on=stats["conditional_on"], ci95=[_num(t.get("low")), _num(t.get("high"))])
    if paired:
        w = stats["wilcoxon"]
        keep.update({"paired_t": _num(t.get("statistic")), "paired_t_df": _num(t.get("df")),
                     "paired_t_p": _num(t.get("pvalue")), "wilcoxon_w": w["statistic"], "wilcoxon_p": w["pvalue"],
                     "wilcoxon_method": w["method"], "wilcoxon_min_p": w["min_pvalue"],
                     "cohens_dz": _num(stats.get("cohens_dz"))})
        rank = w
    else:
        rank = stats["mann_whitney"]
        keep.update({"welch_t": _num(t.get("statistic")), "welch_df": _num(t.get("df")),
                     "welch_p": _num(t.get("pvalue")),
                     "mann_whitney_u": rank["statistic"], "mann_whitney_p": rank["pvalue"],
                     "mann_whitney_method": rank["method"], "cohens_d": _num(stats.get("cohens_d"))})
    eq = stats.get("equivalence") or {}
    if eq:
        keep.update({"equivalence_margin": eq["margin"], "tost_p": _num(eq.get("pvalue")),
                     "tost_ci90": [_num(eq.get("low")), _num(eq.get("high"))]})
    notes = [n for n in (stats.get("note"), t.get("note"), rank.get("note"), eq.get("note")) if n]
    if notes:
        keep["note"] = "; ".join(dict.fromkeys(notes))
    return keep


def _prompt_level(
    a_phases: dict[int, EvalRecord], b_phases: dict[int, EvalRecord], seeds: list[int], metric: str
) -> dict[str, Any]:
    """Prompt-level view, valid only within a seed (:func:`polyray.eval.stats.compare_within_seeds`)."""
    from polyray.eval.stats import compare_within_seeds

    return compare_within_seeds([
        (s, a_phases[s].per_prompt_values(metric), b_phases[s].per_prompt_values(metric),
         _texts(a_phases[s]), _texts(b_phases[s])) for s in seeds])  # fmt: skip


def _texts(phase: EvalRecord) -> list[str | None]:
    return [r.prompt for r in phase.per_prompt or []]


def _load_phases(refs: dict[str, str | None], out: Path, seeds: int | Sequence[int],
                 split: str = "test") -> dict[str, dict[int, EvalRecord]]:
    """Per reported model label, seed -> its phase's evaluation record on ``split``; a seed whose
    results.json lacks it is absent (every seed, for a selection with nothing chosen)."""
    from polyray.drivers.results import read_results

    def record(results: dict[str, Any], phase: str) -> EvalRecord:
        if split == "test":
            return record_on_test(results, phase)
        if results.get("eval_split") != split:
            raise KeyError(f"{phase}: not evaluated on {split}")
        return results["phases"][phase]

    per_seed: dict[str, dict[int, EvalRecord]] = {}
    for label, ref in refs.items():
        per_seed[label] = {}
        if ref is None:
            continue
        run_name, _, phase = ref.partition("/")
        for seed in seed_ids(seeds):
            try:
                results = read_results(out / "runs" / f"{run_name}-s{seed}" / "results.json")
                per_seed[label][seed] = record(results, phase)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return per_seed


HOLM_KEYS = ("paired_t_p", "wilcoxon_p", "tost_p", "welch_p", "mann_whitney_p")  # one Holm family per test


def aggregate(exp: ExperimentConfig, configs, out: Path, seeds: int | Sequence[int]) -> dict[str, Any]:
    """experiment.json: per model the mean and t-interval over seeds (conditional on the test prompts)
    and a bootstrap interval over seeds and prompts; per comparison tests paired by seed id over
    the seeds both models have, a TOST equivalence test, Holm-adjusted across the experiment,
    and the within-seed prompt-level view."""
    from polyray.eval.stats import (
        ALPHA,
        CONDITIONAL_ON_NOTHING,
        CONDITIONAL_ON_TEST_PROMPTS,
        CONFIDENCE,
        compare_over_seeds,
        holm_families,
        interval_over_seeds_and_prompts,
        mean_ci,
    )

    ids = seed_ids(seeds)
    selections = select_models(exp, out, ids)  # on validation, before any test record is read
    refs = reported_models(exp, selections)
    phases = _load_phases(refs, out, ids, exp.split)
    models: dict[str, Any] = {}
    for label, by_seed in phases.items():
        have = sorted(by_seed)
        entry: dict[str, Any] = {"run": refs[label], "n_seeds": len(have), "seeds": have,
                                 "missing_seeds": [s for s in ids if s not in by_seed]}
        if label in selections:
            entry.update(selected_on=SELECTED_ON, selected=selections[label]["chosen"],
                         among=list(selections[label]["among"]))
        models[label] = entry
        if not have:
            continue
        rows = [by_seed[s].means() for s in have]
        for m in rows[0]:
            if not (HEADLINE.match(m) or m.startswith("diversity/")) or not all(m in r for r in rows):
                continue
            values = [r[m] for r in rows]
            entry[m] = ({**mean_ci(values).to_json(), "values": values, "conditional_on": CONDITIONAL_ON_TEST_PROMPTS}
                        if len(values) > 1 else {"mean": values[0], "values": values})
            joint = interval_over_seeds_and_prompts(
                [(s, by_seed[s].per_prompt_values(m), _texts(by_seed[s])) for s in have])
            if joint:
                entry[m]["over_seeds_and_prompts"] = joint
    comparisons: dict[str, Any] = {}
    means = {label: {s: r.means() for s, r in by_seed.items()} for label, by_seed in phases.items()}
    for treat, ctrl in exp.compare:
        a_phases, b_phases = phases[treat], phases[ctrl]
        a_means, b_means = means[treat], means[ctrl]
        common = sorted(set(a_phases) & set(b_phases))
        entry = {"treatment": treat, "control": ctrl, "seeds": common,
                 "missing_seeds": {lab: [s for s in ids if s not in phases[lab]] for lab in (treat, ctrl)},
                 "metrics": {}}
        comparisons[f"{treat} vs {ctrl}"] = entry
        if not common:
            entry["note"] = "no seed has results for both models"
            continue
        for m in headline_metrics(a_means[common[0]]):
            if not all(m in a_means[s] and m in b_means[s] for s in common):
                continue
            a, b = {s: a_means[s][m] for s in common}, {s: b_means[s][m] for s in common}  # paired by seed id
            entry["metrics"][m] = {"mean_treatment": sum(a.values()) / len(a), "mean_control": sum(b.values()) / len(b),
                                   "difference": sum(a.values()) / len(a) - sum(b.values()) / len(b),
                                   "over_seeds": _brief(compare_over_seeds(a, b, margin=exp.margin(m))),
                                   "within_seed": _prompt_level(a_phases, b_phases, common, m)}
    # Holm across the experiment: every comparison x metric's over-seeds p, one family per test
    entries = [m["over_seeds"] for c in comparisons.values() for m in c["metrics"].values()]
    holm = holm_families(entries, [k for k in HOLM_KEYS if any(k in e for e in entries)])
    for e in entries:
        if "tost_p" in e:  # a claim of equivalence over the experiment's family, as a difference is
            e["equivalent"] = None if e["tost_p_holm"] is None else bool(e["tost_p_holm"] < ALPHA)
    summary = {"name": exp.name, "seeds": len(ids), "seed_ids": ids, "split": exp.split,
               "confidence": CONFIDENCE, "alpha": ALPHA,
               "hypotheses": hypothesis_verdicts(exp, means),
               "conditional_on": {"over_seeds": CONDITIONAL_ON_TEST_PROMPTS,
                                  "over_seeds_and_prompts": CONDITIONAL_ON_NOTHING},
               "holm_family_sizes": holm, "models": models, "comparisons": comparisons, "selections": selections}
    summary["pareto_pass1_pass10"] = pareto_frontier_labels(summary)
    return on_split(summary, exp.split)


ON_VALIDATION_PROMPTS = "validation prompts"


def on_split(data: Any, split: str) -> Any:
    """``data`` with every ``conditional_on`` label that names the test prompts naming the validation
    prompts instead, for an experiment on ``split: val`` (the statistics are the same; what they hold
    fixed is not)."""
    from polyray.eval.stats import CONDITIONAL_ON_TEST_PROMPTS

    if split == "test":
        return data
    if isinstance(data, dict):
        return {k: on_split(v, split) for k, v in data.items()}
    if isinstance(data, list):
        return [on_split(v, split) for v in data]
    return ON_VALIDATION_PROMPTS if data == CONDITIONAL_ON_TEST_PROMPTS else data


def split_words(summary: dict[str, Any]) -> tuple[str, str]:
    """("test set", "test prompts") or the validation ones: what a table of ``summary`` is on."""
    return ("validation set", "validation prompts") if summary.get("split") == "val" else ("test set", "test prompts")


def hypothesis_verdicts(exp: ExperimentConfig, means: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """Per declared hypothesis its verdict (:func:`polyray.eval.stats.raised_and_kept`) over the seeds
    both models have; with several, a claim stands only if its Holm-adjusted intersection-union p
    (``pvalue_holm``) is below alpha too."""
    from polyray.eval.stats import ALPHA, holm_families, raised_and_kept

    verdicts: dict[str, Any] = {}
    for name, hyp in exp.hypotheses.items():
        a, b = means.get(hyp.treatment, {}), means.get(hyp.control, {})
        raise_a, raise_b, keep_a, keep_b = ({s: row[m] for s, row in by_seed.items() if m in row} for by_seed, m in
                                            ((a, hyp.raise_metric), (b, hyp.raise_metric), (a, hyp.keep_metric),
                                             (b, hyp.keep_metric)))  # fmt: skip
        verdicts[name] = {**hyp.model_dump(), **raised_and_kept(
            raise_a, raise_b, keep_a, keep_b, keep_within=hyp.keep_within, min_seeds=hyp.min_seeds)}
    if len(verdicts) > 1:
        holm_families(list(verdicts.values()), ["pvalue"])
        for v in verdicts.values():
            if v["verdict"] == "supported" and not (v["pvalue_holm"] is not None and v["pvalue_holm"] < ALPHA):
                v["verdict"] = "not supported"
                v["reasons"].append(f"not after Holm across {len(verdicts)} hypotheses (p {v['pvalue_holm']:.3g})")
    return verdicts


def pareto_frontier_labels(summary: dict[str, Any], x: str = "pass@1", y: str = "pass@10") -> list[str]:
    """Models no other model beats on both mean ``x`` and mean ``y`` (ties do not dominate)."""
    from polyray.eval.analysis import pareto_frontier

    points = [(label, m[x]["mean"], m[y]["mean"]) for label, m in summary["models"].items() if x in m and y in m]
    return [p[0] for p, on in zip(points, pareto_frontier(points)) if on]


def _dynamics_records(exp: ExperimentConfig, out: Path, seed: int = 0,
                      refs: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Seed ``seed``'s diversity dynamics per model, labelled by model; a branch run's records follow
    those of the run it branches from (its steps after that run's), so a recipe reads SFT then GRPO."""
    from polyray.eval.analysis import load_dynamics

    @functools.cache  # a root's records are read once, however many runs branch from it
    def load(run: str) -> list[dict[str, Any]]:
        path = out / "runs" / f"{run}-s{seed}" / "dynamics.jsonl"
        return load_dynamics(path) if path.is_file() else []

    origins, records = exp.origins(), []
    for label, ref in (exp.models if refs is None else refs).items():
        if ref is None:
            continue
        run, _, phase = ref.partition("/")
        rows = [r for r in load(run) if r["phase"] == phase or phase == "base"]
        if run in origins:
            root, _, root_phase = origins[run].partition("/")
            before = [r for r in load(root) if r["phase"] == root_phase]
            shift = 1 + max((r.get("global_step", r["step"]) for r in before), default=-1)
            rows = [*before, *({**r, "global_step": shift + r.get("global_step", r["step"])} for r in rows)]
        records += [{**r, "run": label} for r in rows]
    return records


def report_results(exp: ExperimentConfig, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """The experiment as the evaluation report's ``results`` (polyray.eval.report): per model mean
    and 95% t-interval over seeds (conditional on the test prompts) of pass@k, USQ and diversity;
    the comparisons' tests over seeds (``seed_comparisons``); the Pareto figure is pass@1 against
    pass@10 (both maximised); the dynamics are seed 0's; ``selection``: what was chosen on validation."""
    from polyray.eval.record import records_from_summaries

    models = records_from_summaries(summary["models"])
    real = list(dict.fromkeys(d for m in models.values() for d in sorted(m.diversity)))
    selections = summary.get("selections") or {}
    refs = {label: m.get("run") for label, m in summary["models"].items()}
    note = "; ".join(f"{label} = {s['chosen']} selected on {s['selected_on']}" for label, s in selections.items())
    return {
        "title": f"polyray experiment: {summary['name']} ({split_words(summary)[0]}: mean and 95% t-interval over"
                 f" {summary['seeds']} seeds, conditional on the {split_words(summary)[1]}"
                 + (f"; {note}" if note else "") + ")",
        "models": models,
        "table": {"diversity": sorted(real)},
        "pareto": {"diversity": "pass@10", "quality_label": "pass@1"},
        "dynamics": _dynamics_records(exp, out, refs=refs),
        "seed_comparisons": summary.get("comparisons") or {},
        "hypotheses": summary.get("hypotheses") or {},
        "selection": [{"what": label, "chosen": s["chosen"] or "none measured", "metric": s["metric"],
                       "selected_on": s["selected_on"], "among": {c: a["mean"] for c, a in s["among"].items()}}
                      for label, s in selections.items()],
    }




def _p(entry: dict[str, Any], key: str) -> str:
    """'p (Holm p)' for the table."""
    p, adj = entry.get(key), entry.get(f"{key}_holm")
    return "-" if p is None else f"{p:.3g} ({adj:.3g})" if adj is not None else f"{p:.3g}"


def _interval(lo: float | None, hi: float | None) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "-"


def summary_table(summary: dict[str, Any]):
    """Per model mean ±95% CI over seeds; below it, per comparison the over-seeds tests (raw p, Holm p),
    TOST equivalence at its margin and the bootstrap interval over seeds and prompts."""
    from rich.console import Group
    from rich.table import Table

    from polyray.eval.record import metric_label

    models = summary["models"]
    div = sorted({m for v in models.values() for m in v if m.startswith("diversity/")})
    headline = headline_metrics({m for v in models.values() for m in v})
    split, prompts = split_words(summary)
    table = Table(title=f"experiment {summary['name']}, {split}: mean ±95% t-interval over {summary['seeds']} seeds "
                        f"(conditional on the {prompts})")
    table.add_column("model", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    for m in [*headline, *div]:
        table.add_column(metric_label(m), justify="right", no_wrap=True)
    for label, v in models.items():
        cells = []
        for m in [*headline, *div]:
            cell = v.get(m)
            if cell is None:
                cells.append("-")
            elif cell.get("half_width") is not None and math.isfinite(cell["half_width"]):
                cells.append(f"{cell['mean']:.3f}±{cell['half_width']:.3f}")
            else:
                cells.append(f"{cell['mean']:.3f}")
        table.add_row(label, str(v.get("n_seeds", 0)), *cells)
    from rich.text import Text

    parts: list[Any] = [table]
    selections = summary.get("selections") or {}
    if selections:  # what the table holds that was chosen, and on which split (a line of its own: no wrap)
        parts.append(Text("; ".join(
            f"{label} = {s['chosen'] or 'none measured'}, selected on {s['selected_on']} by mean {s['metric']} over"
            f" seeds among {', '.join(s['among'])}" for label, s in selections.items())))  # fmt: skip
    if summary.get("hypotheses"):
        from polyray.eval.report import HYPOTHESIS_COLUMNS, hypothesis_rows

        hyp = Table(title=f"hypotheses declared in advance (paired over seeds, given the {prompts})")
        for col in HYPOTHESIS_COLUMNS:
            hyp.add_column(col, overflow="fold")
        for name, cells in hypothesis_rows(summary["hypotheses"]):
            hyp.add_row(name, *cells)
        parts.append(hyp)
    comparisons = summary.get("comparisons") or {}
    if not comparisons:
        return Group(*parts)
    tests = Table(title="treatment − control over seeds, paired by seed id: p (Holm p); 95% t-interval given the "
                        f"{prompts}; TOST equivalence within ±margin; bootstrap 95% CI over seeds and prompts")
    for col in ("comparison", "metric", "seeds", "difference [95% CI]", "t p", "rank p", "effect",
                "equivalent (TOST p)", "bootstrap 95% CI"):
        tests.add_column(col, justify="left" if col in ("comparison", "metric") else "right", no_wrap=True)
    for name, c in comparisons.items():
        if not c["metrics"]:
            tests.add_row(name, "-", ",".join(map(str, c["seeds"])) or "none", *["-"] * 6)
        for m, e in c["metrics"].items():
            o = e["over_seeds"]
            paired = o.get("design") == "paired"
            t_key, rank_key, d_key = ("paired_t_p", "wilcoxon_p", "cohens_dz") if paired else \
                ("welch_p", "mann_whitney_p", "cohens_d")
            d = o.get(d_key)
            eq = o.get("equivalent")
            tost = "-" if o.get("tost_p") is None else \
                f"{'yes' if eq else 'not shown'} ±{o['equivalence_margin']:g}, p {_p(o, 'tost_p')}"
            boot = e["within_seed"].get("hierarchical_bootstrap")
            tests.add_row(
                name, metric_label(m), ",".join(map(str, c["seeds"])),
                f"{e['difference']:+.3f} {_interval(*o['ci95'])}",
                ("paired " if paired else "Welch ") + _p(o, t_key),
                ("Wilcoxon " if paired else "M-W ") + _p(o, rank_key),
                "-" if d is None else f"{'d_z' if paired else 'd'} {d:+.2f}", tost,
                _interval(boot["low"], boot["high"]) if boot else "-",
            )
    floors = {o["over_seeds"].get("wilcoxon_min_p") for c in comparisons.values() for o in c["metrics"].values()}
    floors = sorted(f for f in floors if f is not None and f > summary.get("alpha", 0.05))
    if floors:
        tests.caption = (f"with these seeds the exact Wilcoxon p cannot go below {floors[0]:.3g}: "
                         "it cannot reject at 0.05, whatever the effect")
    return Group(*parts, tests)
