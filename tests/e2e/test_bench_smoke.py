"""The benchmark table's polychromic and reward parts, and the generation benchmark, at a tiny size
(the rollout and GRPO parts: tests/e2e/test_jobs_smoke.py)."""

from __future__ import annotations

import json

import pytest
from support.processes import run_module as _run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]


@pytest.mark.vllm
def test_benchmark_all_smoke_polychromic_and_reward(tmp_path):
    """``bench all --smoke`` with the polychromic and reward parts, each in its own process, then the summary."""
    out = tmp_path / "bench.json"
    args = ["jobs.benchmark", "all", "--smoke", "--parts", "polychromic", "--parts", "reward", "--json", str(out)]
    proc = _run(args)
    results = json.loads(out.read_text())
    assert set(results) == {"polychromic", "reward"}

    poly = results["polychromic"]
    # (not in --smoke: the floor, SFT with another batch size; the one-ahead variant; the canary on every step,
    # which test_run_recovery runs)
    assert set(poly) == {"sft", "polychromic_sft[countdown_expr]"}
    assert all(r["step_s"] > 0 for r in poly.values())
    assert "canary_s" not in poly["polychromic_sft[countdown_expr]"]

    assert len(results["reward"]["http"]) == 4 and all(
        r["requests"] > 0 and not r["errors"] for r in results["reward"]["http"]
    )
    batching = results["reward"]["engagement_batching"]  # (its predictions agree, or the part fails)
    assert batching["n"] == 32 and batching["batched_items_per_s"] > 0 and batching["unbatched_items_per_s"] > 0
    for needle in ("polychromic_sft[countdown_expr] step / SFT step", "reward model batched / unbatched"):
        assert needle in proc.stdout, needle


@pytest.mark.vllm
def test_generation_benchmark(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(
        [
            "jobs.benchmark",
            "generation",
            "--requests",
            "4",
            "--n",
            "2",
            "--max-tokens",
            "8",
            "--publishes",
            "2",
            "--json",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    for side in ("direct", "endpoint"):
        assert [r["concurrency"] for r in results[side]] == [1, 16]
        assert all(r["output_tokens"] > 0 and r["tokens_per_s"] > 0 for r in results[side])
    assert set(results["ratio"]) == {"1", "16"} and results["publish_to_latest"]["publishes"] == 2
    assert "endpoint / direct" in proc.stdout


@pytest.mark.vllm
def test_multiturn_benchmark(tmp_path):
    """``bench multiturn`` at a tiny size: both engines (prefix cache on and off), and on each the episodes and
    the single turns sampled the same number of model tokens (every turn to its limit)."""
    out = tmp_path / "bench.json"
    args = ["--prompts", "2", "--episodes", "2", "--turns", "2", "--turn-tokens", "4", "--repeats", "1"]
    proc = _run(["polyray.cli", "bench", "multiturn", *args, "--json", str(out)])
    results = json.loads(out.read_text())
    for engine in ("prefix_caching", "no_prefix_caching"):
        r = results[engine]
        assert r["multi_turn_tokens"] == r["single_turn_tokens"] == 2 * 2 * 2 * 4, r
        assert r["multi_turn_tokens_per_s"] > 0 and r["single_turn_tokens_per_s"] > 0
    assert "multi / single" in proc.stdout
