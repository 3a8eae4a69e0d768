"""Experiment files: runs x seeds resolve to validated run configs; results aggregate over seeds.

experiment.json's statistics are checked against scipy, statsmodels and float64 loops (the exact
signed-rank p by enumerating every sign flip, Holm by hand); the statistics functions themselves
in test_eval_stats.py."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as st

from polyray.io import ConfigError, DataError
from polyray.drivers.experiment import load_experiment, summarise
from polyray.drivers.experiment_report import report_results, summary_table

ROOT = Path(__file__).resolve().parents[3]
TWO_PHASE = ROOT / "configs" / "experiments" / "two_phase.yaml"


def test_two_phase_resolves_every_run_and_seed():
    exp, configs = load_experiment(TWO_PHASE, seeds=2)
    assert set(configs) == {(r, s) for r in ("baseline", "polychromic", "few_shot") for s in (0, 1)}
    assert [p.type for p in configs["polychromic", 1].phases] == ["polychromic_sft", "grpo"]
    assert configs["polychromic", 1].seed == 1 and configs["few_shot", 0].eval.few_shot == 3
    # identical budgets between the two arms
    base, poly = configs["baseline", 0].phases, configs["polychromic", 0].phases
    assert [p.steps for p in base] == [p.steps for p in poly]
    assert base[0].batch_size == poly[0].batch_size and base[1] == poly[1]


def _write(tmp_path, text):
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_a_run_without_a_base_evaluation_has_no_base_model(tmp_path):
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {eval: {base: false}}}\nmodels: {m: a/base}\n")
    with pytest.raises(ConfigError, match=r"models\.m: run 'a' has no phase 'base' \(\['grpo', 'sft'\]\)"):
        load_experiment(path, 1)
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {m: a/base}\n")
    assert load_experiment(path, 1)[1]["a", 0].eval.base


def test_bad_model_reference_names_the_field(tmp_path):
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {m: a/nope}\n")
    with pytest.raises(ConfigError, match=r"models\.m: run 'a' has no phase 'nope'"):
        load_experiment(path, seeds=1)
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {m: b/sft}\n")
    with pytest.raises(ConfigError, match=r"models\.m"):
        load_experiment(path, seeds=1)


def test_bad_run_field_names_the_run(tmp_path):
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {learner: {lr: 1}}}\nmodels: {m: a/base}\n")
    with pytest.raises(ConfigError, match=r"runs\.a: learner\.lr"):
        load_experiment(path, seeds=1)


def test_a_task_block_puts_every_run_on_that_task(tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "engagement.jsonl"
    path = _write(
        tmp_path,
        f"name: e\nbase: base.yaml\ntask: {{type: replies, path: {fixture}, quality: engagement}}\n"
        "runs: {a: {}, b: {phases: []}}\nmodels: {m: a/sft}\n",
    )
    _, configs = load_experiment(path, seeds=2)
    assert {(c.task.type, c.task.path, c.task.quality) for c in configs.values()} == {
        ("replies", str(fixture), "engagement")
    }
    path = _write(tmp_path, "name: e\nbase: base.yaml\ntask: {type: humaneval}\nruns: {a: {}}\nmodels: {m: a/sft}\n")
    with pytest.raises(ConfigError, match="runs.a: .*'humaneval' is an evaluation set"):
        load_experiment(path, seeds=1)


BRANCHED = """name: e
base: base.yaml
runs:
  sft: {phases: [{type: sft, name: sft, steps: 5}]}
  grpo_a: {from: sft/sft, phases: [{type: grpo, name: grpo, steps: 3, advantage: {type: unlikeliness}}]}
  grpo_b: {from: sft/sft, phases: [{type: grpo, name: grpo, steps: 3}]}
