"""Tiny smoke runs of the job entrypoints a user runs by hand: benchmarks and reward-model training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


def _run(args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.vllm
def test_polychromic_benchmark_prints_side_by_side_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["jobs.benchmark", "polychromic", "--steps", "5", "--diversity", "countdown_expr", "--json", str(out)])
    results = json.loads(out.read_text())
    canary = "polychromic_sft[countdown_expr, canary every step]"
    assert set(results) == {"sft", "polychromic_sft[countdown_expr]", "polychromic_sft[countdown_expr, async]", canary}
    assert all(r["step_s"] > 0 and r["steps"] == 2 for r in results.values())  # 5 steps - 3 warm-up
    assert results[canary]["canary_s"] > 0 and "canary_s" not in results["polychromic_sft[countdown_expr]"]
    assert "÷ SFT" in proc.stdout


def test_reward_benchmark_and_reward_model_training(tmp_path):
    out = tmp_path / "bench.json"
    _run(["jobs.benchmark", "reward", "--requests", "20", "--max-seconds", "5", "--json", str(out)])
    results = json.loads(out.read_text())
    assert len(results["http"]) == 4 and all(r["requests"] > 0 and not r["errors"] for r in results["http"])
    assert results["engagement_batching"]["ratio"] > 0

    model_dir = tmp_path / "rm"
    _run(["jobs.train_reward_model", "--data", str(ROOT / "tests" / "fixtures" / "engagement.jsonl"),
          "--out", str(model_dir)])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["test"]["spearman"] > 0.3, metrics


@pytest.mark.vllm
def test_generation_benchmark(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["jobs.benchmark", "generation", "--requests", "4", "--n", "2", "--max-tokens", "8", "--publishes", "2",
                 "--json", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    for side in ("direct", "endpoint"):
        assert [r["concurrency"] for r in results[side]] == [1, 16]
        assert all(r["output_tokens"] > 0 and r["tokens_per_s"] > 0 for r in results[side])
    assert set(results["ratio"]) == {"1", "16"} and results["publish_to_latest"]["publishes"] == 2
    assert "endpoint / direct" in proc.stdout
