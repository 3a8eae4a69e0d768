"""`polyray interpolate` end to end on the embedded model: two α of a fake run's sft -> grpo adapters,
evaluated by vLLM on 2 validation then 2 test prompts; α chosen on validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.phase_harness import fake_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def test_interpolate_command_chooses_on_validation_and_reports_test(tmp_path, model_dir, run_config):
    run = fake_run(tmp_path / "run", model_dir, run_config)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [
        sys.executable,
        "-m",
        "polyray.cli",
        "interpolate",
        str(run),
        "--alphas",
        "0.5,1",
        "--val-prompts",
        "2",
        "--test-prompts",
        "2",
        "--n-samples",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "interpolation.json").read_text())
    assert summary["alphas"] == [0.5, 1.0] and summary["selection"]["selected_on"] == "validation"
    assert summary["selection"]["chosen"] in (0.5, 1.0)
    assert summary["from"].endswith("adapters/sft") and summary["to"].endswith("adapters/grpo")
    assert summary["splits"] == {"val": {"n_prompts": 2}, "test": {"n_prompts": 2}}
    for row in summary["curve"]:
        assert {"pass@1", "pass@2"} <= set(row["val"]) and {"pass@1", "pass@2"} <= set(row["test"])
        assert json.loads((Path(row["adapter"]) / "adapter_config.json").read_text())["r"] == 16  # 8 + 8, stacked
    for split in ("val", "test"):  # the evaluation job's own outputs, one job per split
        results = json.loads((tmp_path / "out" / split / "results.json").read_text())
        assert set(results["models"]) == {"a0.5", "a1"}
    printed = " ".join(proc.stderr.split())  # polyray's console (stderr); rich wraps long lines
    assert f"α = {summary['selection']['chosen']:g} chosen on validation" in printed, proc.stderr[-2000:]
