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

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for d in ("configs", "configs/gpu", "configs/sweeps", "configs/experiments") for p in (ROOT / d).glob("*.yaml"))
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
    result = CliRunner().invoke(app, ["check", "-q", str(ROOT / "configs/replies.yaml"), "--set", "phases.grpo.lr=1e-4",
                                      "--set", f"task.path={ROOT}/tests/fixtures/userdata/chat.jsonl"])
    assert result.exit_code == 0, result.output
    assert "12 rows, 12 distinct prompts, 12 with a reference, 12 with a system prompt" in result.output
    assert "lr 0.0001" in result.output and "# resolved config" not in result.output


def test_check_reports_a_bad_config_as_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases:\n  - {type: grpo, steps: 0}\n")
    result = CliRunner().invoke(app, ["check", str(bad)])
    assert result.exit_code == 2 and f"error: {bad}: phases.0.steps: Input should be greater than or equal to 1" in result.output


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
    with pytest.raises(ConfigError, match=r"phases.nope is neither an index nor the name of one item \(names: sft, grpo\)"):
        load_config(ROOT / "configs/quickstart.yaml", ["phases.nope.lr=1"])


def test_check_shows_a_phase_with_its_own_learner_ranks():
    result = CliRunner().invoke(app, ["check", "-q", str(ROOT / "configs/quickstart.yaml"), "--set", "phases.grpo.learner_workers=1"])
    assert result.exit_code == 0, result.output
    assert "= 128 sequences, lr 0.003, 1 learner rank\n" in result.output
    assert "learner ranks: 2 x (1 CPU) = 2 CPU, 0 GPU at most (per phase: 2, 1)" in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("polyray ")


def test_serve_help_names_both_services():
    result = CliRunner().invoke(app, ["--help"])
    assert "reward service" in result.output and "generation service" in result.output


def test_a_config_that_cannot_fit_its_gpu_is_one_error_line():
    result = CliRunner().invoke(app, ["check", "-q", str(ROOT / "configs/quickstart.yaml"), "--set", "learner.use_gpu=true",
                                      "--set", "learner.gpu_memory_gib=0.5"])  # fmt: skip
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: model.dtype: a learner rank needs") and "learner.gpu_memory_gib 0.5" in last
    assert "Traceback" not in result.output