models: {sft: sft/sft, a: grpo_a/grpo, b: grpo_b/grpo}
"""


def test_a_branch_run_starts_from_its_seeds_adapter(tmp_path):
    from polyray.drivers.experiment import _branch_fields

    _, configs = load_experiment(_write(tmp_path, BRANCHED), seeds=2, out=tmp_path / "out")
    assert configs["sft", 1].init_adapter is None
    for run in ("grpo_a", "grpo_b"):
        for seed in (0, 1):
            assert configs[run, seed].init_adapter == str(
                tmp_path / "out" / "runs" / f"sft-s{seed}" / "adapters" / "sft"
            )
    assert [p.type for p in configs["grpo_a", 0].phases] == ["grpo"]
    # a trial's seed picks its adapter (the Tune base config is seed 0's)
    origins = {"grpo_a": "sft/sft"}
    assert _branch_fields({"run": "grpo_a", "seed": 1}, out="/o", origins=origins) == {
        "init_adapter": "/o/runs/sft-s1/adapters/sft"
    }
    assert _branch_fields({"run": "sft", "seed": 1}, out="/o", origins=origins) == {}


@pytest.mark.parametrize(
    "runs, message",
    [
        ("{a: {}, b: {from: a/nope}}", r"runs\.b\.from: run 'a' has no phase 'nope'"),
        ("{a: {}, b: {from: c/sft}}", r"runs\.b\.from: 'c/sft' is not 'run/phase'"),
        ("{a: {}, b: {from: a/sft}, c: {from: b/grpo}}", r"runs\.c\.from: 'b' branches itself"),
    ],
)
def test_bad_branch_names_the_field(tmp_path, runs, message):
    path = _write(tmp_path, f"name: e\nbase: base.yaml\nruns: {runs}\nmodels: {{m: a/sft}}\n")
    with pytest.raises(ConfigError, match=message):
        load_experiment(path, seeds=1)


def test_init_adapter_must_be_a_saved_adapter(tmp_path):
    from polyray.config import RunConfig
    from polyray.drivers.preflight import check_inputs

    with pytest.raises(ConfigError, match=f"init_adapter: {tmp_path} is not a saved LoRA adapter"):
        check_inputs(RunConfig(init_adapter=str(tmp_path)))


def test_a_split_too_large_for_the_task_is_refused_before_anything_starts():
    from polyray.config import RunConfig
    from polyray.drivers.preflight import check_inputs

    narrow = {"type": "countdown", "max_number": 4, "max_target": 10, "n_train": 4, "n_val": 2}
    check_inputs(RunConfig(task={**narrow, "n_test": 4}))
    with pytest.raises(ConfigError, match="task.n_test: could not generate 200 distinct test prompts"):
        check_inputs(RunConfig(task={**narrow, "n_test": 200}))
    # a run's other draws name their own field, not the split's size
    with pytest.raises(ConfigError, match="dynamics.n_prompts: cannot draw 200 val prompts"):
        check_inputs(RunConfig(task={**narrow, "n_test": 4}, dynamics={"every": 5, "n_prompts": 200}))
    check_inputs(RunConfig(task={**narrow, "n_test": 4}, dynamics={"every": 0, "n_prompts": 200}))  # dynamics off
    narrower = {"type": "countdown", "max_number": 3, "max_target": 10, "n_train": 2, "n_val": 2, "n_test": 2}
    check_inputs(RunConfig(task=narrower, eval={"few_shot": 2}))
    with pytest.raises(ConfigError, match="eval.few_shot: cannot draw 8 train prompts"):
        check_inputs(RunConfig(task=narrower, eval={"few_shot": 8}))


def test_a_data_file_edited_between_runs_is_checked_again(tmp_path):
    """A data file shrunk between an experiment's runs (one driver process, whose checks keep what
    they drew) is refused at the next run's check, not passed on the first run's word."""
    from polyray.config import RunConfig
    from polyray.drivers.preflight import check_inputs

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(12)))
    run = RunConfig(task={"type": "replies", "path": str(data)}, phases=[{"name": "grpo", "type": "grpo", "steps": 1}])
    check_inputs(run)
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(5)))
    with pytest.raises(DataError, match="5 distinct prompts are too few for train/val/test splits"):
        check_inputs(run)


def _aggregate(tmp_path, phases_of_seed, seeds=3, models="{x: a/sft, y: a/grpo}", compare="[[y, x]]"):
    """Aggregate fake runs: ``phases_of_seed(seed)`` is that seed's results.json ``phases``."""
    path = _write(tmp_path, f"name: e\nbase: base.yaml\nruns: {{a: {{}}}}\nmodels: {models}\ncompare: {compare}\n")
    exp, configs = load_experiment(path, seeds=seeds)
    for seed in range(seeds):
        d = tmp_path / "out" / "runs" / f"a-s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps({"phases": phases_of_seed(seed)}))
    return summarise(exp, tmp_path / "out", seeds=seeds)


def _rows(cs, n=10, order=None, **extra):
    """Per-prompt rows as results.json holds them: prompt text, n samples, c correct."""
    order = range(len(cs)) if order is None else order
    return [{"prompt": f"prompt {i}", "n": n, "c": cs[i], **extra} for i in order]


def _exact_signed_rank_p(a, b) -> float:
    """Two-sided exact Wilcoxon signed-rank p of a - b: every sign flip of the non-zero differences
    (rounded to 12 decimals, tied |d| at their average rank), 2 x the smaller tail of T+."""
    d = [x for x in np.round(np.subtract(a, b), 12) if x != 0]
    if not d:
        return 1.0
    ranks = st.rankdata(np.abs(d))
    obs = sum(r for r, x in zip(ranks, d) if x > 0)
    null = [sum(r for r, pos in zip(ranks, signs) if pos) for signs in itertools.product((0, 1), repeat=len(d))]
    return min(1.0, 2 * min(sum(t <= obs + 1e-9 for t in null), sum(t >= obs - 1e-9 for t in null)) / len(null))


def _holm_by_hand(p: list[float]) -> list[float]:
    """Sorted p's times (m - i + 1), i = 1..m, cumulative max, clipped at 1, back in input order."""
    m, adjusted, running = len(p), [0.0] * len(p), 0.0
    for i, j in enumerate(sorted(range(m), key=lambda j: p[j]), start=1):
        running = max(running, min(1.0, (m - i + 1) * p[j]))
        adjusted[j] = running
    return adjusted


