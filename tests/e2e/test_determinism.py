"""Two runs of one small config with one seed on one machine write the same step rows and test tables
(timings aside): sampling seeds, prompt draws, the learner's initialisation and the adapter sync leave
nothing to chance. The fingerprint (polyray.fingerprint) names what else the numbers depend on.

The config ends with a ``dpo`` phase on the policy's own samples, whose checks ride on the first run (a
whole run of its own costs a run's start-up). Its first step samples under the phase-start adapter, which
is also its reference, so every pair's margin is 0 and the loss log 2: the reference adapter reached the
learner and the pairs were built and trained on.
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
from support.run_compare import evaluations, log_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
PHASES = [
    {"type": "sft", "steps": 8, "batch_size": 16},
    {"type": "grpo", "steps": 4, "prompts_per_step": 4, "group_size": 4, "async_rollouts": True, "max_lag": 1},
    {"type": "dpo", "steps": 4, "prompts_per_step": 8, "group_size": 4, "beta": 0.1, "learner_workers": 1},
]
SMALL = [
    f"phases={json.dumps(PHASES)}",
    "task.n_test=16",
    "eval.n_samples=4",
    "eval.ks=[1, 4]",
    "dynamics.every=2",
    "learner.num_workers=1",
    "cluster.dashboard=false",  # (it changes no number; the Ray job test covers it)
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, model_dir) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("determinism")
    for name in ("a", "b"):
        run_config("configs/quickstart.yaml", tmp / name, SMALL)
    return tmp / "a", tmp / "b"


def test_two_runs_with_one_seed_write_the_same_rows_and_tables(two_runs):
    first, second = two_runs
    rows = log_rows(first / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["sft"] * 8 + ["grpo"] * 4 + ["dpo"] * 4
    assert log_rows(second / "metrics.jsonl") == rows
    assert log_rows(second / "dynamics.jsonl") == log_rows(first / "dynamics.jsonl")
    assert evaluations(second) == evaluations(first)
    results = [json.loads((out / "results.json").read_text()) for out in (first, second)]
    assert results[0]["fingerprint"] == results[1]["fingerprint"]


def test_dpo_trains_end_to_end_from_its_reference(two_runs):
    out = two_runs[0]
    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo", "dpo"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dpo = [r for r in rows if r.get("phase") == "dpo"]
    assert [r["step"] for r in dpo] == [1, 2, 3, 4]
    first = dpo[0]
    assert first["pairs"] > 0, first  # the policy's samples differ in reward on some prompts
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and first["margin"] == pytest.approx(0, abs=1e-4)
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in dpo if r["pairs"])
    assert (out / "adapters" / "dpo" / "adapter_config.json").is_file()

    sets = [arg for s in SMALL for arg in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    check_cmd = [sys.executable, "-m", "polyray.cli", "check", "configs/quickstart.yaml", *sets]
    check = subprocess.run(check_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    shown = " ".join((check.stdout + check.stderr).split())
    assert "2 dpo [dpo]: 4 steps, 8 prompts x 4 samples per step, the best and the worst of each paired" in shown
