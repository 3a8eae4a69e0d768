"""``polyray bench all --smoke``: what it leaves out (fits and engines that repeat a harness function with
another setting), and the printing and summary of results without them.

- The smoke's arguments are options of their part (parsed before anything starts); every part ``all`` takes has
  them, and a part it does not take is refused in one line.
- GRPO without the synchronous mode: only the ratios of the modes that ran, no floor.
- Results without vLLM's own LoRA ops, the synchronous GRPO mode, the polychromic canary variant, or the larger
  model's learner step: printed and summarised, the missing rows skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from polyray.drivers.bench.grpo import grpo_ratios, print_grpo
from polyray.drivers.bench.polychromic import print_polychromic
from polyray.drivers.bench.rollout_part import print_rollout, rollout_ratios
from polyray.drivers.bench.suite import SMOKE, print_summary, summary_rows

MODE = {"step_s": 0.2, "rollout_s": 0.1, "reward_s": 0.0, "sync_s": 0.01, "steps": 2}


def _rollout(**engines):
    """Rollout results as ``bench_rollout`` returns them, with the engines' tokens/s."""
    results = {
        "prompts": 4,
        "n": 8,
        "max_tokens": 16,
        **{k: {"tokens": 100, "seconds": 100 / tps, "tokens_per_s": tps} for k, tps in engines.items()},
        "detokenizer": {"ids_then_decode": {"tokens_per_s": 60.0}, "vllm_detokenizer": {"tokens_per_s": 50.0}},
        "adapter_sync": {"syncs": 2, "median_ms": 20.0, "load_median_ms": 8.0, "first_use_median_ms": 12.0},
        "full_reload": {"syncs": 2, "median_ms": 400.0, "load_median_ms": 300.0, "first_use_median_ms": 100.0},
        "sync_floor": {
            "bytes": 2**20,
            "memcpy_ms": 0.5,
            "memcpy_bytes_per_s": 2**31,
            "write_ms": 1.5,
            "write_bytes_per_s": 2**30,
            "floor_ms": 2.0,
        },
    }
    return {**results, "ratios": rollout_ratios(results)}


@pytest.mark.parametrize("part", ["rollout", "grpo", "polychromic", "peer"])
@pytest.mark.timeout(120)
def test_the_smoke_arguments_are_options_of_their_part(part, tmp_path):
    if part == "peer":
        pytest.importorskip("trl", reason="TRL is not installed (the bench extra)")
    from typer.testing import CliRunner

    from polyray.cli import app

    missing = tmp_path / "missing.yaml"  # past the parsing, the part's first step refuses it: nothing starts
    result = CliRunner().invoke(app, ["bench", part, *SMOKE[part], "--config", str(missing)])
    assert result.output.strip().splitlines() == [f"error: {missing}: config file not found"], result.output


def test_every_part_bench_all_takes_has_its_smoke_arguments_and_another_is_refused():
    from typer.testing import CliRunner

    from polyray.cli import app
    from polyray.drivers.bench import PARTS

    assert set(SMOKE) == set(PARTS)  # `bench all --smoke --parts <any of them>` finds its arguments
    result = CliRunner().invoke(app, ["bench", "all", "--parts", "rollout", "--parts", "nope"])
    assert result.output.strip().splitlines() == [
        f"error: --parts: unknown part 'nope' (choose from {', '.join(PARTS)})"
    ], result.output


def test_grpo_without_the_synchronous_mode_has_no_floor():
    modes = {"async": MODE, "async_rollout_reference": {**MODE, "step_s": 0.22}}
    assert grpo_ratios(modes) == {"rollout_reference_vs_learner": pytest.approx(1.1)}
    assert grpo_ratios({"async_rollout_reference": MODE}) == {}  # what --smoke runs: one mode, no ratio


