"""Two runs of one small config with one seed on one machine write the same step rows and test tables
(timings aside): sampling seeds, prompt draws, the learner's initialisation and the adapter sync leave
nothing to chance. The fingerprint (polyray.fingerprint) names what else the numbers depend on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.processes import run_config
from support.run_compare import evaluations, log_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

PHASES = [
    {"type": "sft", "steps": 8, "batch_size": 16},
    {"type": "grpo", "steps": 4, "prompts_per_step": 4, "group_size": 4, "async_rollouts": True, "max_lag": 1},
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


def _run(out: Path) -> Path:
    run_config("configs/quickstart.yaml", out, SMALL)
    return out


def test_two_runs_with_one_seed_write_the_same_rows_and_tables(tmp_path, model_dir):
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    rows = log_rows(first / "metrics.jsonl")
    assert {r["phase"] for r in rows} == {"sft", "grpo"} and len(rows) == 12
    assert log_rows(second / "metrics.jsonl") == rows
    assert log_rows(second / "dynamics.jsonl") == log_rows(first / "dynamics.jsonl")
    assert evaluations(second) == evaluations(first)
    results = [json.loads((out / "results.json").read_text()) for out in (first, second)]
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