def test_over_seeds_p_values_cannot_beat_three_runs_per_side(tmp_path):
    # 3 seeds x the same 8 prompts; grpo beats sft on every prompt of every seed. Pooling the
    # 24 (seed, prompt) pairs into one paired test gave p < 0.01: pseudo-replication.
    y_seed = {"pass@1": [0.70, 0.71, 0.72], "pass@5": [0.90, 0.90, 0.95], "reward_mean": [0.5, 0.5, 0.5]}
    x_seed = {"pass@1": [0.30, 0.31, 0.32], "pass@5": [0.60, 0.90, 0.60], "reward_mean": [0.2, 0.2, 0.2]}

    def phases(seed):
        x_rows = _rows([2 + i % 3 for i in range(8)], rewards=[0.2] * 10)
        y_rows = _rows([6 + i % 3 for i in range(8)], rewards=[0.5] * 10)
        return {
            "sft": {**{m: v[seed] for m, v in x_seed.items()}, "per_prompt": x_rows},
            "grpo": {**{m: v[seed] for m, v in y_seed.items()}, "per_prompt": y_rows},
        }

    summary = _aggregate(tmp_path, phases)
    x = summary["models"]["x"]["pass@1"]
    assert x["values"] == pytest.approx([0.3, 0.31, 0.32]) and x["mean"] == pytest.approx(0.31)
    assert x["low"] < 0.31 < x["high"] and x["conditional_on"] == "test prompts"
    # one model over seeds and the 8 prompts all seeds share
    joint = x["over_seeds_and_prompts"]
    assert joint["shared_prompts"] and joint["n_prompts"] == 8 and joint["prompts_matched_by"] == "prompt"
    assert joint["conditional_on"].startswith("nothing")
    assert joint["mean"] == pytest.approx(23 / 80)  # c = 2, 3, 4, 2, 3, 4, 2, 3 of 10

    # the paired design with 3 seeds: 2^3 sign flips, so the exact signed-rank p is at least 2/8
    min_p = 2 / 2**3
    cmp = summary["comparisons"]["y vs x"]
    assert cmp["seeds"] == [0, 1, 2] and set(cmp["metrics"]) == {"pass@1", "pass@5", "reward_mean"}
    for m, e in cmp["metrics"].items():
        a, b = y_seed[m], x_seed[m]
        o = e["over_seeds"]
        assert o["design"] == "paired" and o["n_seeds"] == 3 and o["conditional_on"] == "test prompts"
        assert e["difference"] == pytest.approx(np.mean(a) - np.mean(b))
        assert o["wilcoxon_p"] == pytest.approx(_exact_signed_rank_p(a, b))
        assert o["wilcoxon_p"] >= min_p - 1e-12 and o["wilcoxon_p_holm"] >= o["wilcoxon_p"]
        d = np.round(np.subtract(a, b), 12)
        if np.ptp(d) == 0:  # a constant difference (0.71 - 0.31 is float noise away): t undefined, not p = 0
            assert o["paired_t_p"] is None and o["paired_t_p_holm"] is None and o["ci95"] == [None, None]
            assert o["tost_p"] is None and o["equivalent"] is None
        else:
            t = st.ttest_rel(a, b)
            assert o["paired_t_p"] == pytest.approx(t.pvalue) and o["paired_t_df"] == 2  # 3 runs, not 24 prompts
            assert o["ci95"] == pytest.approx(list(t.confidence_interval(0.95)))
        # prompts: one paired test per seed, 8 prompts each, never 24
        per_seed = e["within_seed"]["per_seed"]
        assert [s["seed"] for s in per_seed] == [0, 1, 2] and all(s["n_prompts"] == 8 for s in per_seed)
        assert e["within_seed"]["hierarchical_bootstrap"]["shared_prompts"]
    assert cmp["metrics"]["pass@1"]["over_seeds"]["wilcoxon_p"] == pytest.approx(min_p)
    assert cmp["metrics"]["pass@1"]["over_seeds"]["wilcoxon_min_p"] == pytest.approx(min_p)
    assert "over_prompts" not in json.dumps(summary)
    json.dumps(summary, allow_nan=False)  # experiment.json is strict JSON
    out = io.StringIO()
    Console(file=out, width=300).print(summary_table(summary))
    text = out.getvalue()
    # p's 0.25, 0.5 (pass@5: one zero difference dropped), 0.25 -> Holm 0.75, 0.75, 0.75
    assert "y vs x" in text and "Wilcoxon 0.25 (0.75)" in text and "cannot go below 0.25" in text
    assert "conditional on the test prompts" in text and "distinct_frac" not in text
    # the columns are the runs' own metrics: pass@k at their ks, none at a k they did not evaluate
    assert "pass@5" in text and "pass@10" not in text and "usq@" not in text


