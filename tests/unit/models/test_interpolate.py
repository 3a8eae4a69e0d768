"""Adapter interpolation (WiSE-FT, arXiv 2504.10478) and mixes: peft's ``cat`` combination against a float64 sum
of the LoRA deltas (extrapolated and mixed coefficients too), and the interpolated adapter's logits against the
base with the merged weights added."""

from __future__ import annotations

import pytest
import torch
from support.phase_harness import fake_run, random_lora_policy

from polyray.learner.lora import load_base, save_adapter
from polyray.models.interpolate import (
    alpha_label,
    check_alphas,
    compute_lora_deltas,
    interpolate_adapters,
    interpolated_rank,
    mix_adapters,
    parse_label,
)


@pytest.fixture(scope="module")
def adapters(model_dir, run_config, tmp_path_factory):
    """Three different random adapters of the embedded model: 'from' of rank 8, 'to' of rank 4, 'other' of rank 2
    (scaling 3)."""
    tmp = tmp_path_factory.mktemp("interp")
    lora = run_config.learner.lora
    configs = (
        ("from", lora),
        ("to", lora.model_copy(update={"r": 4, "alpha": 4.0})),
        ("other", lora.model_copy(update={"r": 2, "alpha": 6.0})),
    )
    for seed, (name, cfg) in enumerate(configs):
        model, _ = random_lora_policy(model_dir, cfg, seed, std=0.05)
        save_adapter(model, tmp / name)
    return tmp


