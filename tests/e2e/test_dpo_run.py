"""The ``dpo`` phase end to end: ``polyray run`` of the quickstart with its GRPO phase replaced by DPO on the
policy's own samples, on the embedded model, vLLM rollouts and the Ray Serve reward service.

Its first step samples under the phase-start adapter, which is also its reference, so every pair's margin
is 0 and the loss log 2: the reference adapter reached the learner and the pairs were built and trained on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
PHASES = [
    {"type": "sft", "steps": 20, "batch_size": 32, "lr": 2.0e-3},
    {"type": "dpo", "steps": 4, "prompts_per_step": 8, "group_size": 4, "beta": 0.1, "learner_workers": 1},
]
SHORT = [f"phases={json.dumps(PHASES)}", "task.n_test=16", "eval.n_samples=4", "eval.ks=[1, 4]", "dynamics.every=0"]
SHORT += ["cluster.dashboard=false"]  # (the Ray job test covers the dashboard)


def test_dpo_trains_end_to_end_from_its_reference(tmp_path, model_dir):
    out = tmp_path / "dpo"
    run_config("configs/quickstart.yaml", out, SHORT)
    sets = [arg for s in SHORT for arg in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "dpo"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dpo = [r for r in rows if r.get("phase") == "dpo"]
    assert [r["step"] for r in dpo] == [1, 2, 3, 4]
    first = dpo[0]
    assert first["pairs"] > 0, first  # the SFT policy's samples differ in reward on some prompts
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and first["margin"] == pytest.approx(0, abs=1e-4)
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in dpo if r["pairs"])
    assert (out / "adapters" / "dpo" / "adapter_config.json").is_file()

    check_cmd = [sys.executable, "-m", "polyray.cli", "check", "configs/quickstart.yaml", *sets]
    check = subprocess.run(check_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    shown = " ".join((check.stdout + check.stderr).split())
    assert "1 dpo [dpo]: 4 steps, 8 prompts x 4 samples per step, the best and the worst of each paired" in shown
