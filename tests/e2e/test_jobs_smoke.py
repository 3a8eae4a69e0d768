"""Tiny smoke runs of the job entrypoints a user runs by hand: benchmarks and reward-model training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.processes import run_module as _run

from polyray.drivers.bench.grpo import GRPO_RATIOS

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.vllm
def test_benchmark_all_smoke_rollout_and_grpo(tmp_path):
    """The rollout and GRPO parts of the benchmark table at a tiny size, each in its own process, then the
    summary (the other two parts: tests/e2e/test_bench_smoke.py; each part's driver runs alone in a CI pass)."""
    out = tmp_path / "bench.json"
    proc = _run(["jobs.benchmark", "all", "--smoke", "--parts", "rollout", "--parts", "grpo", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results) == {"rollout", "grpo"}

    rollout = results["rollout"]
    for engine in ("raw_llm", "transformers", "pool_1", "pool_2"):
        assert rollout[engine]["tokens"] > 0 and rollout[engine]["tokens_per_s"] > 0, engine
    # vLLM's own LoRA ops: raw_llm's harness with polyray's plugin off, a reference left out of --smoke
    assert "raw_llm_vllm_lora_ops" not in rollout and "cpu_lora_plugin_vs_vllm_ops" not in rollout["ratios"]
    # the samples themselves (a digest of their token ids), compared only where they must be identical:
    # the same prompts, seeds and adapter on one engine of the same settings running the whole batch. The
    # pool with 1 worker and the bare engine sample the same tokens
    sampled = rollout["raw_llm"]["token_ids_sha256"]
    assert rollout["pool_1"]["token_ids_sha256"] == sampled
    # with vLLM's detokenizer or without (the same engine, the same sampling parameters but the detokenizer),
    # the same samples
    ways = rollout["detokenizer"]
    assert ways["ids_then_decode"]["token_ids_sha256"] == ways["vllm_detokenizer"]["token_ids_sha256"] == sampled
    # not compared: 2 workers give each engine half the batch (other matmul shapes: on the CPU a row's product
    # may differ in its last bits with the rows beside it), so it may sample other tokens
    assert rollout["adapter_sync"]["syncs"] == rollout["full_reload"]["syncs"] == 2
    floor = rollout["sync_floor"]  # the adapter's bytes copied once and written once, in the same run
    assert floor["bytes"] > 0 and floor["memcpy_ms"] > 0 and floor["write_ms"] > 0

    grpo = results["grpo"]
    # --smoke runs one mode, one fit: the KL reference on the rollout worker (the other modes change one setting
    # each; their ratios are the same division, unit-tested), so no ratio and no floor (no sync mode)
    assert grpo["modes"] == ["async_rollout_reference"]
    assert grpo["rounds"] == 1 and grpo["async_rollout_reference"]["steps"] == 2  # 4 steps - 2 warm-up
    assert grpo["async_rollout_reference"]["step_s"] > 0
    assert not (set(GRPO_RATIOS) | {"floor", "async_vs_floor"}) & set(grpo)

    for needle in ("RolloutPool / bare vllm.LLM", "adapter publish / copy + write of its bytes"):
        assert needle in proc.stdout, needle


def test_reward_model_training(tmp_path):
    model_dir = tmp_path / "rm"
    _run(
        [
            "jobs.train_reward_model",
            "--data",
            str(ROOT / "tests" / "fixtures" / "engagement.jsonl"),
            "--out",
            str(model_dir),
        ]
    )
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["test"]["spearman"] > 0.3, metrics
