"""The sweep file, its trial directories and its summary, without Ray: axes, validation before
anything starts, stable trial names, per-setting statistics over seeds (against scipy) and the outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from polyray.config.sweep import Axis
from polyray.drivers.sweep import apply_params, load_sweep, trial_slug
from polyray.drivers.sweep_report import report_results, summarise, write_outputs
from polyray.io import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def _write(tmp_path, body: str) -> Path:
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\nbase: base.yaml\n" + body)
    return path


def test_default_sweep_is_lambda_by_seed():
    sweep, base = load_sweep(ROOT / "configs" / "sweeps" / "lambda_seed.yaml")
    assert sweep.space["phases.0.lam"].grid == [0.0, 0.1, 0.3, 1.0] and sweep.space["seed"].grid == [0, 1, 2]
    assert [p["type"] for p in base["phases"]] == ["polychromic_sft", "grpo"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("space: {phases.0.lam: {grid: [0, 1], choice: [1]}}\n", "exactly one of"),
        ("space: {phases.0.lam: {uniform: [1, 0]}}\n", "low must be < high"),
        ("space: {phases.0.lam: {loguniform: [0, 1]}}\n", "low must be > 0"),
        ("space: {}\n", "name at least one axis"),
        ("space: {phases.0.lam: {grid: [-1]}}\n", "space point {'phases.0.lam': -1}"),
        ("space: {phases.7.lam: {grid: [0.1]}}\n", "phases.7"),
        ("space: {seed: {grid: [0]}}\nobjective: {phase: nope}\n", "objective.phase: no phase 'nope'"),
        ("space: {seed: {grid: [0]}}\nobjective: {metric: val/pass@1}\n", "dynamics probe"),
        (
            "space: {seed: {grid: [0]}}\nobjective: {metric: pass@1}\n",
            "objective.metric: 'pass@1' is measured on the test set",
        ),
        (
            "space: {seed: {grid: [0]}}\nobjective: {metric: diversity/semantic}\n",
            "objective.metric: 'diversity/semantic' is measured on the test set; select on validation .val/diversity/semantic.",
        ),
        ("space: {seed: {grid: [0]}}\nnum_samples: 3\n", "num_samples: 3 repeats"),
        ("space: {phases.0.lr: {choice: [0.1, -1]}}\n", "space point {'phases.0.lr': -1}"),
        (
            "space: {phases.0.lr: {loguniform: [1e-5, 1e-3]}}\nobjective: {metric: val/pass@7}\n"
            "overrides: {dynamics: {every: 5}}\n",
            "measures ['pass@1', 'pass@4'",
        ),
    ],
)
def test_bad_sweep_files_fail_before_anything_starts(tmp_path, body, message):
    head = "" if "overrides" in body else "overrides: {dynamics: {every: 0}}\n"
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("[", r"\[")):
        load_sweep(_write(tmp_path, head + body))


def test_params_apply_by_dotted_path_and_name_a_stable_directory():
    data = {"seed": 0, "phases": [{"type": "sft", "lr": 0.1}, {"type": "grpo", "lr": 0.2}]}
    out = apply_params(data, {"phases.1.lr": 1e-05, "seed": 2})
    assert out == {
        "seed": 2,
        "phases": [{"type": "sft", "lr": 0.1}, {"type": "grpo", "lr": 1e-05}],
    }  # a float, as drawn
    assert data["seed"] == 0  # not mutated
    assert trial_slug({"seed": 1, "phases.0.lam": 0.3}) == trial_slug({"phases.0.lam": 0.3, "seed": 1})
    assert trial_slug({"phases.0.lam": 0.3, "seed": 1}) == "phases.0.lam=0.3,seed=1"
    assert trial_slug({"phases.0.lam": 0.1 + 0.2}) == "phases.0.lam=0.3"


def test_axes_become_tune_domains():
    from ray.tune.search.sample import Float

    assert Axis(grid=[1, 2]).tune_domain() == {"grid_search": [1, 2]}
    dom = Axis(loguniform=(1e-4, 1e-2)).tune_domain()
    assert isinstance(dom, Float) and dom.lower == 1e-4 and dom.upper == 1e-2


def _grid(values: dict[tuple[float, int], float]):
    """A stand-in for Tune's ResultGrid: one result per (lam, seed) with grpo/val_eval/pass@1 = value (its
    stage evaluation on validation) and the probe's grpo/val/pass@1 = value / 2."""
    return [
        SimpleNamespace(
            config={"phases.0.lam": lam, "seed": seed},
            error=None,
            metrics={
                "grpo/val_eval/pass@1": v,
                "grpo/val/pass@1": v / 2,
                "grpo/val_eval/pass@10": min(1.0, 2 * v),
                "grpo/val_eval/diversity/semantic": 0.5 - v / 4,
                "run_dir": f"trials/{lam}-{seed}",
            },
        )
        for (lam, seed), v in values.items()
    ]