def test_holm_across_every_comparison_and_metric(tmp_path):
    from statsmodels.stats.weightstats import ttost_paired

    assert _holm_by_hand([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert _holm_by_hand([0.2, 0.5]) == pytest.approx([0.4, 0.5]) and _holm_by_hand([0.6, 0.7]) == [1.0, 1.0]
    values = {
        "base": {"pass@1": [0.30, 0.33, 0.29, 0.35], "pass@5": [0.60, 0.64, 0.58, 0.66]},
        "sft": {"pass@1": [0.36, 0.31, 0.40, 0.38], "pass@5": [0.61, 0.70, 0.63, 0.67]},
        "grpo": {"pass@1": [0.52, 0.47, 0.55, 0.50], "pass@5": [0.72, 0.69, 0.75, 0.71]},
    }
    summary = _aggregate(
        tmp_path,
        lambda seed: {ph: {m: v[seed] for m, v in mv.items()} for ph, mv in values.items()},
        seeds=4,
        models="{x: a/base, y: a/sft, z: a/grpo}",
        compare="[[y, x], [z, x], [z, y]]",
    )
    label = {"x": "base", "y": "sft", "z": "grpo"}
    rows = [(name, m) for name in ("y vs x", "z vs x", "z vs y") for m in ("pass@1", "pass@5")]
    raw = {"paired_t_p": [], "wilcoxon_p": [], "tost_p": []}
    for name, m in rows:
        t, c = name.split(" vs ")
        a, b = np.array(values[label[t]][m]), np.array(values[label[c]][m])
        raw["paired_t_p"].append(st.ttest_rel(a, b).pvalue)
        raw["wilcoxon_p"].append(_exact_signed_rank_p(a, b))
        raw["tost_p"].append(ttost_paired(a, b, -0.01, 0.01)[0])  # the default margin
    assert summary["holm_family_sizes"] == {"paired_t_p": 6, "wilcoxon_p": 6, "tost_p": 6}
    got = [summary["comparisons"][name]["metrics"][m]["over_seeds"] for name, m in rows]
    for key, ps in raw.items():
        assert [g[key] for g in got] == pytest.approx(ps)
        assert [g[f"{key}_holm"] for g in got] == pytest.approx(_holm_by_hand(ps))
        if key != "tost_p":
            assert any(g[f"{key}_holm"] > g[key] * 1.5 for g in got)  # the correction did something
    assert [g["equivalent"] for g in got] == [h < 0.05 for h in _holm_by_hand(raw["tost_p"])]


def test_equivalence_is_tested_at_the_configured_margin(tmp_path):
    from statsmodels.stats.weightstats import ttost_paired

    from polyray.eval.report import render_html

    x = [0.300, 0.320, 0.290, 0.310, 0.305]
    y = [0.301, 0.318, 0.2915, 0.310, 0.304]  # within a few thousandths of x, seed by seed

    def phases(seed):
        return {"sft": {"pass@1": x[seed], "pass@5": 0.5}, "grpo": {"pass@1": y[seed], "pass@5": 0.5 + 0.01 * seed}}

    summary = _aggregate(tmp_path, phases, seeds=5)
    o = summary["comparisons"]["y vs x"]["metrics"]["pass@1"]["over_seeds"]
    assert o["equivalence_margin"] == 0.01
    assert o["tost_p"] == pytest.approx(ttost_paired(np.array(y), np.array(x), -0.01, 0.01)[0])
    assert o["equivalent"] is True and -0.01 < o["tost_ci90"][0] < o["tost_ci90"][1] < 0.01
    assert summary["comparisons"]["y vs x"]["metrics"]["pass@5"]["over_seeds"]["equivalent"] is False
    html = render_html({"models": {}, "seed_comparisons": summary["comparisons"]})  # the report's table
    assert 'id="table-seeds"' in html and "yes ±0.01, p " in html and "not shown ±0.01" in html
    assert "given the test prompts" in html and "over seeds and prompts" in html

    path = _write(
        tmp_path,
        "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {x: a/sft, y: a/grpo}\n"
        "compare: [[y, x]]\nequivalence_margin: {pass@1: 0.001}\n",
    )
    exp, configs = load_experiment(path, seeds=5)
    assert exp.margin("pass@1") == 0.001 and exp.margin("pass@10") == 0.01
    summary = summarise(exp, tmp_path / "out", seeds=5)  # the same runs (written above under out/)
    o = summary["comparisons"]["y vs x"]["metrics"]["pass@1"]["over_seeds"]
    assert o["equivalence_margin"] == 0.001 and o["equivalent"] is False
    for bad, message in (("{pass@3: 0.01}", "unknown metric 'pass@3'"), ("-0.1", "must be > 0")):
        path = _write(
            tmp_path, f"name: e\nbase: base.yaml\nruns: {{a: {{}}}}\nmodels: {{x: a/sft}}\nequivalence_margin: {bad}\n"
        )
        with pytest.raises(ConfigError, match=message):
            load_experiment(path, seeds=1)


def test_seeds_are_paired_by_id_not_position(tmp_path):
    x_p1, y_p1 = [0.30, 0.90, 0.34], {0: 0.70, 2: 0.76}

    def x_cs(seed):
        return [2 + i % 3 + seed for i in range(8)]

    def y_cs(seed):
        return [c + d + seed for c, d in zip(x_cs(seed), (5, -1, 3, 1, -2, 6, 0, 2))]

    def phases(seed):
        out = {"sft": {"pass@1": x_p1[seed], "per_prompt": _rows(x_cs(seed), n=20)}}
        if seed != 1:  # seed 1's run never got to grpo; its rows are stored in reverse order
            out["grpo"] = {"pass@1": y_p1[seed], "per_prompt": _rows(y_cs(seed), n=20, order=range(7, -1, -1))}
        return out

    summary = _aggregate(tmp_path, phases)
    assert summary["models"]["y"]["seeds"] == [0, 2] and summary["models"]["y"]["missing_seeds"] == [1]
    assert summary["models"]["x"]["missing_seeds"] == []
    cmp = summary["comparisons"]["y vs x"]
    assert cmp["seeds"] == [0, 2] and cmp["missing_seeds"] == {"y": [1], "x": []}
    e = cmp["metrics"]["pass@1"]
    a, b = [0.70, 0.76], [0.30, 0.34]  # seeds 0 and 2; by position it would be [0.30, 0.90]
    assert e["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert e["over_seeds"]["design"] == "paired"
    assert e["over_seeds"]["paired_t_p"] == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert e["over_seeds"]["paired_t_p"] != pytest.approx(st.ttest_rel(a, [0.30, 0.90]).pvalue)
    assert e["over_seeds"]["wilcoxon_p"] == pytest.approx(_exact_signed_rank_p(a, b))
    per_seed = e["within_seed"]["per_seed"]
    assert [s["seed"] for s in per_seed] == [0, 2]
    for s in per_seed:
        ya, xa = np.array(y_cs(s["seed"])) / 20, np.array(x_cs(s["seed"])) / 20  # paired by prompt text
        assert s["paired_by"] == "prompt" and s["n_prompts"] == 8
        assert s["mean_diff"] == pytest.approx(float(np.mean(ya - xa)))
        assert s["wilcoxon_p"] == pytest.approx(_exact_signed_rank_p(ya, xa))  # ties and a zero: exact
        assert s["wilcoxon_p"] != pytest.approx(_exact_signed_rank_p(ya[::-1], xa))  # paired by position would differ
    assert e["within_seed"]["hierarchical_bootstrap"]["n_seeds"] == 2


def test_within_seed_bootstrap_reproducible_contains_the_mean_and_widens_with_seed_effects(tmp_path):
    def experiment(shifts):
        def phases(seed):
            xc = [i % 5 for i in range(20)]
            yc = [c + i % 3 + shifts[seed] for i, c in enumerate(xc)]
            return {
                "sft": {"pass@1": 0.0, "per_prompt": _rows(xc, n=20)},
                "grpo": {"pass@1": 0.0, "per_prompt": _rows(yc, n=20)},
            }

        return phases

    def boot(d, shifts):
        d.mkdir()
        return _aggregate(d, experiment(shifts), seeds=4)["comparisons"]["y vs x"]["metrics"]["pass@1"]["within_seed"]

    same, varied = (2, 2, 2, 2), (0, 4, 1, 3)  # equal mean shift, only the seed-to-seed spread differs
    flat, spread = boot(tmp_path / "same", same)["hierarchical_bootstrap"], boot(tmp_path / "varied", varied)
    again = boot(tmp_path / "again", varied)
    assert spread == again  # fixed seed: the same numbers
    spread = spread["hierarchical_bootstrap"]
    for b, shifts in ((flat, same), (spread, varied)):
        seed_means = [sum((i % 3 + s) / 20 for i in range(20)) / 20 for s in shifts]  # float64 loop
        assert b["mean_diff"] == pytest.approx(sum(seed_means) / len(seed_means))
        assert b["low"] <= b["mean_diff"] <= b["high"] and b["n_resamples"] == 2000
    assert spread["high"] - spread["low"] > 2 * (flat["high"] - flat["low"]) > 0


def test_report_marks_the_pass1_pass10_frontier_and_chains_branch_dynamics(tmp_path):
    """experiment.json names the pass@1 x pass@10 frontier; report.html holds it, the pass@k curves
    and each recipe's dynamics: its SFT root's records, then its own after them."""
    from polyray.eval.report import write_report
    from polyray.drivers.experiment_report import report_results

    path = _write(tmp_path, BRANCHED)
    out = tmp_path / "out"
    exp, configs = load_experiment(path, seeds=2, out=out)
    values = {"sft": (0.10, 0.60), "grpo_a": (0.20, 0.55), "grpo_b": (0.15, 0.50)}  # b is dominated by a
    for run, (p1, p10) in values.items():
        phase = "sft" if run == "sft" else "grpo"
        for seed in (0, 1):
            d = out / "runs" / f"{run}-s{seed}"
            d.mkdir(parents=True)
            m = {
                "pass@1": p1 + 0.01 * seed,
                "pass@5": (p1 + p10) / 2,
                "pass@10": p10 + 0.01 * seed,
                "usq@5": p1,
                "reward_mean": p1,
                "distinct_frac": 0.5,
                "diversity/countdown_expr": 0.4,
            }
            (d / "results.json").write_text(json.dumps({"phases": {phase: m}}))
            steps = (0, 20, 40) if run == "sft" else (0, 50)
            (d / "dynamics.jsonl").write_text(
                "".join(
                    json.dumps({"phase": phase, "step": s, "global_step": s, "diversity/countdown_expr": 0.5}) + "\n"
                    for s in steps
                )
            )
    summary = summarise(exp, out, seeds=2)
    assert summary["pareto_pass1_pass10"] == ["sft", "a"]
    assert summary["models"]["a"]["usq@5"]["mean"] == pytest.approx(0.2)
    assert summary["models"]["b"]["distinct_samples"]["values"] == [0.5, 0.5]  # read from the old key
    results = report_results(exp, summary, out)
    a_steps = [(r["phase"], r["global_step"]) for r in results["dynamics"] if r["run"] == "a"]
    assert a_steps == [("sft", 0), ("sft", 20), ("sft", 40), ("grpo", 41), ("grpo", 91)]
    assert results["models"]["a"].pass_at_k[10].mean == pytest.approx(0.555)  # the Pareto figure's y axis
    assert results["models"]["a"].get("pass@10") is results["models"]["a"].pass_at_k[10]
    html = write_report(out, results)["html"].read_text()
    for fid in ("fig-passk", "fig-pareto", "fig-dynamics"):
        assert f'id="{fid}"' in html and f'id="{fid}" class="skipped"' not in html, fid


SELECTED = (
    BRANCHED
    + """select:
  grpo: {among: [a, b], metric: val/pass@1}
compare: [[grpo, sft]]
"""
)


def test_selection_is_on_validation_and_reads_the_test_set_of_the_chosen_only(tmp_path):
    """b has the better validation pass@1 (mean over seeds), a the better test pass@1: b is chosen and
    reported as 'grpo', a's test record is never read (it is not even valid JSON here)."""
    path = _write(tmp_path, SELECTED)
    out = tmp_path / "out"
    exp, configs = load_experiment(path, seeds=2, out=out)
    assert exp.reported_labels() == ["sft", "grpo"]
    test = {"sft": 0.10, "grpo_a": 0.40, "grpo_b": 0.20}
    val = {"grpo_a": (0.30, 0.10), "grpo_b": (0.25, 0.25)}  # a: best single seed, b: best mean
    for run, p1 in test.items():
        phase = "sft" if run == "sft" else "grpo"
        for seed in (0, 1):
            d = out / "runs" / f"{run}-s{seed}"
            d.mkdir(parents=True)
            m = {"pass@1": p1 + 0.01 * seed, "pass@10": 0.5, "reward_mean": p1}
            (d / "results.json").write_text("not read" if run == "grpo_a" else json.dumps({"phases": {phase: m}}))
            rows = [{"phase": phase, "step": 0, "pass@1": 0.0}]
            if run in val:
                rows.append({"phase": phase, "step": 3, "pass@1": val[run][seed]})  # the phase's last measurement
            (d / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(exp, out, seeds=2)
    sel = summary["selections"]["grpo"]
    assert sel["chosen"] == "b" and sel["run"] == "grpo_b/grpo" and sel["selected_on"] == "validation"
    assert sel["among"]["a"]["mean"] == pytest.approx(0.20) and sel["among"]["b"]["mean"] == pytest.approx(0.25)
    assert list(summary["models"]) == ["sft", "grpo"] and summary["models"]["grpo"]["selected_on"] == "validation"
    assert summary["models"]["grpo"]["pass@1"]["mean"] == pytest.approx(0.205)  # b's test pass@1
    assert list(summary["comparisons"]) == ["grpo vs sft"]
    results = report_results(exp, summary, out)
    assert "grpo = b selected on validation" in results["title"]
    assert results["selection"] == [
        {
            "what": "grpo",
            "chosen": "b",
            "metric": "val/pass@1",
            "selected_on": "validation",
            "among": {"a": pytest.approx(0.20), "b": pytest.approx(0.25)},
        }
    ]
    from polyray.eval.report import render_html

    assert 'id="table-selection"' in render_html(results)
    text = io.StringIO()
    Console(file=text, width=300).print(summary_table(summary))
    assert "grpo = b, selected on validation by mean val/pass@1 over seeds among a, b" in text.getvalue()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "select: {grpo: {among: [a, b], metric: pass@1}}\n",
            "select.grpo.metric: 'pass@1' is measured on the test set",
        ),
        ("select: {a: {among: [a, b]}}\n", "select.a: the label is also a model's"),
        ("select: {grpo: {among: [a, c]}}\n", "select.grpo.among: unknown model 'c'"),
        ("select: {grpo: {among: [a, b]}}\ncompare: [[a, sft]]\n", "compare: 'a' is a candidate of select.grpo"),
        ("select: {grpo: {among: [sft, a]}}\n", "has no validation measurement"),
        ("select: {grpo: {among: [a, b], metric: val/pass@3}}\n", "measures ['pass@1', 'pass@4'"),
    ],
)
def test_bad_selections_fail_when_the_file_is_read(tmp_path, extra, message):
    body = BRANCHED + extra
    if "sft, a" in extra:  # a run without the dynamics probe
        body = body.replace("sft: {phases:", "sft: {dynamics: {every: 0}, phases:")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(_write(tmp_path, body), seeds=1)


def test_candidates_evaluate_on_validation_and_the_chosen_one_alone_on_test(tmp_path):
    """a and b are only candidates: their runs evaluate on validation. b is chosen; its test records,
    added after the selection (results.json's test), are the table's; a's run holds none."""
    from polyray.drivers.experiment import candidate_runs, evaluate_chosen_on_test, select_models

    path = _write(tmp_path, SELECTED)
    out = tmp_path / "out"
    exp, configs = load_experiment(path, seeds=2, out=out)
    assert candidate_runs(exp) == {"grpo_a", "grpo_b"}
    assert {name: configs[name, 1].eval.split for name in exp.runs} == {"sft": "test", "grpo_a": "val", "grpo_b": "val"}
    val = {"grpo_a": (0.30, 0.10), "grpo_b": (0.25, 0.25)}
    for run, phase in (("sft", "sft"), ("grpo_a", "grpo"), ("grpo_b", "grpo")):
        for seed in (0, 1):
            d = out / "runs" / f"{run}-s{seed}"
            d.mkdir(parents=True)
            split = configs[run, seed].eval.split
            results = {"eval_split": split, "phases": {phase: {"pass@1": 0.9, "pass@10": 0.9}}, "versions": {}}
            if run == "grpo_b":  # the chosen one, evaluated on test after the selection
                results["test"] = {phase: {"pass@1": 0.2 + 0.01 * seed, "pass@10": 0.5}}
            (d / "results.json").write_text(json.dumps(results))
            rows = [{"phase": phase, "step": 3, "pass@1": val[run][seed]}] if run in val else []
            (d / "dynamics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    selections = select_models(exp, out, seeds=2)
    assert selections["grpo"]["run"] == "grpo_b/grpo"
    assert evaluate_chosen_on_test(exp, out, 2, selections) == {}  # both seeds hold it: nothing evaluated again
    summary = summarise(exp, out, seeds=2)
    assert summary["models"]["grpo"]["pass@1"]["mean"] == pytest.approx(0.205)  # b's test, not its validation 0.9
    assert summary["models"]["sft"]["pass@1"]["mean"] == pytest.approx(0.9)  # a run reported as is: its own test


def _t_sf_reference(d: np.ndarray, shift: float) -> tuple[float, float]:
    """(mean(d) - shift) / (sd / sqrt n) by a float64 loop, and its df."""
    n = len(d)
    mean = sum(float(x) for x in d) / n
    var = sum((float(x) - mean) ** 2 for x in d) / (n - 1)
    return (mean - shift) / (var / n) ** 0.5, n - 1


def test_hypothesis_verdict_is_an_intersection_union_of_paired_t_and_relative_tost(tmp_path):
    # pass@10 up by about 0.04 on every seed; pass@1 within a few thousandths of the control's 0.30
    sft = {"pass@1": [0.300, 0.310, 0.290, 0.305, 0.295], "pass@10": [0.60, 0.62, 0.59, 0.61, 0.60]}
    poly = {"pass@1": [0.302, 0.306, 0.292, 0.300, 0.297], "pass@10": [0.645, 0.655, 0.632, 0.652, 0.641]}
    hyp = "{H1: {treatment: y, control: x}}"
    path = _write(
        tmp_path, f"name: e\nbase: base.yaml\nruns: {{a: {{}}}}\nmodels: {{x: a/sft, y: a/grpo}}\nhypotheses: {hyp}\n"
    )
    exp, configs = load_experiment(path, seeds=5)
    for seed in range(5):
        d = tmp_path / "out" / "runs" / f"a-s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        phases = {"sft": {m: v[seed] for m, v in sft.items()}, "grpo": {m: v[seed] for m, v in poly.items()}}
        (d / "results.json").write_text(json.dumps({"phases": phases}))
    h = summarise(exp, tmp_path / "out", seeds=5)["hypotheses"]["H1"]
    # raised: the two-sided paired t p from a float64 loop and the t distribution
    d10 = np.subtract(poly["pass@10"], sft["pass@10"])
    t, df = _t_sf_reference(d10, 0.0)
    assert h["raise"]["pvalue"] == pytest.approx(2 * st.t.sf(abs(t), df))
    # kept: TOST at 10% of the control's mean pass@1, the larger of the two one-sided p's
    d1 = np.subtract(poly["pass@1"], sft["pass@1"])
    margin = 0.1 * np.mean(sft["pass@1"])
    lo, _ = _t_sf_reference(d1, -margin)
    hi, _ = _t_sf_reference(d1, margin)
    p_tost = max(st.t.sf(lo, df), st.t.cdf(hi, df))
    assert h["keep"]["margin"] == pytest.approx(margin) and h["keep"]["pvalue"] == pytest.approx(p_tost)
    assert h["verdict"] == "supported" and h["reasons"] == [] and h["n_seeds"] == 5
    assert h["pvalue"] == pytest.approx(max(h["raise"]["pvalue"], p_tost))
    assert h["conditional_on"] == "test prompts"
    # the table and the report both show it
    summary = summarise(exp, tmp_path / "out", seeds=5)
    out = io.StringIO()
    Console(file=out, width=400).print(summary_table(summary))
    assert "H1" in out.getvalue() and "supported" in out.getvalue()
    from polyray.eval.report import render_html

    html = render_html(report_results(exp, summary, tmp_path / "out"))
    assert 'id="table-hypotheses"' in html and "y raises pass@10 over x" in html


def test_hypothesis_verdicts_say_why_not():
    from polyray.eval.stats import raised_and_kept

    seeds = range(5)
    base = {s: 0.30 + 0.01 * (s % 2) for s in seeds}
    same10 = {s: 0.6 + 0.01 * s for s in seeds}
    # pass@10 not raised (noise around zero), pass@1 kept
    noisy = {s: same10[s] + (0.01 if s % 2 else -0.012) for s in seeds}
    v = raised_and_kept(noisy, same10, {s: base[s] + 0.001 * s for s in seeds}, base, keep_within=0.1)
    assert v["verdict"] == "not supported" and len(v["reasons"]) == 1 and v["reasons"][0].startswith("not raised")
    # raised a lot, but pass@1 fell by 20%: outside a 10% margin
    up = {s: same10[s] + 0.05 + 0.002 * s for s in seeds}
    fell = {s: base[s] * 0.8 + 0.001 * s for s in seeds}
    v = raised_and_kept(up, same10, fell, base, keep_within=0.1)
    assert v["verdict"] == "not supported" and v["reasons"][0].startswith("not shown kept")
    # a significant *fall* is not a raise
    down = {s: same10[s] - 0.05 - 0.002 * s for s in seeds}
    kept = {s: base[s] + 0.001 * s for s in seeds}
    v = raised_and_kept(down, same10, kept, base, keep_within=0.1)
    assert v["verdict"] == "not supported" and v["pvalue"] == 1.0
    # identical pass@1 on every seed: TOST is undefined, so no verdict
    v = raised_and_kept(up, same10, base, base, keep_within=0.1)
    assert v["verdict"] == "undecided" and v["pvalue"] is None
    # too few seeds: no verdict either way
    v = raised_and_kept({0: 0.7, 1: 0.8, 2: 0.9}, {0: 0.1, 1: 0.2, 2: 0.25}, base, base, keep_within=0.1)
    assert v["verdict"] == "undecided" and "3 paired seeds, at least 5 needed" in v["reasons"][0]
    with pytest.raises(ValueError, match="keep_within"):
        raised_and_kept(up, same10, base, base, keep_within=10)


def test_a_hypothesis_names_reported_models(tmp_path):
    path = _write(
        tmp_path,
        "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {x: a/sft}\n"
        "hypotheses: {H1: {treatment: nope, control: x}}\n",
    )
    with pytest.raises(ConfigError, match="hypotheses.H1: unknown model 'nope'"):
        load_experiment(path, seeds=1)
    path.write_text(
        "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {x: a/sft, y: a/grpo}\n"
        "hypotheses: {H1: {treatment: y, control: x, raise_metric: pass@x}}\n"
    )
    with pytest.raises(ConfigError, match="raise_metric"):
        load_experiment(path, seeds=1)


def test_a_validation_stage_reports_on_validation_only_and_fresh_seeds_are_their_own(tmp_path):
    path = _write(
        tmp_path,
        "name: e\nbase: base.yaml\nsplit: val\nruns: {a: {}}\nmodels: {x: a/sft, y: a/grpo}\ncompare: [[y, x]]\n",
    )
    exp, configs = load_experiment(path, seeds=[5, 6, 7])
    assert sorted(configs) == [("a", 5), ("a", 6), ("a", 7)]
    assert all(c.eval.split == "val" and c.seed == s for (_, s), c in configs.items())
    x, y = [0.30, 0.33, 0.29], [0.36, 0.35, 0.33]
    for i, seed in enumerate((5, 6, 7)):
        d = tmp_path / "out" / "runs" / f"a-s{seed}"
        d.mkdir(parents=True)
        phases = {"sft": {"pass@1": x[i]}, "grpo": {"pass@1": y[i]}}
        (d / "results.json").write_text(json.dumps({"eval_split": "val", "phases": phases}))
    (tmp_path / "out" / "runs" / "a-s0").mkdir()  # a seed outside the experiment's is never read
    (tmp_path / "out" / "runs" / "a-s0" / "results.json").write_text(
        json.dumps({"eval_split": "val", "phases": {"sft": {"pass@1": 0.9}, "grpo": {"pass@1": 0.9}}})
    )
    summary = summarise(exp, tmp_path / "out", seeds=[5, 6, 7])
    assert summary["split"] == "val" and summary["seed_ids"] == [5, 6, 7] and summary["seeds"] == 3
    assert summary["models"]["x"]["pass@1"]["values"] == pytest.approx(x)
    cmp = summary["comparisons"]["y vs x"]["metrics"]["pass@1"]["over_seeds"]
    assert cmp["paired_t_p"] == pytest.approx(st.ttest_rel(y, x).pvalue)
    text = json.dumps(summary)
    assert "test prompts" not in text, text[max(0, text.find("test prompts") - 300) : text.find("test prompts") + 50]
    assert cmp["conditional_on"] == "validation prompts"
    out = io.StringIO()
    Console(file=out, width=300).print(summary_table(summary))
    assert "validation set" in out.getvalue() and "test set" not in out.getvalue()
    assert report_results(exp, summary, tmp_path / "out")["title"].startswith("polyray experiment: e (validation set")
    # a run on the test split is not a validation record: that seed is missing, not misread
    (tmp_path / "out" / "runs" / "a-s7" / "results.json").write_text(
        json.dumps({"phases": {"sft": {"pass@1": 0.5}, "grpo": {"pass@1": 0.5}}})
    )
    assert summarise(exp, tmp_path / "out", seeds=[5, 6, 7])["models"]["x"]["missing_seeds"] == [7]


def test_a_validation_stage_takes_no_selection(tmp_path):
    path = _write(
        tmp_path,
        "name: e\nbase: base.yaml\nsplit: val\nruns: {a: {}}\nmodels: {x: a/sft, y: a/grpo}\n"
        "select: {best: {among: [x, y]}}\n",
    )
    with pytest.raises(ConfigError, match="split: val is itself the selection stage"):
        load_experiment(path, seeds=1)
