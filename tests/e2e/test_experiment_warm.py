"""An experiment's two waves (a root run, then runs branching from its adapter) on one warm engine and one set of
kept learner ranks (polyray.drivers.warm): every run after the first starts no engine, and a branch, whose store and
adapters are its own on the engine the root used, evaluates the root's SFT adapter as its base exactly as the root
evaluated it (same adapter, same request seeds: any of the root's state left on the engine, a version id served
under the root's weights or a cached prefix, would show). Warm against cold for every number of every run:
``polyray bench experiment`` and docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = f"""
name: two_waves
base: {ROOT / "configs" / "quickstart.yaml"}
split: val
task: {{type: countdown, n_train: 512, n_val: 16, n_test: 16}}
runs:
  sft:
    phases:
      - {{type: sft, name: sft, steps: 4, batch_size: 16, lr: 2.0e-3}}
  group:
    from: sft/sft
    phases:
      - &grpo {{type: grpo, name: grpo, steps: 3, prompts_per_step: 8, group_size: 4, lr: 3.0e-3, kl_beta: 0.02}}
  passk:
    from: sft/sft
    phases:
      - {{<<: *grpo, advantage: {{type: passk, k: 2, match_group_scale: true}}}}
models: {{sft: sft/sft, group: group/grpo, passk: passk/grpo}}
"""


def test_an_experiments_waves_share_one_engine_and_each_run_keeps_its_own_state(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(EXPERIMENT)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "polyray.cli", "experiment", str(path), "--seeds", "1", "--output-dir", str(out)]
    cmd += ["--set", "eval.n_samples=4", "--set", "eval.ks=[1, 4]", "--set", "cluster.dashboard=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    results = {d.name: json.loads((d / "results.json").read_text()) for d in (out / "runs").iterdir()}
    assert sorted(results) == ["group-s0", "passk-s0", "sft-s0"]
    root = results["sft-s0"]["phases"]["sft"]
    for branch in ("group-s0", "passk-s0"):
        assert results[branch]["phases"]["base"] == root, branch  # the root's adapter, evaluated alike
        assert set(results[branch]["phases"]) == {"base", "grpo"}
    # the engine started once, before the trials: every run only attached to it
    assert all("rollout_pool_attach" in r["timings_s"] for r in results.values()), results
    assert not any("rollout_pool_start" in r["timings_s"] for r in results.values()), results