def _deltas_from_files(adapter_dir):
    """(lora_alpha / r)·B·A per module in float64, read straight from the adapter's files (not the code under test)."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    return {
        key.split(".lora_A.")[0]: scale * (tensors[key.replace(".lora_A.", ".lora_B.")].double() @ a.double())
        for key, a in tensors.items()
        if ".lora_A." in key
    }


def test_cat_is_the_exact_weighted_sum_of_deltas(model_dir, adapters, tmp_path):
    alphas = [0.0, 0.3, 1.0]
    written = interpolate_adapters(model_dir, adapters / "from", adapters / "to", alphas, tmp_path)
    assert {a: p.name for a, p in written.items()} == {a: alpha_label(a) for a in alphas}
    d_from, d_to = compute_lora_deltas(adapters / "from"), compute_lora_deltas(adapters / "to")
    assert d_from.keys() == d_to.keys() and len(d_from) > 0
    assert interpolated_rank(adapters / "from", adapters / "to") == 12
    for alpha, path in written.items():
        merged = compute_lora_deltas(path)
        assert merged.keys() == d_from.keys()
        for module, delta in merged.items():
            expected = (1 - alpha) * d_from[module] + alpha * d_to[module]  # float64 merge of the deltas
            torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)


def test_interpolated_adapter_gives_the_merged_models_logits(model_dir, adapters, tmp_path):
    """Base + the α = 0.4 adapter through peft == base whose weights have (0.6 ΔW_from + 0.4 ΔW_to) added."""
    from peft import PeftModel

    path = interpolate_adapters(model_dir, adapters / "from", adapters / "to", [0.4], tmp_path)[0.4]
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    base, _ = load_base(str(model_dir))
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, str(path)).eval()(ids).logits
    reference, _ = load_base(str(model_dir))
    d_from, d_to = compute_lora_deltas(adapters / "from"), compute_lora_deltas(adapters / "to")
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for key in d_from:
            name = key.removeprefix("base_model.model.")
            w = modules[name].weight
            w.copy_((w.to(torch.float64) + 0.6 * d_from[key] + 0.4 * d_to[key]).to(w.dtype))
        expected = reference.eval()(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    base_logits = load_base(str(model_dir))[0].eval()(ids).logits.detach()
    assert (expected - base_logits).abs().max() > 1e-2  # the adapters move the logits: the check has teeth


def test_mixes_and_extrapolations_are_the_exact_weighted_sums_of_deltas(model_dir, adapters, tmp_path):
    """W0 + α·ΔW_to + b·ΔW_other, negative α and b = 1.5 among the points, and the curve extrapolated past both
    ends: each written adapter's (lora_alpha / r)·B·A against the sum of the inputs' deltas in float64."""
    import json

    d_from, d_to, d_other = (_deltas_from_files(adapters / name) for name in ("from", "to", "other"))
    assert d_to.keys() == d_other.keys() == d_from.keys() and len(d_to) > 0
    points = [(-0.5, 1.5), (1.5, -0.25), (1.0, 0.0), (2.0, 1.0), (0.0, 1.5)]
    written = mix_adapters(model_dir, adapters / "to", adapters / "other", points, tmp_path / "mix")
    assert list(written) == points and interpolated_rank(adapters / "to", adapters / "other") == 6
    for (a, b), path in written.items():
        assert path.name == alpha_label(a, b) and parse_label(path.name) == (a, b)
        cfg = json.loads((path / "adapter_config.json").read_text())
        assert cfg["r"] == cfg["lora_alpha"] == 6  # 4 + 2 stacked, scaling 1
        merged = _deltas_from_files(path)
        assert merged.keys() == d_to.keys()
        for module, delta in merged.items():
            torch.testing.assert_close(delta, a * d_to[module] + b * d_other[module], rtol=1e-5, atol=1e-7)
    curve = interpolate_adapters(model_dir, adapters / "from", adapters / "to", [-0.25, 1.5], tmp_path / "curve")
    assert [p.name for p in curve.values()] == ["a-0.25", "a1.5"]
    for alpha, path in curve.items():
        for module, delta in _deltas_from_files(path).items():
            expected = (1 - alpha) * d_from[module] + alpha * d_to[module]
            torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)


def test_alphas_are_checked():
    assert check_alphas([0, "0.5", 1]) == [0.0, 0.5, 1.0]
    assert check_alphas([-1, -0.25, 1.5, 2]) == [-1.0, -0.25, 1.5, 2.0]  # extrapolation within [-1, 2]
    for bad, match in (
        ([], "at least one"),
        ([2.5], "not in"),
        ([-1.5], "not in"),
        ([0.5, 0.5], "repeated"),
        ([0.0, -0.0], "repeated"),
        ([float("nan")], "not in"),
    ):
        with pytest.raises(ValueError, match=match):
            check_alphas(bad)


def test_labels_are_distinct_valid_names_and_round_trip():
    import re

    values = [-1.0, -0.5, -0.25, -1e-7, 0.0, 0.1, 1 / 3, 0.3333334, 0.25, 1.0, 1.25, 1.5, 2.0]
    curve = [alpha_label(a) for a in values]
    mixes = [alpha_label(a, b) for a in values for b in values]
    assert len(set(curve + mixes)) == len(values) + len(values) ** 2
    assert [parse_label(x) for x in curve] == [(a, None) for a in values]
    assert [parse_label(x) for x in mixes] == [(a, b) for a in values for b in values]
    assert all(re.fullmatch(r"a[0-9a-z.+_-]+", x) for x in curve + mixes)  # a directory name, never a flag
    assert (alpha_label(-0.25), alpha_label(1.5), alpha_label(1.0), alpha_label(-0.0)) == ("a-0.25", "a1.5", "a1", "a0")
    assert alpha_label(1 / 3) != alpha_label(0.3333334) and alpha_label(0.5, 1.5) == "a0.5_b1.5"
    with pytest.raises(ValueError, match="not an interpolation label"):
        parse_label("b0.5")


def test_out_of_range_grids_name_the_option():
    from polyray.drivers.interpolate import check_grid, mix_request
    from polyray.io import ConfigError

    assert check_grid([-0.5, 1.5]) == [-0.5, 1.5, 1.0]  # the 'to' adapter is always evaluated
    assert check_grid([0.5], [0, 1.5]) == [(0.5, 0.0), (0.5, 1.5), (1.0, 0.0)]
    for args, match in (
        (([0, 2.5],), r"--alphas: 2.5 is not in \[-1, 2\]"),
        (([-1.01],), r"--alphas: -1.01 is not in \[-1, 2\]"),
        (([0, 1], [0, 1.6]), r"--other-coefs: 1.6 is not in \[-1, 1.5\]"),
        (([0, 1], [-2]), r"--other-coefs: -2.0 is not in \[-1, 1.5\]"),
        (([0, 1], []), "--other-coefs: give at least one"),
    ):
        with pytest.raises(ConfigError, match=match):
            check_grid(*args)
    assert mix_request(None, None, None) is None and mix_request(None, "sft", None) == (0.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match="--other-coefs: give --other"):
        mix_request(None, None, [0.5])
    with pytest.raises(ConfigError, match="--from: not used with --other"):
        mix_request("sft", "other", [0.5])


def test_choose_alpha_keeps_pass1_and_maximises_passk():
    from polyray.drivers.interpolate import choose_alpha
    from polyray.drivers.selection import best_keeping

    pass1 = {0.0: 0.20, 0.5: 0.295, 0.75: 0.31, 1.0: 0.30}
    passk = {0.0: 0.60, 0.5: 0.55, 0.75: 0.50, 1.0: 0.45}
    val = {a: {"pass@1": pass1[a], "pass@8": passk[a]} for a in pass1}
    assert choose_alpha(val, [1, 8], tolerance=0.01) == 0.5  # 0.0 loses pass@1, 0.5 is within 0.01 and best at k
    assert choose_alpha(val, [1, 8], tolerance=0.0) == 0.75
    assert choose_alpha(val, [1, 8], tolerance=0.2) == 0.0
    tie = {0.5: {"pass@1": 0.3, "pass@8": 0.4}, 1.0: {"pass@1": 0.3, "pass@8": 0.4}}
    assert choose_alpha(tie, [1, 8], tolerance=0.01) == 1.0  # a tie goes to the larger α
    no_k1 = {a: {"pass@2": pass1[a], "pass@8": passk[a]} for a in pass1}  # no pass@1: the smallest k is kept
    assert choose_alpha(no_k1, [2, 8], tolerance=0.01) == 0.5
    with pytest.raises(ValueError, match="reference"):
        best_keeping({0.5: 0.4}, {0.5: 0.3}, 1.0, 0.01)
    far = {a: {"pass@1": 0.3, "pass@8": 0.4} for a in (0.5, 1.0, 1.5)}
    far[1.0]["pass@8"] = 0.3
    assert choose_alpha(far, [1, 8], tolerance=0.01) == 0.5  # 0.5 and 1.5 tie, as near α = 1: the smaller


def test_choose_a_mix_against_the_to_adapter():
    from polyray.drivers.interpolate import MIX_REFERENCE, choose_alpha

    val = {
        (1.0, 0.0): {"pass@1": 0.30, "pass@8": 0.45},
        (1.0, 0.5): {"pass@1": 0.295, "pass@8": 0.55},
        (0.5, 0.5): {"pass@1": 0.28, "pass@8": 0.60},  # loses pass@1 at tolerance 0.01
        (1.5, -0.5): {"pass@1": 0.31, "pass@8": 0.55},
    }
    assert choose_alpha(val, [1, 8], 0.01, MIX_REFERENCE) == (1.0, 0.5)  # ties: the nearest to (1, 0), then smaller
    assert choose_alpha(val, [1, 8], 0.03, MIX_REFERENCE) == (0.5, 0.5)


@pytest.fixture(scope="module")
def run_dir(model_dir, run_config, tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("run"), model_dir, run_config)


def test_endpoints_default_to_the_previous_phase_or_the_starting_adapter(run_dir, run_config, adapters):
    from polyray.drivers.interpolate import resolve_endpoints
    from polyray.io import ConfigError

    sft, grpo = run_dir / "adapters" / "sft", run_dir / "adapters" / "grpo"
    assert resolve_endpoints(run_dir, run_config, None, None) == (sft, grpo)
    started = run_config.model_copy(update={"init_adapter": str(adapters / "from")})
    assert resolve_endpoints(run_dir, started, None, None) == ((adapters / "from").resolve(), grpo)
    assert resolve_endpoints(run_dir, run_config, str(adapters / "to"), "sft") == ((adapters / "to").resolve(), sft)
    for args, match in (
        ((None, "rl"), "--to: the run has no adapter for phase 'rl'"),
        (("nowhere", None), "--from: 'nowhere' is not a phase"),
        ((None, "sft"), "--from: the run started from no adapter"),
        (("grpo", None), "the same adapter"),
    ):
        with pytest.raises(ConfigError, match=match):
            resolve_endpoints(run_dir, run_config, *args)


def test_a_mix_resolves_to_and_other_like_to_and_from(run_dir, adapters):
    from polyray.drivers.interpolate import resolve_mix
    from polyray.io import ConfigError

    sft, grpo = run_dir / "adapters" / "sft", run_dir / "adapters" / "grpo"
    assert resolve_mix(run_dir, None, "sft") == (grpo, sft)
    assert resolve_mix(run_dir, "sft", str(adapters / "other")) == (sft, (adapters / "other").resolve())
    for args, match in (((None, "nowhere"), "--other: 'nowhere' is not a phase"), ((None, "grpo"), "the same")):
        with pytest.raises(ConfigError, match=match):
            resolve_mix(run_dir, *args)


def test_eval_jobs_read_validation_then_test_with_the_runs_settings(run_dir, run_config):
    from polyray.drivers.interpolate import eval_job, lora_rank_slot

    adapters = {0.5: run_dir / "adapters" / "sft", 1.0: run_dir / "adapters" / "grpo"}
    val = eval_job(run_config, adapters, 16, "val", None, None, "v")
    assert (val.tasks[0].split, val.tasks[0].n_prompts, val.compare) == ("val", run_config.task.n_val, [])
    assert (val.n_samples, val.ks, val.rollout.max_lora_rank) == (run_config.eval.n_samples, run_config.eval.ks, 16)
    assert [m.name for m in val.models] == ["a0.5", "a1"]
    test = eval_job(run_config, adapters, 24, "test", 5, 4, "t")
    assert (test.tasks[0].split, test.tasks[0].n_prompts, test.n_samples) == ("test", 5, 4)
    assert test.ks == [1, 4] and run_config.eval.ks == [1, 5, 10] and test.rollout.max_lora_rank == 32
    assert test.compare == [("a0.5", "a1")]  # each α against the 'to' adapter, paired over the test prompts
    assert [lora_rank_slot(r) for r in (1, 2, 16, 17, 300)] == [1, 8, 16, 32, 320]
    mixes = {(1.5, -0.5): run_dir / "adapters" / "sft", (1.0, 0.0): run_dir / "adapters" / "grpo"}
    test = eval_job(run_config, mixes, 16, "test", 5, 4, "t")
    assert [m.name for m in test.models] == ["a1.5_b-0.5", "a1_b0"] and test.compare == [("a1.5_b-0.5", "a1_b0")]


def _seed_summary(rng, chosen):
    curve = []
    for alpha in (0.0, 0.5, 1.0):
        p1 = 0.13 + 0.05 * alpha + rng.normal(0, 0.005)
        curve.append({"alpha": alpha, "test": {"pass@1": p1, "pass@10": 0.6 - 0.12 * alpha + rng.normal(0, 0.02)}})
    return {"run": "r", "alphas": [0.0, 0.5, 1.0], "curve": curve, "selection": {"chosen": chosen, "rule": "x"}}


def test_the_curve_over_seeds_is_scipys_paired_statistics():
    """Intervals over seeds, TOST against α = 1 and paired t against α = 0, checked against scipy directly
    (TOST: the larger of the two one-sided paired t p-values, each from scipy's t distribution)."""
    import numpy as np
    from scipy import stats

    from polyray.drivers.interpolate import summarize_seeds
    from polyray.io import ConfigError

    rng = np.random.default_rng(0)
    summaries = [_seed_summary(rng, c) for c in (0.5, 0.5, 1.0, 0.5, 0.0)]
    out = summarize_seeds(summaries, margin=0.01)

    def test(a, m):
        return np.array([next(r for r in s["curve"] if r["alpha"] == a)["test"][m] for s in summaries])

    half = out["curve"][1]
    mean, sd = test(0.5, "pass@1").mean(), test(0.5, "pass@1").std(ddof=1)
    assert half["pass@1"]["high"] == pytest.approx(mean + stats.t.ppf(0.975, 4) * sd / np.sqrt(5))
    d = test(0.5, "pass@1") - test(1.0, "pass@1")
    se = d.std(ddof=1) / np.sqrt(5)
    tost = max(stats.t.sf((d.mean() + 0.01) / se, 4), stats.t.cdf((d.mean() - 0.01) / se, 4))
    assert half["pass@1_vs_to"]["pvalue"] == pytest.approx(tost) and half["pass@1_vs_to"][
        "difference"
    ] == pytest.approx(d.mean())
    assert half["pass@10_vs_from"]["pvalue"] == pytest.approx(
        stats.ttest_rel(test(0.5, "pass@10"), test(0.0, "pass@10")).pvalue
    )
    assert "pass@1_vs_to" not in out["curve"][2] and "pass@10_vs_from" not in out["curve"][0]  # no self-comparison
    # each seed's own choice, read as one model
    picked = np.array(
        [next(r for r in s["curve"] if r["alpha"] == s["selection"]["chosen"])["test"]["pass@10"] for s in summaries]
    )
    chosen = out["chosen"]
    assert chosen["alphas"] == [0.5, 0.5, 1.0, 0.5, 0.0] and chosen["pass@10"]["mean"] == pytest.approx(picked.mean())
    p = [chosen["tests"][k]["pvalue"] for k in ("pass@1_vs_to", "pass@10_vs_from", "pass@10_vs_to")]
    assert chosen["tests"]["pass@10_vs_to"]["pvalue"] == pytest.approx(
        stats.ttest_rel(picked, test(1.0, "pass@10")).pvalue
    )
    order = np.argsort(p)
    holm = np.maximum.accumulate([min(1.0, (3 - i) * p[j]) for i, j in enumerate(order)])
    assert [
        chosen["tests"][k]["pvalue_holm"] for k in ("pass@1_vs_to", "pass@10_vs_from", "pass@10_vs_to")
    ] == pytest.approx([holm[list(order).index(i)] for i in range(3)])
    with pytest.raises(ConfigError, match="2 or more"):
        summarize_seeds(summaries[:1])
    with pytest.raises(ConfigError, match="grids"):
        summarize_seeds([summaries[0], {**summaries[1], "alphas": [0.0, 1.0]}])


def test_the_summary_over_seeds_of_mixes_keys_on_alpha_and_b():
    """With --other the points are (α, b): pass@1 against (1, 0), the 'to' adapter; the largest pass@k against
    (0, 1), the 'other' adapter alone."""
    import numpy as np

    from polyray.drivers.interpolate import summarize_seeds
    from polyray.io import ConfigError

    rng = np.random.default_rng(1)
    points = [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [1.5, -0.5]]

    def seed(chosen):
        curve = []
        for a, b in points:
            p1, p10 = 0.2 + 0.05 * a + rng.normal(0, 0.005), 0.6 - 0.1 * a + rng.normal(0, 0.01)
            curve.append({"alpha": a, "b": b, "test": {"pass@1": p1, "pass@10": p10}})
        return {"run": "r", "alphas": [0.0, 0.5, 1.0, 1.5], "points": points, "curve": curve,
                "selection": {"chosen": chosen, "rule": "x"}}  # fmt: skip

    summaries = [seed(c) for c in ([0.5, 0.5], [0.5, 0.5], [1.0, 0.0])]
    out = summarize_seeds(summaries)
    assert out["alphas"] == points and out["baseline"] == {"name": "other", "label": "a0_b1"}
    labels = ["a0_b1", "a0.5_b0.5", "a1_b0", "a1.5_b-0.5"]
    assert out["reference"] == "a1_b0" and [r["label"] for r in out["curve"]] == labels

    def test(i, m):
        return np.array([s["curve"][i]["test"][m] for s in summaries])

    assert out["curve"][3]["pass@1_vs_to"]["difference"] == pytest.approx(
        (test(3, "pass@1") - test(2, "pass@1")).mean()
    )
    assert "pass@10_vs_other" not in out["curve"][0] and "pass@1_vs_to" not in out["curve"][2]
    assert out["curve"][1]["pass@10_vs_other"]["difference"] == pytest.approx(
        (test(1, "pass@10") - test(0, "pass@10")).mean()
    )
    picked = np.array(
        [s["curve"][1 if s["selection"]["chosen"] == [0.5, 0.5] else 2]["test"]["pass@1"] for s in summaries]
    )
    assert out["chosen"]["labels"] == ["a0.5_b0.5", "a0.5_b0.5", "a1_b0"]
    assert out["chosen"]["tests"]["pass@1_vs_to"]["difference"] == pytest.approx((picked - test(2, "pass@1")).mean())
    assert set(out["chosen"]["tests"]) == {"pass@1_vs_to", "pass@10_vs_other", "pass@10_vs_to"}
    with pytest.raises(ConfigError, match="include α = 0 and b = 1"):
        summarize_seeds([{**s, "points": points[1:]} for s in summaries])


def test_a_mix_run_chooses_on_validation_reads_test_once_and_records_its_points(
    run_dir, model_dir, monkeypatch, tmp_path
):
    """``run_interpolation --other`` with the evaluation job stubbed: the (α, b) adapters written, validation then
    test evaluated once each, the choice made on validation, each point's coefficients in interpolation.json."""
    import json

    import polyray.drivers.evaluate as evaluate
    import polyray.models.source as source
    from polyray.drivers.interpolate import run_interpolation

    splits = []

    def fake_eval(job, out_dir):
        split = job.tasks[0].split
        splits.append(split)
        models = {}
        for m in job.models:
            a, b = parse_label(m.name)
            passk = 0.5 + 0.1 * b if split == "val" else 0.4  # validation prefers the most 'other'
            models[m.name] = {"pass@1": {"mean": 0.3}, **{f"pass@{k}": {"mean": passk} for k in job.ks if k > 1}}
        return {"models": models, "stats": {}}

    monkeypatch.setattr(evaluate, "run_eval", fake_eval)
    monkeypatch.setattr(source, "prepare_model_dir", lambda model, task: str(model_dir))
    out = tmp_path / "out"
    summary = run_interpolation(run_dir, [-0.5, 1.5], other="sft", other_coefs=[0, 1.5], output_dir=out)
    assert splits == ["val", "test"]
    points = [[-0.5, 0.0], [-0.5, 1.5], [1.5, 0.0], [1.5, 1.5], [1.0, 0.0]]  # the 'to' adapter added
    assert summary["points"] == points and summary["other_coefs"] == [0.0, 1.5] and summary["from"] is None
    assert summary["other"].endswith("adapters/sft") and summary["to"].endswith("adapters/grpo")
    assert summary["selection"]["chosen"] == [1.5, 1.5] and summary["selection"]["chosen_label"] == "a1.5_b1.5"
    rows = {row["label"]: row for row in summary["curve"]}
    assert rows["a-0.5_b1.5"]["coefficients"] == {"to": -0.5, "other": 1.5}
    assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(rows)
    assert json.loads((out / "interpolation.json").read_text()) == summary


def _stub_eval(monkeypatch, model_dir, numbers):
    """Stub the evaluation job: each model's pass@k from ``numbers(seed, split, alpha)`` → (pass@1, pass@K>1),
    the seed read from the run directory's name (``s<i>``); returns the list of (seed, split) evaluated."""
    import re

    import polyray.drivers.evaluate as evaluate
    import polyray.models.source as source

    calls = []

    def fake_eval(job, out_dir):
        run = out_dir.parent.parent.name  # <run>/interpolate/<split>
        split, seed = job.tasks[0].split, int(run[1:]) if re.fullmatch(r"s\d+", run) else 0
        calls.append((seed, split))
        models = {}
        for m in job.models:
            p1, pk = numbers(seed, split, parse_label(m.name)[0])
            models[m.name] = {"pass@1": {"mean": p1}, **{f"pass@{k}": {"mean": pk} for k in job.ks if k > 1}}
        return {"models": models, "stats": {"compare": "test only"} if split == "test" else {}}

    monkeypatch.setattr(evaluate, "run_eval", fake_eval)
    monkeypatch.setattr(source, "prepare_model_dir", lambda model, task: str(model_dir))
    return calls


def test_validation_only_never_builds_the_test_job(run_dir, model_dir, monkeypatch, tmp_path):
    """``--validation-only``: the adapters written, the evaluation job run once, on val; no test job, no test/,
    the choice still made on validation; interpolation.json records validation_only and null test numbers."""
    import json

    from polyray.drivers.interpolate import run_interpolation
    from polyray.io import ConfigError

    calls = _stub_eval(monkeypatch, model_dir, lambda seed, split, a: (0.3, 0.6 - 0.1 * a))  # α = 0 best at K
    out = tmp_path / "out"
    summary = run_interpolation(run_dir, [0, 0.5], output_dir=out, tolerance=0.01, validation_only=True)
    assert [split for _, split in calls] == ["val"]
    assert (out / "adapters").is_dir() and not (out / "test").exists()
    assert summary["validation_only"] is True and summary["test_stats"] == {} and summary["splits"]["test"] is None
    assert [row["test"] for row in summary["curve"]] == [None, None, None]
    assert [row["val"]["pass@1"] for row in summary["curve"]] == [0.3, 0.3, 0.3]
    assert summary["selection"]["chosen"] == 0.0 and summary["selection"]["selected_on"] == "validation"
    assert json.loads((out / "interpolation.json").read_text()) == summary
    with pytest.raises(ConfigError, match="--test-prompts: not used with --validation-only"):
        run_interpolation(run_dir, [0, 0.5], output_dir=out, test_prompts=5, validation_only=True)
    assert len(calls) == 1


def test_validation_only_seeds_summarise_val_and_are_not_read_back_for_test(run_dir, model_dir, monkeypatch, tmp_path):
    """Over seeds with ``--validation-only`` the curve is on val (``split: val``; a mean checked by hand); a full
    request then interpolates every run again (validation-only files lack test) and summarises test; a later
    validation-only request reads the full files back."""
    import shutil

    import numpy as np

    from polyray.drivers.interpolate import interpolate_seeds

    val_p1 = {
        0: {0.0: 0.20, 0.5: 0.31, 1.0: 0.30},
        1: {0.0: 0.22, 0.5: 0.28, 1.0: 0.29},
        2: {0.0: 0.19, 0.5: 0.33, 1.0: 0.32},
    }

    def numbers(seed, split, alpha):
        if split == "val":
            return val_p1[seed][alpha], 0.6 - 0.1 * alpha + 0.01 * seed
        return 0.1 + 0.01 * seed + 0.02 * alpha, 0.5 - 0.05 * alpha - 0.003 * seed * seed

    calls = _stub_eval(monkeypatch, model_dir, numbers)
    runs = [tmp_path / f"s{i}" for i in range(3)]
    for run in runs:
        shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("interpolate"))
    first = interpolate_seeds(runs, [0, 0.5], tmp_path / "val.json", 0.01, validation_only=True)
    assert calls == [(0, "val"), (1, "val"), (2, "val")] and not any(
        (r / "interpolate" / "test").exists() for r in runs
    )
    assert first["split"] == "val" and first["conditional_on"] == "val prompts"
    half = next(r for r in first["curve"] if r["alpha"] == 0.5)
    assert half["pass@1"]["mean"] == pytest.approx((0.31 + 0.28 + 0.33) / 3)
    assert half["pass@1_vs_to"]["difference"] == pytest.approx(((0.31 - 0.30) + (0.28 - 0.29) + (0.33 - 0.32)) / 3)
    top = f"pass@{max(first['ks'])}"
    assert half[f"{top}_vs_from"]["difference"] == pytest.approx(-0.05)  # 0.6 − 0.05 against 0.6, each seed
    calls.clear()
    full = interpolate_seeds(runs, [0, 0.5], tmp_path / "test.json", 0.01)
    assert calls == [(0, "val"), (0, "test"), (1, "val"), (1, "test"), (2, "val"), (2, "test")]  # run again
    assert full["split"] == "test" and full["conditional_on"] == "test prompts"
    test_p1 = [0.1 + 0.01 * s + 0.02 * 0.5 for s in range(3)]
    assert next(r for r in full["curve"] if r["alpha"] == 0.5)["pass@1"]["mean"] == pytest.approx(np.mean(test_p1))
    calls.clear()
    again = interpolate_seeds(runs, [0, 0.5], tmp_path / "val2.json", 0.01, validation_only=True)
    assert calls == [] and again["split"] == "val" and again["curve"] == first["curve"]  # full files read back