def test_results_without_what_the_smoke_leaves_out_print_and_summarise(capsys):
    rollout = _rollout(raw_llm=100.0, transformers=25.0, pool_1=96.0, pool_2=150.0)  # no vLLM's own LoRA ops
    assert "cpu_lora_plugin_vs_vllm_ops" not in rollout["ratios"] and rollout["ratios"]["vllm_vs_transformers"] == 4.0
    every = _rollout(raw_llm=100.0, raw_llm_vllm_lora_ops=80.0, transformers=25.0, pool_1=96.0, pool_2=150.0)
    assert every["ratios"]["cpu_lora_plugin_vs_vllm_ops"] == pytest.approx(1.25)

    modes = {"async": MODE, "async_rollout_reference": {**MODE, "step_s": 0.22}}
    grpo = {"steps": 4, "rounds": 1, "modes": list(modes), **modes, **grpo_ratios(modes)}
    polychromic = {
        "sft": {"step_s": 1.0},
        "sft[56 sequences: references + samples]": {"step_s": 2.0},
        "polychromic_sft[countdown_expr]": {"step_s": 3.0, "rollout_s": 0.5},
    }
    # no "learner": --large-learner-sequences 0
    large = {
        "shape": {"layers": 1, "hidden": 64, "vocab": 512},
        "prompts": 2,
        "n": 2,
        "tokens": 16,
        "threads": 1,
        "vllm": {"tokens_per_s": 300.0},
        "transformers": {"tokens_per_s": 100.0},
        "vllm_vs_transformers": 3.0,
    }
    ratios = {"grpo_step_polyray_vs_trl": 0.4, "sft_step_polyray_vs_trl": 0.9, "end_to_end_polyray_vs_trl": 2.0}
    peer = {"ratios": ratios, "large": large}
    results = {"rollout": rollout, "grpo": grpo, "polychromic": polychromic, "peer": peer}

    rows = {name: (value, goal) for name, value, goal in summary_rows(results)}
    assert "polyray's CPU LoRA ops / vLLM's, tokens/s" not in rows
    assert rows["vLLM / transformers generate tokens/s"] == (4.0, ">= 2")
    reference = "GRPO step, one ahead: KL reference on the rollout worker / on the learner"
    assert rows[reference] == (pytest.approx(1.1), "-")
    assert not any(name.startswith("GRPO step, one ahead /") for name in rows)  # no sync: neither its ratio nor floor
    assert rows["polychromic_sft[countdown_expr] step / SFT step on references + samples"] == (1.5, "<= 1.2")
    assert rows["vLLM / transformers generate tokens/s, larger model, 16 tokens"] == (3.0, ">= 2")
    assert "polyray's CPU LoRA ops / vLLM's, tokens/s" in {name for name, _, _ in summary_rows({"rollout": every})}

    print_rollout(rollout)
    out = capsys.readouterr().out
    assert "RolloutPool, 2 workers" in out and "vLLM's own CPU LoRA ops" not in out
    print_grpo(grpo)
    out = capsys.readouterr().out
    assert "/ by the learner: 1.10" in out and "/ synchronous" not in out and "its floor" not in out
    print_polychromic(polychromic)
    print_summary(results)
    out = capsys.readouterr().out
    assert "polychromic_sft[countdown_expr] / its floor" in out and "canary every step" not in out
    # what --smoke runs: one GRPO mode, polychromic SFT without its floor
    smoke = {
        "grpo": {"steps": 4, "rounds": 1, "modes": ["async_rollout_reference"], "async_rollout_reference": MODE},
        "polychromic": {k: v for k, v in polychromic.items() if not k.startswith("sft[")},
    }
    rows = {name: value for name, value, _ in summary_rows(smoke)}
    assert rows == {"polychromic_sft[countdown_expr] step / SFT step": 3.0}
    print_grpo(smoke["grpo"])
    print_polychromic(smoke["polychromic"])
    out = capsys.readouterr().out
    assert "KL reference scored by the rollout worker" in out and "its floor" not in out

    from polyray.drivers.bench.peer_large import print_large

    console = Console(record=True, width=140)
    print_large(large, console)
    text = console.export_text()
    assert "ratio 3.00" in text and "learner" not in text


def test_the_experiment_bench_writes_experiments_polyray_accepts(tmp_path):
    """The experiment bench's configs, one trial at a time and two at once, load as ``polyray experiment`` reads
    them."""
    from polyray.drivers.bench.experiment import experiment_file
    from polyray.drivers.experiment import load_experiment

    base = str(Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml")
    serial, concurrent = (experiment_file(tmp_path, base, 3, 4, 16, c) for c in (1, 2))
    assert serial != concurrent
    for path, want in ((serial, 1), (concurrent, 2)):
        exp, configs = load_experiment(path, seeds=2)
        assert exp.max_concurrent == want and sorted(configs) == [("sft_grpo", 0), ("sft_grpo", 1)]
        run = configs["sft_grpo", 0]
        assert [p.steps for p in run.phases] == [3, 4] and run.task.n_test == 16


def test_a_config_without_kept_ranks_fits_each_phase_on_ray_train():
    """``learner.keep_ranks: false``: the benchmark parts pass no group, so each fit is a Ray Train fit of its
    own (starting no rank here, and needing no Ray)."""
    from polyray.config import load_config
    from polyray.drivers.bench.common import kept_ranks

    run = load_config(Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml", ["learner.keep_ranks=false"])
    with kept_ranks(run) as group:
        assert group is None
