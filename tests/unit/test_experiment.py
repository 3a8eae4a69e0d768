"""Experiment files: runs x seeds resolve to validated run configs; results aggregate over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyray.io import ConfigError
from polyray.experiment import aggregate, load_experiment

ROOT = Path(__file__).resolve().parents[2]
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


def test_aggregate_means_over_seeds_and_tests_over_prompts(tmp_path):
    path = _write(tmp_path, "name: e\nbase: base.yaml\nruns: {a: {}}\nmodels: {x: a/sft, y: a/grpo}\ncompare: [[y, x]]\n")
    exp, configs = load_experiment(path, seeds=3)
    for seed in range(3):
        d = tmp_path / "out" / "runs" / f"a-s{seed}"
        d.mkdir(parents=True)
        phases = {}
        for name, c in (("sft", 2), ("grpo", 6)):
            per_prompt = [{"n": 10, "c": c + (i % 3)} for i in range(8)]
            phases[name] = {"pass@1": (c + 1 + seed * 0.1) / 10, "reward_mean": 0.1 * seed, "per_prompt": per_prompt}
        (d / "results.json").write_text(json.dumps({"phases": phases}))
    summary = aggregate(exp, configs, tmp_path / "out", seeds=3)
    x = summary["models"]["x"]["pass@1"]
    assert x["values"] == pytest.approx([0.3, 0.31, 0.32]) and x["mean"] == pytest.approx(0.31)
    assert x["low"] < 0.31 < x["high"]
    cmp = summary["comparisons"]["y vs x"]["pass@1"]
    assert cmp["difference"] == pytest.approx(0.4)
    assert cmp["over_prompts"]["wilcoxon_p"] < 0.01  # 24 paired prompts, all better
    assert cmp["over_seeds"]["mann_whitney_p"] == pytest.approx(0.1)  # 3 vs 3, complete separation