def test_summary_groups_seeds_with_t_intervals_and_picks_the_best_on_validation(tmp_path):
    sweep, base = load_sweep(ROOT / "configs" / "sweeps" / "lambda_seed.yaml")
    from polyray.config import RunConfig

    rng = np.random.default_rng(0)
    values = {(lam, s): float(0.1 + lam / 10 + rng.normal(0, 0.01)) for lam in (0.0, 0.3) for s in (0, 1, 2)}
    summary = summarise(sweep, RunConfig.model_validate(apply_params(base, {"phases.0.lam": 0.0})), _grid(values))
    assert summary["objective"] == {"key": "grpo/val/pass@1", "mode": "max", "selected_on": "validation"}
    assert summary["selected"]["params"] == {"phases.0.lam": 0.3} and summary["selected"]["selected_on"] == "validation"
    assert summary["conditional_on"].startswith("evaluation prompts")  # what every interval holds fixed
    assert summary["best"]["params"]["phases.0.lam"] == 0.3
    assert summary["best"]["metrics"]["grpo/val/pass@1"] == max(v / 2 for v in values.values())
    for setting in summary["settings"]:
        lam = setting["params"]["phases.0.lam"]
        x = np.array([values[lam, s] for s in (0, 1, 2)])
        low, high = stats.t.interval(0.95, df=2, loc=x.mean(), scale=stats.sem(x))
        got = setting["metrics"]["grpo/val_eval/pass@1"]
        assert setting["seeds"] == [0, 1, 2] and got["n"] == 3
        assert got["mean"] == pytest.approx(x.mean()) and (got["low"], got["high"]) == pytest.approx((low, high))

    write_outputs(tmp_path, summary)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["trials"]) == 6
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(rows) == 6 and {"phases.0.lam", "seed", "grpo/val_eval/pass@1", "run_dir"} <= set(rows[0])
    html = (tmp_path / "report.html").read_text()
    assert 'id="fig-axis"' in html and 'id="fig-pareto"' in html and 'class="skipped">Skipped: not a sweep' not in html

    results = report_results(summary)
    assert set(results["models"]) == {"phases.0.lam=0.0 (validation)", "phases.0.lam=0.3 (validation)"}
    assert [p["x"] for p in results["axis"]["points"]] == [0.0, 0.3]


