"""Adapter interpolation (WiSE-FT, arXiv 2504.10478): peft's ``cat`` combination against a float64 merge of
the LoRA deltas, and the interpolated adapter's logits against the base with the merged weights added."""

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
)


@pytest.fixture(scope="module")
def adapters(model_dir, run_config, tmp_path_factory):
    """Two different random adapters of the embedded model: 'from' of rank 8, 'to' of rank 4."""
    tmp = tmp_path_factory.mktemp("interp")
    lora = run_config.learner.lora
    for seed, (name, cfg) in enumerate((("from", lora), ("to", lora.model_copy(update={"r": 4, "alpha": 4.0})))):
        model, _ = random_lora_policy(model_dir, cfg, seed, std=0.05)
        save_adapter(model, tmp / name)
    return tmp


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


def test_alphas_are_checked():
    assert check_alphas([0, "0.5", 1]) == [0.0, 0.5, 1.0]
    for bad, match in (([], "at least one"), ([1.5], "not in"), ([0.5, 0.5], "repeated"), ([float("nan")], "not in")):
        with pytest.raises(ValueError, match=match):
            check_alphas(bad)


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
