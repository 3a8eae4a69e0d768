"""``polyray bench peer`` and the floors beside the benchmark's ratios, at toy sizes.

- The settings both trainers use come from one polyray config (every field read from it, none drifts),
  and TRL's own config classes accept them; a setting TRL cannot express is one line naming the field.
- Step statistics: median and interquartile range over the steps after warm-up, against numpy's.
- The floors: GRPO one step ahead against max(rollout + reward, update + publish); the polychromic step against
  SFT on as many sequences; an adapter publish against one copy and one write of its bytes.
- transformers ``generate`` at a fixed length generates exactly that many tokens, even from a model
  that would end every completion at once; the digest of the sampled token ids tells samples apart that
  a count of their tokens does not.
- ``bench grpo --modes``: the ratios (and the summary's rows, the printed lines) of the modes that ran only.
- ``bench chaos``: a kill's errors counted apart when they fall outside its window (before it, after the
  service answered again).
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from polyray.config import load_config
from polyray.drivers.bench.grpo import grpo_floor
from polyray.drivers.bench.peer import compare_engines, paired, peer_settings, print_peer, step_stats
from polyray.drivers.bench.polychromic import polychromic_floor
from polyray.drivers.bench.suite import summary_rows
from polyray.io import ConfigError

QUICKSTART = "configs/quickstart.yaml"


def test_settings_come_from_the_config():
    run = load_config(QUICKSTART, ["seed=7", "learner.lora.r=4", "phases.1.lr=1e-3", "phases.1.sampling.max_tokens=20"])
    s = peer_settings(run)
    sft, grpo = run.phases[0], run.phases[1]
    assert s["seed"] == s["sft"]["seed"] == s["grpo"]["seed"] == s["grpo"]["data_seed"] == 7
    assert s["lora"] == {
        "r": 4,
        "lora_alpha": run.learner.lora.alpha,
        "lora_dropout": run.learner.lora.dropout,
        "target_modules": run.learner.lora.target_modules,
    }
    assert (s["sft"]["max_steps"], s["sft"]["per_device_train_batch_size"], s["sft"]["learning_rate"]) == (
        sft.steps,
        sft.batch_size,
        sft.lr,
    )
    g = s["grpo"]
    assert g["per_device_train_batch_size"] == grpo.prompts_per_step * grpo.group_size
    assert (g["num_generations"], g["learning_rate"], g["max_completion_length"], g["beta"]) == (
        grpo.group_size,
        1e-3,
        20,
        grpo.kl_beta,
    )
    assert (g["temperature"], g["top_p"], g["epsilon"], g["epsilon_high"]) == (
        grpo.sampling.temperature,
        grpo.sampling.top_p,
        grpo.clip_eps_low,
        grpo.clip_eps_high,
    )
    # polyray's default GRPO: per-sequence token means, group std scaling, a constant LR
    assert (g["loss_type"], g["scale_rewards"], g["lr_scheduler_type"]) == ("grpo", "group", "constant_with_warmup")
    assert g["max_grad_norm"] == run.learner.grad_clip and g["weight_decay"] == run.learner.weight_decay
    # the same arithmetic: no autocast, activations kept unless the learner checkpoints (TRL defaults to both)
    for phase in (s["sft"], g):
        assert (phase["bf16"], phase["fp16"], phase["gradient_checkpointing"]) == (False, False, False)
    assert peer_settings(load_config(QUICKSTART, ["learner.gradient_checkpointing=true"]))["grpo"][
        "gradient_checkpointing"
    ]


def test_trl_accepts_the_settings(tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is not installed (the bench extra)")
    s = peer_settings(load_config(QUICKSTART))
    common = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": []}
    sft = trl.SFTConfig(**{k: v for k, v in s["sft"].items() if k != "name"}, **common)
    grpo = trl.GRPOConfig(**{k: v for k, v in s["grpo"].items() if k != "name"}, **common)
    assert sft.learning_rate == s["sft"]["learning_rate"] and grpo.num_generations == s["grpo"]["num_generations"]
    assert grpo.beta == s["grpo"]["beta"] and grpo.loss_type == "grpo"
    assert not (sft.bf16 or sft.gradient_checkpointing or grpo.bf16 or grpo.gradient_checkpointing)
    assert trl.GRPOConfig(**common).gradient_checkpointing and trl.SFTConfig(**common).bf16  # TRL's own defaults differ


@pytest.mark.parametrize(
    "override, field",
    [
        ("phases.1.advantage.type=rloo", "phases.1.advantage.type"),
        ("phases.1.dynamic_sampling=true", "phases.1.dynamic_sampling"),
        ("phases.1.kl_reference=base", "phases.1.kl_reference"),
        ("phases.1.sampling.stop=[';']", "phases.1.sampling.stop"),
    ],
)
def test_a_setting_trl_cannot_express_is_refused(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        peer_settings(load_config(QUICKSTART, [override]))


def test_a_decay_floor_is_refused():
    run = load_config(QUICKSTART, ["phases.0.lr_schedule=cosine", "phases.0.min_lr_ratio=0.1"])
    with pytest.raises(ConfigError, match=r"phases\.0\.min_lr_ratio"):
        peer_settings(run)


def test_step_stats_drop_the_warm_up_and_match_numpy():
    seconds = [5.0, 4.0, 1.0, 2.0, 3.0, 10.0]
    tokens = [50, 40, 10, 20, 30, 100]
    s = step_stats(seconds, tokens, warmup=2)
    kept = np.array(seconds[2:])
    q1, q3 = np.quantile(kept, [0.25, 0.75])
    assert s["steps"] == 4 and s["step_s"] == statistics.median(seconds[2:]) == 2.5
    assert s["iqr_s"] == pytest.approx(q3 - q1) and s["q1_s"] == pytest.approx(q1)
    assert s["tokens_per_s"] == pytest.approx(160 / 16)
    assert step_stats([1.0, 2.0], [1, 1], warmup=5)["steps"] == 1  # never fewer than the last step


def test_bench_step_medians_count_a_step_without_a_canary_as_zero(tmp_path):
    """A phase whose one canary ran at its end (SFT's publish) has a per-step canary median of 0,
    not that one canary's time; a phase checking every step has its own median."""
    import json

    from polyray.drivers.bench.common import _step_stats

    rows = [
        {"phase": "sft", "step_s": s, **({"canary_s": 3.8} if i == 4 else {})} for i, s in enumerate([9, 1, 2, 3, 4])
    ]
    rows += [{"phase": "poly", "step_s": 1.0, "canary_s": c, "rollout_s": 0.5} for c in (5.0, 0.1, 0.3, 0.2)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = _step_stats(path, "sft", warmup=1)
    assert sft == {"steps": 4, "step_s": 2.5, "canary_s": 0.0}
    poly = _step_stats(path, "poly", warmup=1)
    assert poly["canary_s"] == pytest.approx(0.2) and poly["rollout_s"] == 0.5 and "sync_s" not in poly


def test_paired_comparison_is_polyray_minus_trl_per_seed():
    per_seed = {
        s: {"polyray": {"steps": {"grpo": {"step_s": a}}}, "trl": {"steps": {"grpo": {"step_s": b}}}}
        for s, (a, b) in enumerate([(1.0, 0.5), (1.2, 0.5), (0.9, 0.6)])
    }
    c = paired(per_seed, ("steps", "grpo", "step_s"))
    assert c["polyray"] == [1.0, 1.2, 0.9] and c["trl"] == [0.5, 0.5, 0.6]
    d = np.array([0.5, 0.7, 0.3])
    assert (c["paired_t"]["low"] + c["paired_t"]["high"]) / 2 == pytest.approx(d.mean())


def _engine(step: float, pass1: float) -> dict:
    steps = {p: {"step_s": step, "tokens_per_s": 10 / step} for p in ("sft", "grpo")}
    return {
        "steps": steps,
        "end_to_end_s": 60 * step,
        "eval": {p: {"pass@1": pass1, "pass@10": 2 * pass1} for p in ("sft", "grpo")},
    }


def test_compare_engines_tests_pass_at_k_non_inferiority_at_the_margin():
    from statsmodels.stats.weightstats import DescrStatsW

    poly = [0.19, 0.17, 0.21, 0.18, 0.20]
    trl = [0.18, 0.18, 0.20, 0.19, 0.19]
    per_seed = {s: {"polyray": _engine(0.2, a), "trl": _engine(0.25, b)} for s, (a, b) in enumerate(zip(poly, trl))}
    compared, ratios = compare_engines(per_seed, margin=0.02)
    assert set(compared) >= {"grpo_step_s", "grpo_pass@1", "grpo_pass@10", "sft_pass@1"}
    ni = compared["grpo_pass@1"]["noninferiority"]
    d = np.array(poly) - np.array(trl)
    assert ni["pvalue"] == pytest.approx(DescrStatsW(d).ttest_mean(-0.02, alternative="larger")[1])
    assert ni["noninferior"] is (ni["pvalue"] < 0.05) and "noninferiority" not in compared["grpo_step_s"]
    assert ratios["grpo_step_polyray_vs_trl"] == pytest.approx(0.8) and ratios[
        "end_to_end_polyray_vs_trl"
    ] == pytest.approx(0.8)
    # a margin far inside the spread: not shown
    assert compare_engines(per_seed, margin=0.001)[0]["grpo_pass@1"]["noninferiority"]["noninferior"] is False


def test_print_peer_shows_the_non_inferiority_test():
    from rich.console import Console

    per_seed = {
        s: {"polyray": _engine(0.2, 0.19 + 0.01 * s), "trl": _engine(0.25, 0.185 + 0.005 * s)} for s in range(3)
    }
    compared, ratios = compare_engines(per_seed, margin=0.02)
    settings = {
        "sft": {"max_steps": 4, "per_device_train_batch_size": 8},
        "grpo": {
            "max_steps": 4,
            "per_device_train_batch_size": 16,
            "num_generations": 8,
            "max_completion_length": 24,
            "temperature": 1.0,
        },
        "lora": {"r": 8},
        "dtype": "float32",
    }
    results = {
        "settings": settings,
        "trl_version": "1.x",
        "seeds": [0, 1, 2],
        "compared": compared,
        "ratios": ratios,
        "per_seed": {str(s): {e: {"steps": {"grpo": {"iqr_s": 0.01}}} for e in ("polyray", "trl")} for s in range(3)},
        "polyray_startup_s": {"ray_start": 5.0},
    }
    trace = {"components": {"ray": {"asked": 0.2, "ready": 7.5}, "rollout worker 0": {"asked": 7.6, "ready": 30.25}}}
    results["per_seed"]["0"]["polyray"]["startup_trace"] = trace
    console = Console(record=True, width=250)
    print_peer(results, console)
    text = console.export_text()
    # seed 0's start-up trace: the engine asked for at 7.6 s, ready 22.6 s later
    assert "polyray's start-up, seed 0" in text and "rollout worker 0" in text and "22.6" in text
    ni = compared["grpo_pass@1"]["noninferiority"]
    assert f"m 0.02: p {ni['pvalue']:.3f}, > {ni['low']:+.3f}" in text
    flat = " ".join(text.split())  # (the title wraps)
    assert "LoRA r 8, both in float32" in flat and "checkpointing" not in flat  # the arithmetic both ran


def test_grpo_floor_is_the_longer_of_rollout_and_the_rest():
    assert grpo_floor({"step_s": 1.0, "rollout_s": 0.3})["floor_s"] == pytest.approx(0.7)
    f = grpo_floor({"step_s": 1.0, "rollout_s": 0.8})
    assert f["floor_s"] == 0.8 and f["update_publish_s"] == pytest.approx(0.2)
    # ahead, the samples' scoring runs beside the update too: it sits on the rollout's side
    f = grpo_floor({"step_s": 1.0, "rollout_s": 0.4, "reward_s": 0.2})
    assert f["rollout_s"] == pytest.approx(0.6) and f["floor_s"] == pytest.approx(0.6)


def test_polychromic_floor_prefers_the_one_ahead_variant():
    results = {
        "sft": {"step_s": 1.0},
        "sft[56 sequences: references + samples]": {"step_s": 2.0},
        "polychromic_sft[countdown_expr]": {"step_s": 4.0},
        "polychromic_sft[countdown_expr, async]": {"step_s": 3.0},
    }
    assert polychromic_floor(results) == ("polychromic_sft[countdown_expr, async]", 1.5)
    assert polychromic_floor({"sft": {"step_s": 1.0}, "polychromic_sft[x]": {"step_s": 2.0}}) is None


def test_summary_rows_hold_the_floors_and_the_peer_ratios():
    results = {
        "grpo": {"ratio": 0.6, "async_vs_floor": 1.3, "rollout_reference_vs_learner": 1.1, "packed_vs_unpacked": 0.8},
        "polychromic": {
            "sft": {"step_s": 1.0},
            "sft[8 sequences: references + samples]": {"step_s": 2.0},
            "polychromic_sft[x]": {"step_s": 3.0},
        },
        "peer": {
            "ratios": {
                "grpo_step_polyray_vs_trl": 1.5,
                "sft_step_polyray_vs_trl": 0.9,
                "end_to_end_polyray_vs_trl": 5.0,
            },
            "large": {"tokens": 128, "vllm_vs_transformers": 2.5},
        },
    }
    rows = {name: (value, goal) for name, value, goal in summary_rows(results)}
    assert rows["GRPO step, one ahead / max(rollout + reward, update + publish)"] == (1.3, "<= 1.1")
    assert rows["GRPO step, one ahead: KL reference on the rollout worker / on the learner"] == (1.1, "-")
    assert rows["GRPO step, one ahead: samples packed / one a row"] == (0.8, "-")
    assert rows["polychromic_sft[x] step / SFT step on references + samples"] == (1.5, "<= 1.2")
    assert rows["polychromic_sft[x] step / SFT step"] == (3.0, "-")
    assert not any(name.startswith("sft[") for name in rows)
    assert rows["GRPO step, polyray / TRL"] == (1.5, "<= 0.5") and rows["SFT step, polyray / TRL"] == (0.9, "<= 1.0")
    assert rows["vLLM / transformers generate tokens/s, larger model, 128 tokens"] == (2.5, ">= 2")


def test_print_grpo_shows_the_rollout_reference_and_unpacked_modes(capsys):
    from polyray.drivers.bench.grpo import print_grpo

    mode = {"step_s": 0.2, "rollout_s": 0.0, "reward_s": 0.0, "sync_s": 0.01}
    results = {
        "steps": 12,
        "rounds": 3,
        "sync": {**mode, "step_s": 0.3, "rollout_s": 0.1},
        "async": mode,
        "async_rollout_reference": {**mode, "step_s": 0.22, "rollout_s": 0.05},
        "ratio": 0.67,
        "async_unpacked": {**mode, "step_s": 0.25},
        "packed_vs_unpacked": 0.8,
        "rollout_reference_vs_learner": 1.1,
        "floor": {"rollout_s": 0.1, "update_publish_s": 0.19, "floor_s": 0.19},
        "async_vs_floor": 1.05,
    }
    print_grpo(results)
    out = capsys.readouterr().out
    assert "KL reference scored by the rollout worker" in out and "/ by the learner: 1.10" in out
    assert "one sample a row in the update" in out and "/ one sample a row: 0.80" in out


def test_sync_floor_times_one_copy_and_one_write_of_the_adapters_bytes(tmp_path):
    import torch

    from polyray.drivers.bench.rollout import sync_floor

    adapter = {"config": {"r": 2}, "tensors": {"a": torch.ones(64, 32), "b": torch.zeros(16, dtype=torch.float64)}}
    f = sync_floor(adapter, tmp_path, repeats=2)
    assert f["bytes"] == 64 * 32 * 4 + 16 * 8
    assert f["memcpy_ms"] > 0 and f["write_ms"] > 0  # both timed (the floor is their sum, by its definition)
    assert not list(tmp_path.iterdir())  # its writes are cleaned up


def test_fixed_length_generate_makes_every_completion_full_length(tmp_path):
    """A model that puts nearly all mass on its end token still generates ``tokens`` per completion."""
    from safetensors.torch import load_file, save_file

    from polyray.drivers.bench.common import _random_adapter
    from polyray.drivers.bench.learner import EOS, BenchShape, build_bench_model
    from polyray.drivers.bench.rollout import FixedLengthBatch, fixed_length_hf
    from polyray.config import LoraConfig
    from polyray.rollout.store import write_adapter_dir

    model_dir = build_bench_model(tmp_path / "m", BenchShape(1, 64, 128, 2, 1, 32, 256))
    weights = load_file(str(model_dir / "model.safetensors"))
    weights["model.embed_tokens.weight"][EOS] *= 1000  # tied: the end token's logit dominates
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    write_adapter_dir(tmp_path / "a", _random_adapter(model_dir, LoraConfig(r=2), seed=1))
    batch = FixedLengthBatch([[5, 6, 7], [8, 9]], n=2, tokens=6, seeds=[0, 1])
    r = fixed_length_hf(str(model_dir), "float32", batch, str(tmp_path / "a"), threads=1, repeats=1)
    assert r["tokens"] == batch.total_tokens == 24


@pytest.mark.parametrize(
    "args, message",
    [
        (["--large-shape", "1,64,128"], "--large-shape: '1,64,128' is not 7 positive integers"),
        (["--set", "phases.1.dynamic_sampling=true"], "phases.1.dynamic_sampling: TRL's GRPOTrainer keeps every group"),
        (["--margin", "0"], "--margin: must be > 0, got 0.0"),
    ],
)
@pytest.mark.timeout(120)  # a check that lets bad input through would start the whole benchmark
def test_bad_peer_arguments_are_one_line_before_anything_starts(args, message):
    pytest.importorskip("trl", reason="TRL is not installed (the bench extra)")
    from typer.testing import CliRunner

    from polyray.cli import app

    result = CliRunner().invoke(app, ["bench", "peer", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("part", ["rollout", "grpo", "polychromic", "generation"])
@pytest.mark.timeout(120)
def test_a_missing_config_is_one_line_for_every_part(part, tmp_path):
    from typer.testing import CliRunner

    from polyray.cli import app

    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(app, ["bench", part, "--config", str(missing)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {missing}: config file not found"], result.output


def test_grpo_ratios_are_those_whose_modes_ran():
    from polyray.drivers.bench.grpo import GRPO_MODES, grpo_ratios

    step = dict(zip(GRPO_MODES, (1.0, 0.6, 0.8, 0.75, 0.66, 0.5, 0.55), strict=True))
    modes = {name: {"step_s": s, "rollout_s": 0.3} for name, s in step.items()}
    every = grpo_ratios(modes)
    assert every["ratio"] == pytest.approx(0.6) and every["publish_behind_vs_waits"] == pytest.approx(0.75)
    assert every["packed_vs_unpacked"] == pytest.approx(0.8)
    assert every["rollout_reference_vs_learner"] == pytest.approx(1.1)
    assert every["measured_vs_unmeasured"] == pytest.approx(1.2)
    assert every["learner_tis_vs_unmeasured"] == pytest.approx(1.1)
    assert every["floor"]["floor_s"] == pytest.approx(0.7) and every["async_vs_floor"] == pytest.approx(0.6 / 0.7)
    two = grpo_ratios({m: modes[m] for m in ("sync", "async")})  # the two modes of the table's goals
    assert set(two) == {"ratio", "floor", "async_vs_floor"} and two["ratio"] == every["ratio"]
    assert set(grpo_ratios({"sync": modes["sync"]})) == {"floor"}
    unpacked = grpo_ratios({"async": modes["async"], "async_unpacked": modes["async_unpacked"]})
    assert unpacked == {"packed_vs_unpacked": pytest.approx(0.8)}
    assert grpo_ratios({"async_waits": modes["async_waits"]}) == {}


def test_the_summary_and_print_grpo_show_only_the_ratios_of_the_modes_that_ran(capsys):
    from polyray.drivers.bench.grpo import grpo_ratios, print_grpo
    from polyray.drivers.bench.suite import print_summary

    mode = {"step_s": 0.2, "rollout_s": 0.1, "reward_s": 0.0, "sync_s": 0.01, "steps": 2}
    modes = {"sync": {**mode, "step_s": 0.3}, "async": mode}
    two = {"steps": 4, "rounds": 1, "modes": ["sync", "async"], **modes, **grpo_ratios(modes)}
    rows = {name for name, _, _ in summary_rows({"grpo": two})}
    assert rows == {
        "GRPO step, one ahead / synchronous",
        "GRPO step, one ahead / max(rollout + reward, update + publish)",
    }
    print_grpo(two)
    print_summary({"grpo": two})
    out = capsys.readouterr().out
    assert "one step ahead / synchronous: 0.67" in out and "one step ahead / its floor" in out
    assert "publish behind" not in out and "KL reference" not in out and "one sample a row" not in out

    lone = {"steps": 4, "rounds": 1, "modes": ["async_waits"], "async_waits": mode}  # no ratio at all: no row, no crash
    assert summary_rows({"grpo": lone}) == []
    print_grpo(lone)
    print_summary({"grpo": lone})
    out = capsys.readouterr().out
    assert "each publish waits for its loads" in out and "/ synchronous" not in out and "its floor" not in out


@pytest.mark.timeout(120)
def test_an_unknown_grpo_mode_is_one_line_before_anything_starts():
    from typer.testing import CliRunner

    from polyray.cli import app

    result = CliRunner().invoke(app, ["bench", "grpo", "--modes", "sync", "--modes", "ahead"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--modes: unknown mode 'ahead' (choose from sync, async," in lines[0], result.output


def test_a_kill_counts_the_errors_outside_its_window():
    from polyray.drivers.bench.chaos import summarize

    # (start, end, status): the kill at t=10, the first answer to a request sent after it at t=14
    outcomes = [
        (0.0, 1.0, 200),
        (1.0, 2.0, 500),
        (9.0, 10.5, 500),
        (10.5, 11.0, -1),
        (11.0, 12.0, 503),
        (12.0, 14.0, 200),
        (13.0, 15.0, 500),
        (15.0, 16.0, 200),
        (16.0, 17.0, 500),
        (17.0, 18.0, 429),
    ]
    r = summarize(outcomes, 18.0, t_kill=10.0)
    assert r["recovery_s"] == 4.0 and r["errors"] == 5 and r["back_pressure"] == 2
    # before the kill: the request that ended at 2; after the answer at 14: the one sent at 16 (the one sent
    # at 13 was on its way while the service was still down); back-pressure is no error, before or after
    assert r["errors_before_kill"] == 1 and r["errors_after_recovery"] == 1
    assert "errors_before_kill" not in summarize(outcomes, 18.0)  # no kill: no window
    never = summarize([(9.0, 10.5, 500), (11.0, 12.0, -1)], 12.0, t_kill=10.0)
    assert never["recovery_s"] is None and never["errors_before_kill"] == never["errors_after_recovery"] == 0


def test_the_token_ids_digest_tells_apart_samples_of_the_same_length():
    import torch

    from polyray.drivers.bench.rollout import _hf_ids, token_ids_sha256

    samples = [[[1, 2, 3], [4, 5]], [[6]]]  # 2 prompts: 2 samples, 1 sample
    digest = token_ids_sha256([samples])
    assert token_ids_sha256([[[[1, 2, 3], [4, 5]], [[6]]]]) == digest  # the same ids: the same digest
    others = [
        [[[1, 2, 4], [4, 5]], [[6]]],  # one token other, as many tokens
        [[[1, 2], [3, 4, 5]], [[6]]],  # the same ids, cut into samples elsewhere
        [[[4, 5], [1, 2, 3]], [[6]]],  # the samples in another order
        [[[1, 2, 3]], [[4, 5], [6]]],  # grouped under other prompts
    ]
    for other in others:
        assert token_ids_sha256([other]) != digest, other
    assert token_ids_sha256([samples, samples]) != digest  # every repeat counts
    # transformers rows: n consecutive rows a prompt, each up to where it ended
    new = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0], [7, 8, 9]])
    ended = new == 0
    assert _hf_ids(new, ended, 2) == [[[1, 2, 3], [4, 5]], [[6], [7, 8, 9]]]


def test_grpo_modes_run_in_one_order_and_a_reference_mode_needs_a_kl_term():
    from polyray.drivers.bench.grpo import GRPO_MODES, grpo_variants

    assert tuple(grpo_variants(1, kl=True)) == GRPO_MODES
    assert "async_rollout_reference" not in grpo_variants(1, kl=False)  # all, as far as the phase allows
    smoke = grpo_variants(1, kl=True, modes=["async", "sync"])
    assert list(smoke) == ["sync", "async"] and smoke["sync"] == ["phases.1.async_rollouts=false", "phases.1.max_lag=0"]
    waits = ["phases.0.async_rollouts=true", "phases.0.max_lag=1", "learner.publish_behind_step=false"]
    assert grpo_variants(0, kl=True, modes=["async_waits"]) == {"async_waits": waits}
    with pytest.raises(ConfigError, match="phases.1.kl_beta is 0"):
        grpo_variants(1, kl=False, modes=["sync", "async_rollout_reference"])
    with pytest.raises(ConfigError, match="unknown mode 'ahead'"):
        grpo_variants(1, kl=True, modes=["ahead"])
