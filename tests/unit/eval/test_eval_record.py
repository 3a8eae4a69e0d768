"""The evaluation record: one type and one JSON form for a run's evaluations, the dynamics probe,
the evaluation job and what sweeps and experiments hand the report."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from polyray.drivers.results import RunResults, read_results, results_table, write_results
from polyray.eval.record import Estimate, EvalRecord, PromptRow, at_key, records_from_summaries, split_at_key

# a run's results.json phases as the code before the record wrote them
RUN_PHASES = json.loads(
    r"""{"base": {"pass@1": 0.103125, "pass@5": 0.33479166666666665, "pass@10": 0.4609375, "usq@5": 0.1234567, "usq@10": 0.2222222, "reward_mean": 0.103125, "n_prompts": 64, "n_samples": 10, "few_shot": 0, "distinct_frac": 0.7859375, "diversity/countdown_expr": 0.61, "per_prompt": [{"prompt": "p", "n": 10, "c": 1, "rewards": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "diversity/countdown_expr": 0.5}]}, "sft": {"pass@1": 0.2546875, "pass@5": 0.6, "pass@10": 0.71875, "usq@5": 0.3, "usq@10": 0.35, "reward_mean": 0.2546875, "n_prompts": 64, "n_samples": 10, "few_shot": 0, "distinct_frac": 0.5, "diversity/countdown_expr": 0.41, "per_prompt": []}}"""
)

# results_table of RUN_PHASES: two measures, two names (distinct samples, distinct expressions)
TABLE = """                                polyray run: test-set evaluation                                 
┏━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┓
┃ model ┃ pass@1 ┃ pass@5 ┃ pass@10 ┃ usq@10 ┃ reward ┃ distinct samples ┃ distinct expressions ┃
┡━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━┩
│ base  │  0.103 │  0.335 │   0.461 │  0.222 │  0.103 │             0.79 │                 0.61 │
│ sft   │  0.255 │  0.600 │   0.719 │  0.350 │  0.255 │             0.50 │                 0.41 │
└───────┴────────┴────────┴─────────┴────────┴────────┴──────────────────┴──────────────────────┘
"""
# what the record writes: the same, with the raw-string measure under its own name
WRITTEN = json.loads(json.dumps(RUN_PHASES).replace('"distinct_frac"', '"distinct_samples"'))


def test_run_results_read_and_write_back_unchanged_and_print_the_same_table(tmp_path):
    """An old results.json (``distinct_frac``) reads back; it is written as ``distinct_samples``, else unchanged."""
    records = {name: EvalRecord.from_json(r) for name, r in RUN_PHASES.items()}
    assert json.dumps({name: r.to_json() for name, r in records.items()}) == json.dumps(WRITTEN)  # order too
    assert records["base"].distinct_samples == Estimate(0.7859375) and not records["base"].extra
    assert records["base"].get("distinct_frac") is records["base"].get("distinct_samples")
    assert {name: EvalRecord.from_json(r) for name, r in WRITTEN.items()} == records
    base = records["base"]
    assert base.pass_at_k[5] == Estimate(0.33479166666666665) and base.usq_at_k[10].mean == 0.2222222
    assert (base.n_prompts, base.n_samples, base.few_shot) == (64, 10, 0)
    assert base.per_prompt == [
        PromptRow(n=10, c=1, rewards=[1.0] + [0.0] * 9, prompt="p", diversity={"countdown_expr": 0.5})
    ]
    out = io.StringIO()
    Console(file=out, width=160, force_terminal=False).print(results_table(RunResults(evaluations=records), [1, 5, 10]))
    assert out.getvalue() == TABLE
    results = RunResults(name="r", evaluations=records, versions={"sft": 3}, extra={"written_by": "an older polyray"})
    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "name": "r",
        "eval_split": "test",
        "phases": WRITTEN,
        "versions": {"sft": 3},
        "written_by": "an older polyray",  # a key the record does not know is kept, not lost
    }
    again = read_results(tmp_path / "results.json")
    assert again == results and again.evaluations == records and again.versions == {"sft": 3}


def test_one_spelling_of_per_k_keys():
    assert at_key("pass", 10) == "pass@10" and split_at_key("pass@10") == ("pass", 10)
    assert split_at_key("usq@5") == ("usq", 5) and split_at_key("der@4") == ("der", 4)
    assert split_at_key("val/pass@1") is None and split_at_key("pass_at_1") is None and split_at_key("pass@") is None


def test_intervals_numbers_and_what_tracking_logs():
    rec = EvalRecord.from_json(
        {
            "pass@1": {"mean": 0.2, "low": 0.1, "high": 0.3},
            "usq@4": {"mean": 0.5, "half_width": 0.1},
            "reward_mean": {"mean": 0.4, "low": None, "high": None},
            "n_prompts": 3,
            "diversity/semantic": 0.7,
            "model": "m",
            "flag": True,
            "odd": float("nan"),
        }
    )
    assert rec.pass_at_k[1] == Estimate(0.2, 0.1, 0.3) and rec.pass_at_k[1].has_interval
    assert rec.usq_at_k[4].low == pytest.approx(0.4) and rec.usq_at_k[4].high == pytest.approx(0.6)
    assert rec.reward_mean == Estimate(0.4) and rec.to_json()["reward_mean"] == 0.4  # no interval: a number
    assert rec.to_json()["pass@1"] == {"mean": 0.2, "low": 0.1, "high": 0.3}
    assert rec.extra == {"model": "m", "flag": True, "odd": rec.extra["odd"]} and math.isnan(rec.extra["odd"])
    assert rec.scalars() == {
        "pass@1": 0.2,
        "usq@4": 0.5,
        "reward_mean": 0.4,
        "n_prompts": 3.0,
        "diversity/semantic": 0.7,
    }
    assert rec.means() == {"pass@1": 0.2, "usq@4": 0.5, "reward_mean": 0.4, "diversity/semantic": 0.7}
    assert rec.get("semantic") is rec.get("diversity/semantic") is rec.diversity["semantic"]
    assert math.isnan(Estimate.of(None).mean)  # (a strict JSON writer's null)


def test_per_prompt_values():
    rows = [PromptRow(n=4, c=2, rewards=[1, 1, 0, 0]), PromptRow(n=4, c=0, rewards=[0.0] * 4)]
    rec = EvalRecord(per_prompt=rows)
    np.testing.assert_allclose(rec.per_prompt_values("pass@1"), [0.5, 0.0])
    np.testing.assert_allclose(rec.per_prompt_values("pass@2"), [1 - 1 / 6, 0.0])
    np.testing.assert_allclose(rec.per_prompt_values("reward_mean"), [0.5, 0.0])
    assert rec.per_prompt_values("pass@5") is None  # k > n
    assert rec.per_prompt_values("usq@2") is None and EvalRecord().per_prompt_values("pass@1") is None
    assert EvalRecord(per_prompt=[PromptRow(n=4, c=1)]).per_prompt_values("reward_mean") is None


def test_summaries_of_sweeps_and_experiments_become_records():
    sweep_setting = {
        "grpo/pass@1": {"mean": 0.3, "low": 0.2, "high": 0.4, "n": 3},
        "grpo/usq@5": {"mean": 0.2},
        "grpo/val/pass@1": {"mean": 0.1},
        "sft/pass@1": {"mean": 0.9},
    }
    experiment_model = {
        "run": "a/grpo",
        "n_seeds": 2,
        "pass@10": {"mean": 0.6, "low": 0.5, "high": 0.7, "values": [0.5, 0.7]},
        "diversity/countdown_expr": {"mean": 0.4, "values": [0.4]},
    }
    (sweep,) = records_from_summaries({"lam=0.3": sweep_setting}, prefix="grpo/").values()
    assert sweep.pass_at_k == {1: Estimate(0.3, 0.2, 0.4)} and sweep.usq_at_k == {5: Estimate(0.2)}
    assert sweep.usq_selector == "logprob" and sweep.extra == {"val/pass@1": {"mean": 0.1}}
    (exp,) = records_from_summaries({"a": experiment_model}).values()
    assert exp.pass_at_k[10] == Estimate(0.6, 0.5, 0.7) and exp.diversity["countdown_expr"] == Estimate(0.4)
    assert exp.usq_selector is None and exp.extra["n_seeds"] == 2


def test_one_name_per_diversity_measure():
    """distinct samples (raw strings) and distinct expressions (normalised) never share a label."""
    from polyray.eval.record import metric_label

    assert metric_label("distinct_samples") == metric_label("distinct_frac") == "distinct samples"
    assert metric_label("diversity/countdown_expr") == metric_label("countdown_expr") == "distinct expressions"
    assert metric_label("diversity/semantic") == "semantic" and metric_label("pass@1") == "pass@1"
    swept = records_from_summaries(
        {"a": {"grpo/distinct_frac": {"mean": 0.5, "low": 0.4, "high": 0.6}}}, prefix="grpo/"
    )
    assert swept["a"].distinct_samples == Estimate(0.5, 0.4, 0.6)  # an old sweep.json's setting


def test_report_table_names_both_measures():
    """The report's main table: a column per measure, each under its own name."""
    from polyray.eval.report import render_latex_table

    models = {name: EvalRecord.from_json(r) for name, r in RUN_PHASES.items()}  # old key: read as distinct_samples
    header = render_latex_table({"models": models}).splitlines()[6]
    assert "distinct samples & distinct expressions" in header and "countdown" not in header