def test_a_single_seed_has_no_interval_and_stays_valid_json(tmp_path):
    sweep, base = load_sweep(ROOT / "configs" / "sweeps" / "lambda_seed.yaml")
    from polyray.config import RunConfig

    summary = summarise(sweep, RunConfig.model_validate(apply_params(base, {})), _grid({(0.1, 0): 0.2}))
    metric = summary["settings"][0]["metrics"]["grpo/val_eval/pass@1"]
    assert metric["low"] is None and metric["high"] is None and metric["n"] == 1
    write_outputs(tmp_path, summary)
    json.loads((tmp_path / "sweep.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert not math.isnan(summary["settings"][0]["metrics"]["grpo/val_eval/pass@1"]["mean"])


def test_a_trial_that_never_reported_keeps_its_parameters(tmp_path):
    from polyray.drivers.selection import error_line
    from polyray.drivers.sweep_report import trial_params

    (tmp_path / "params.json").write_text(json.dumps({"phases.0.lam": 0.3, "seed": 2}))
    assert trial_params(SimpleNamespace(config=None, path=str(tmp_path))) == {"phases.0.lam": 0.3, "seed": 2}
    assert trial_params(SimpleNamespace(config={"seed": 1}, path=None)) == {"seed": 1}
    assert error_line(RuntimeError("")) == "RuntimeError" and error_line(ValueError("a\nlast")) == "last"
    assert error_line(None) is None


def test_set_changes_the_sweeps_base_run_and_is_validated():
    from polyray.io import ConfigError

    path = ROOT / "configs" / "sweeps" / "lambda_seed.yaml"
    _, base = load_sweep(path, ["learner.threads=2", "phases.grpo.lr=1e-4"])
    assert base["learner"]["threads"] == 2 and float(base["phases"][1]["lr"]) == 1e-4  # (validated per trial)
    with pytest.raises(ConfigError, match="learner.threads"):
        load_sweep(path, ["learner.threads=0"])


def test_the_setting_is_selected_by_its_mean_over_seeds_on_validation_never_on_test(tmp_path):
    """λ = 0.3 has the single best validation trial and the best test pass@1; λ = 0.1 the best validation
    mean over seeds: λ = 0.1 is selected, on validation, and the report says so."""
    from polyray.config import RunConfig

    sweep, base = load_sweep(ROOT / "configs" / "sweeps" / "lambda_seed.yaml")
    val = {(0.1, 0): 0.30, (0.1, 1): 0.30, (0.1, 2): 0.30, (0.3, 0): 0.50, (0.3, 1): 0.10, (0.3, 2): 0.10}
    grid = [
        SimpleNamespace(
            config={"phases.0.lam": lam, "seed": seed},
            error=None,
            metrics={"grpo/val/pass@1": v, "grpo/pass@1": 0.9 if lam == 0.3 else 0.1, "run_dir": "d"},
        )
        for (lam, seed), v in val.items()
    ]
    summary = summarise(sweep, RunConfig.model_validate(apply_params(base, {})), grid)
    assert summary["best"]["params"]["phases.0.lam"] == 0.3 and summary["best"]["selected_on"] == "validation"
    sel = summary["selected"]
    assert sel["params"] == {"phases.0.lam": 0.1} and sel["selected_on"] == "validation"
    assert sel["value"]["mean"] == pytest.approx(0.30) and sel["objective"] == "grpo/val/pass@1"
    assert sel["candidates"] == {"phases.0.lam=0.1": pytest.approx(0.30), "phases.0.lam=0.3": pytest.approx(0.7 / 3)}
    write_outputs(tmp_path, summary)
    html = (tmp_path / "report.html").read_text()
    assert 'id="table-selection"' in html and "phases.0.lam=0.1 selected on validation" in html
    assert json.loads((tmp_path / "sweep.json").read_text())["selected"]["selected_on"] == "validation"
    from polyray.drivers.sweep_report import select_setting

    with pytest.raises(ValueError, match="validation metrics only"):
        select_setting(summary["settings"], "grpo/pass@1", "max")


# ---------------------------------------------------------------- the test set, once, for the chosen
def test_a_sweeps_trials_evaluate_on_validation_never_on_test(tmp_path):
    """Every trial config asks for stage evaluations on validation, whatever the base or --set say."""
    from polyray.config import RunConfig
    from polyray.drivers.sweep import _points

    path = ROOT / "configs" / "sweeps" / "lambda_seed.yaml"
    assert load_config_eval_split(ROOT / "configs" / "quickstart.yaml") == "test"  # a plain run reports test
    for extra in ([], ["eval.split=test"]):
        sweep, base = load_sweep(path, extra)
        for params in _points(sweep):
            assert RunConfig.model_validate(apply_params(base, params)).eval.split == "val", (extra, params)


def load_config_eval_split(path) -> str:
    from polyray.config import load_config

    return load_config(path).eval.split


def _chosen_sweep():
    """λ = 0.1 wins on validation (mean probe pass@1 0.3 over 3 seeds); λ = 0.3 would win on test."""
    from polyray.config import RunConfig

    sweep, base = load_sweep(ROOT / "configs" / "sweeps" / "lambda_seed.yaml")
    val = {(0.1, 0): 0.30, (0.1, 1): 0.30, (0.1, 2): 0.30, (0.3, 0): 0.50, (0.3, 1): 0.10, (0.3, 2): 0.10}
    grid = [
        SimpleNamespace(
            config={"phases.0.lam": lam, "seed": seed},
            error=None,
            metrics={
                "grpo/val/pass@1": v,
                "grpo/val_eval/pass@1": v,
                "grpo/pass@1": 0.9 if lam == 0.3 else 0.1,
                "run_dir": f"trials/{lam}-{seed}",
            },
        )
        for (lam, seed), v in val.items()
    ]
    return summarise(sweep, RunConfig.model_validate(apply_params(base, {})), grid)


def test_the_summary_carries_test_numbers_for_the_selected_setting_only(tmp_path):
    from polyray.drivers.sweep_report import attach_test, chosen_trials, summary_table

    summary = _chosen_sweep()
    # a test number a trial reported (a run re-reported after a test evaluation) is not a trial metric
    assert all(not k.endswith("grpo/pass@1") or "/val" in k for t in summary["trials"] for k in t["metrics"])
    assert summary["splits"] == {"trials": "validation", "selection": "validation", "test": "the selected setting only"}
    chosen = chosen_trials(summary)
    assert sorted(t["run_dir"] for t in chosen) == ["trials/0.1-0", "trials/0.1-1", "trials/0.1-2"]
    tested = {"trials/0.1-0": {"grpo/pass@1": 0.2}, "trials/0.1-1": {"grpo/pass@1": 0.4}, "trials/0.1-2": "OOM"}
    summary = attach_test(summary, tested)
    test = summary["selected"]["test"]
    assert test["split"] == "test" and test["phase"] == "grpo" and test["seeds"] == [0, 1]
    assert test["metrics"]["grpo/pass@1"]["mean"] == pytest.approx(0.3) and test["errors"] == {"trials/0.1-2": "OOM"}
    assert [t["run_dir"] for t in summary["trials"] if "test" in t] == ["trials/0.1-0", "trials/0.1-1"]
    assert not any(k.split("/", 1)[1].startswith("pass@") for s in summary["settings"] for k in s["metrics"])
    with pytest.raises(ValueError, match="no trial of the selected setting"):
        attach_test(_chosen_sweep(), {"trials/0.3-0": {"grpo/pass@1": 0.9}})

    write_outputs(tmp_path, summary)
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert {r["run_dir"]: r["test:grpo/pass@1"] for r in rows if r["test:grpo/pass@1"]} == {
        "trials/0.1-0": "0.2",
        "trials/0.1-1": "0.4",
    }
    models = report_results(summary)["models"]
    assert set(models) == {"phases.0.lam=0.1 (validation)", "phases.0.lam=0.3 (validation)", "phases.0.lam=0.1 (test)"}
    assert models["phases.0.lam=0.1 (test)"].pass_at_k[1].mean == pytest.approx(0.3)
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(summary_table(summary))
    lines = console.export_text().splitlines()
    rows = [[c.strip() for c in line.split("│")[1:4]] for line in lines if line.startswith("│")]
    assert rows == [
        ["phases.0.lam=0.1 *", "validation", "3"],
        ["phases.0.lam=0.3", "validation", "3"],
        ["phases.0.lam=0.1 *", "test", "2"],
    ]  # one test row: the selected setting's


def test_nothing_selected_reads_no_test_set():
    from polyray.drivers.sweep_report import attach_test, chosen_trials

    summary = _chosen_sweep()
    summary["selected"] = None
    assert chosen_trials(summary) == [] and "test" not in (attach_test(summary, {})["selected"] or {})


def test_a_resumed_selection_evaluates_test_once(tmp_path):
    """A chosen candidate's test record is kept in its results.json: the stages still to evaluate on
    test leave it out, so a sweep re-run after an interruption does not evaluate it again."""
    from polyray.drivers.results import RunResults, read_results, write_results
    from polyray.drivers.selection import record_on_test, stages_to_test
    from polyray.eval.record import Estimate, EvalRecord
    from polyray.tracking import run_metrics

    rec = lambda p: EvalRecord(pass_at_k={1: Estimate(p)})  # noqa: E731
    candidate = RunResults(
        name="t", eval_split="val", evaluations={"base": rec(0.1), "grpo": rec(0.5)}, versions={"grpo": 3}
    )
    assert stages_to_test(candidate, ["grpo"]) == ["grpo"]
    with pytest.raises(KeyError):
        record_on_test(candidate, "grpo")  # its stage evaluation is on validation: never a test number
    metrics = run_metrics(tmp_path, candidate.evaluations, candidate.test, candidate.eval_split)
    assert metrics == {"base/val_eval/pass@1": 0.1, "grpo/val_eval/pass@1": 0.5}
    candidate.test = {"grpo": rec(0.4)}
    write_results(tmp_path, candidate)
    back = read_results(tmp_path / "results.json")
    assert stages_to_test(back, ["grpo"]) == [] and record_on_test(back, "grpo").pass_at_k[1].mean == 0.4
    metrics = run_metrics(tmp_path, back.evaluations, back.test, back.eval_split)
    assert metrics["grpo/pass@1"] == 0.4 and metrics["grpo/val_eval/pass@1"] == 0.5
    plain = RunResults.from_json({"name": "r", "phases": {"grpo": rec(0.7)}})  # a run (or an older one) on test
    assert stages_to_test(plain, ["grpo"]) == [] and record_on_test(plain, "grpo").pass_at_k[1].mean == 0.7


def test_a_sweep_rerun_reads_the_selected_trials_test_numbers_back(tmp_path):
    """The sweep's step after the selection, on trials whose test evaluation is already in their results.json:
    the numbers are read back. No trial directory holds the config an evaluation needs, so evaluating one again
    would come back as that trial's error instead."""
    from polyray.drivers.results import RunResults, write_results
    from polyray.drivers.sweep import evaluate_selected_on_test
    from polyray.drivers.sweep_report import chosen_trials
    from polyray.eval.record import Estimate, EvalRecord

    summary = _chosen_sweep()
    for i, trial in enumerate(chosen_trials(summary)):
        trial["run_dir"] = str(tmp_path / trial["run_dir"])
        Path(trial["run_dir"]).mkdir(parents=True)
        test = {"grpo": EvalRecord(pass_at_k={1: Estimate(0.2 + 0.1 * i)})}
        write_results(Path(trial["run_dir"]), RunResults(name="t", eval_split="val", test=test))
    tested = evaluate_selected_on_test(summary)
    assert [tested[t["run_dir"]]["grpo/pass@1"] for t in chosen_trials(summary)] == pytest.approx([0.2, 0.3, 0.4])
    assert not any((Path(t["run_dir"]) / "config.resolved.yaml").exists() for t in chosen_trials(summary))
