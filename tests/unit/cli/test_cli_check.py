"""``polyray check``, ``--version``, ``--set`` by phase name and error paths as typed: all without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polyray.cli import app
from polyray.config import load_config
from polyray.io import ConfigError

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted(
    p for d in ("configs", "configs/gpu", "configs/sweeps", "configs/experiments") for p in (ROOT / d).glob("*.yaml")
)
USER_DATA = {"data/replies.jsonl", "data/problems.jsonl"}  # the GPU configs' data is the user's to supply


def test_check_every_shipped_config_without_starting_ray():
    """One process checks every config; Ray, vLLM and torch are never imported (nothing can have started)."""
    script = f"""
import sys
from typer.testing import CliRunner
from polyray.cli import app
for path in {[str(p) for p in CONFIGS]!r}:
    result = CliRunner().invoke(app, ["check", path])
    out = result.output
    user_data = any(d in out and "no such file" in out for d in {sorted(USER_DATA)!r})
    assert result.exit_code == 0 or (result.exit_code == 2 and user_data), (path, out)
    assert "# plan" in out and "actors:" in out and "learner ranks:" in out and "model:" in out, (path, out)
    if result.exit_code == 0:
        assert "# resolved config" in out, (path, out)
heavy = sorted(m for m in ("ray", "vllm", "torch") if m in sys.modules)
assert not heavy, heavy
print("ok", len({[str(p) for p in CONFIGS]!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr


def test_check_reads_the_data_and_takes_set_by_phase_name():
    result = CliRunner().invoke(
        app,
        [
            "check",
            "-q",
            str(ROOT / "configs/replies.yaml"),
            "--set",
            "phases.grpo.lr=1e-4",
            "--set",
            f"task.path={ROOT}/tests/fixtures/userdata/chat.jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "12 rows, 12 distinct prompts, 12 with a reference, 12 with a system prompt" in result.output
    assert "lr 0.0001" in result.output and "# resolved config" not in result.output


def test_check_reports_a_bad_config_as_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases:\n  - {type: grpo, steps: 0}\n")
    result = CliRunner().invoke(app, ["check", str(bad)])
    assert (
        result.exit_code == 2
        and f"error: {bad}: phases.0.steps: Input should be greater than or equal to 1" in result.output
    )


def test_memory_plan_hook_is_silent_without_the_module():
    from polyray.cli.check import memory_plan_lines

    import importlib.util

    if importlib.util.find_spec("polyray.learner.memory") is None:
        assert memory_plan_lines(load_config(None)) == []


def test_error_paths_drop_the_union_tag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: {type: replies, path: x.jsonl, format: chat}\nphases:\n  - {type: sft, steps: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "task.format: Input should be" in message and "phases.0.steps:" in message
    assert ".replies." not in message and ".sft." not in message


def test_set_by_phase_name_and_its_errors(tmp_path):
    run = load_config(ROOT / "configs/quickstart.yaml", ["phases.grpo.lr=1e-4", "phases.0.steps=7"])
    assert run.phases[1].lr == 1e-4 and run.phases[0].steps == 7
    with pytest.raises(
        ConfigError, match=r"phases.nope is neither an index nor the name of one item \(names: sft, grpo\)"
    ):
        load_config(ROOT / "configs/quickstart.yaml", ["phases.nope.lr=1"])


def test_check_shows_a_phase_with_its_own_learner_ranks():
    result = CliRunner().invoke(
        app, ["check", "-q", str(ROOT / "configs/quickstart.yaml"), "--set", "phases.grpo.learner_workers=1"]
    )
    assert result.exit_code == 0, result.output
    assert "= 128 sequences, lr 0.003, 1 learner rank\n" in result.output
    assert "learner ranks: 2 x (1 CPU) = 2 CPU, 0 GPU at most (per phase: 2, 1)" in result.output


def test_check_shows_a_runs_environment_and_a_missing_custom_one():
    multiturn = str(ROOT / "configs/multiturn.yaml")
    result = CliRunner().invoke(app, ["check", "-q", multiturn])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "environment: countdown_retry, up to 3 turns of 16 tokens, 160 tokens of history, 120 s an episode" in shown
    assert "8 episodes per prompt" in shown
    custom = ["--set", "env.type=custom", "--set", "env.environment=/nowhere/env.py:Env"]
    result = CliRunner().invoke(app, ["check", "-q", multiturn, *custom])
    assert result.exit_code == 2 and "env.environment: no file /nowhere/env.py" in result.output, result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("polyray ")


def test_serve_help_names_both_services():
    result = CliRunner().invoke(app, ["--help"])
    assert "reward service" in result.output and "generation service" in result.output


def test_a_config_that_cannot_fit_its_gpu_is_one_error_line():
    result = CliRunner().invoke(
        app,
        [
            "check",
            "-q",
            str(ROOT / "configs/quickstart.yaml"),
            "--set",
            "learner.use_gpu=true",
            "--set",
            "learner.gpu_memory_gib=0.5",
        ],
    )
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: model.dtype: a learner rank needs") and "learner.gpu_memory_gib 0.5" in last
    assert "Traceback" not in result.output


GPU_PRESETS = sorted((ROOT / "configs" / "gpu").glob("*.yaml"))


def _offline(monkeypatch, tmp_path):
    """No hub and an empty Hugging Face cache: the presets' models are not at hand."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_a_preset_too_big_for_its_gpus_is_refused_before_its_model_is_downloaded(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    result = CliRunner().invoke(
        app, ["check", "-q", str(ROOT / "configs/gpu/qwen3_0.6b.yaml"), "--set", "learner.gpu_memory_gib=24"]
    )
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: learner.micro_batch_tokens: a learner rank needs ~45.8 GiB"), last
    assert "> learner.gpu_memory_gib 24" in last and "Traceback" not in result.output


@pytest.mark.parametrize("path", GPU_PRESETS, ids=lambda p: p.name)
def test_every_gpu_preset_fits_a_cluster_of_80_gb_gpus(monkeypatch, tmp_path, path):
    _offline(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["check", "-q", str(path), "--gpu-memory-gib", "80"])
    plan = [line for line in result.output.splitlines() if line.startswith("memory plan")]
    assert len(plan) == 2 and not any("error" in line for line in plan), result.output  # learner, rollout worker
    assert "of 80 GiB" in plan[0] and " x 80 GiB" in plan[1], plan  # (the rollout: vLLM's share of it)
    with_gib = CliRunner().invoke(app, ["check", "-q", str(path), "--gpu-memory-gib", "4"])
    assert "memory plan: error:" in with_gib.output, with_gib.output  # and the option reaches the plan


def test_known_models_are_the_published_configs():
    """polyray's table of the presets' models against the test's own copy of their published config.json."""
    from support.model_shapes import QWEN3

    from polyray.learner.memory import ModelShape
    from polyray.models.shapes import KNOWN_CONFIGS

    for model, published in QWEN3.items():
        assert ModelShape.from_config(KNOWN_CONFIGS[model]) == ModelShape.from_config(published), model


def test_model_config_plans_a_model_not_at_hand(monkeypatch, tmp_path):
    """--model-config: a directory holding config.json, the file, or a known model id; anything else is one error."""
    import json

    from polyray.models.shapes import KNOWN_CONFIGS

    _offline(monkeypatch, tmp_path)
    preset = str(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    shallow = tmp_path / "shallow"
    shallow.mkdir()
    (shallow / "config.json").write_text(json.dumps({**KNOWN_CONFIGS["Qwen/Qwen3-0.6B"], "num_hidden_layers": 2}))
    for where in (shallow, shallow / "config.json"):  # two layers' activations fit 24 GiB where 28 do not
        result = CliRunner().invoke(
            app, ["check", "-q", preset, "--set", "learner.gpu_memory_gib=24", "--model-config", str(where)]
        )
        assert result.exit_code == 0 and "memory plan: learner rank ~" in result.output, result.output
    result = CliRunner().invoke(
        app, ["check", "-q", preset, "--gpu-memory-gib", "80", "--model-config", "Qwen/Qwen3-8B"]
    )
    assert "weights 15.26" in result.output, result.output  # the 8B's untied bfloat16 weights, not the 0.6B's
    result = CliRunner().invoke(app, ["check", "-q", preset, "--model-config", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: --model-config: "), (
        result.output
    )


def test_the_driver_refuses_a_known_model_too_big_for_its_gpus_before_downloading_it(monkeypatch, tmp_path):
    from polyray.drivers.preflight import plan_memory

    _offline(monkeypatch, tmp_path)
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml", ["learner.gpu_memory_gib=24"])
    with pytest.raises(ConfigError, match=r"^learner.micro_batch_tokens: a learner rank needs ~45.8 GiB"):
        plan_memory(run, None)
    assert plan_memory(load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml"), None)[0].startswith(
        "memory plan: learner rank"
    )


def test_check_reserves_what_the_run_checks_against_the_cluster():
    """The plan's totals are the pre-flight check's (reward replicas included)."""
    from polyray.cluster import needed_cpus

    result = CliRunner().invoke(app, ["check", "-q", str(ROOT / "configs/gpu/qwen3_0.6b.yaml")])
    assert "  reward replicas: 1 x 1 CPU" in result.output, result.output
    cpus = needed_cpus(load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml"))
    assert f"  reserved at most: {cpus:g} CPU, 6 GPU on auto" in result.output and cpus == 25, result.output


def test_the_cluster_launchers_job_fits_its_gpus(monkeypatch, tmp_path):
    """deploy/cluster-launcher.yaml's documented job, on its workers' GPUs (g5.12xlarge: A10G, 24 GB, of which
    CUDA reports ~22 GiB): the preset as is cannot fit (sized for 80 GB), the documented command can."""
    import re
    import shlex

    _offline(monkeypatch, tmp_path)
    text = (ROOT / "deploy/cluster-launcher.yaml").read_text()
    assert "InstanceType: g5.12xlarge  # 4 x A10G" in text
    job = shlex.split(re.search(r"^#\s+ray job submit .*?-- (python -m jobs\.train .*)$", text, re.M).group(1))
    config, overrides = job[3], [job[i + 1] for i, arg in enumerate(job) if arg == "--set"]
    for sets, fits in (([], False), (overrides, True)):
        args = ["check", "-q", str(ROOT / config), "--gpu-memory-gib", "22", *[a for s in sets for a in ("--set", s)]]
        result = CliRunner().invoke(app, args)
        assert (result.exit_code == 0) == fits, (sets, result.output)
