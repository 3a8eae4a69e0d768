"""``polyray bench peer`` at a tiny size (one seed, two steps a phase, tiny batches, a toy "larger" model):
structure only, no thresholds. Needs TRL (the bench extra, which ``make setup`` installs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polyray.drivers.bench.suite import SMOKE

# not serial: --smoke's timings are only checked to be positive, and its runs never overlap the chaos smoke's
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def test_peer_smoke_compares_both_trainers_and_the_larger_model(tmp_path):
    pytest.importorskip(
        "trl", reason="TRL is not installed: the peer benchmark needs the bench extra (pip install -e '.[bench]')"
    )
    out = tmp_path / "peer.json"
    # faulthandler: a crash in native code (a SIGSEGV seen once here) prints every thread's Python stack
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "jobs.benchmark", "peer", *SMOKE["peer"], "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["seeds"] == [0] and set(r["per_seed"]) == {"0"}
    seed = r["per_seed"]["0"]
    for engine in ("polyray", "trl"):
        for phase in ("sft", "grpo"):
            steps = seed[engine]["steps"][phase]
            assert steps["steps"] == 2 and steps["step_s"] > 0 and steps["tokens_per_s"] > 0, (engine, phase)
            assert set(seed[engine]["eval"][phase]) == {"pass@1", "pass@5", "pass@10"}, (engine, phase)
        assert seed[engine]["end_to_end_s"] > 0
    # polyray's fixed costs, each measured by its run (one the run did not time would read 0.0)
    startup = r["polyray_startup_s"]
    assert all(startup[k] > 0 for k in ("ray_start", "serve_start", "vllm_engine_start")), startup
    # one seed: means, no paired test
    c = r["compared"]["grpo_step_s"]
    assert c["paired_t"]["pvalue"] is None and c["polyray"] == [seed["polyray"]["steps"]["grpo"]["step_s"]]
    assert r["compared"]["grpo_pass@1"]["noninferiority"]["pvalue"] is None  # nor a non-inferiority test
    assert set(r["ratios"]) == {"grpo_step_polyray_vs_trl", "sft_step_polyray_vs_trl", "end_to_end_polyray_vs_trl"}
    large = r["large"]
    assert large["vllm"]["tokens"] == large["transformers"]["tokens"] == 2 * 2 * 16  # fixed length: equal counts
    # no learner step in --smoke: run_case is tests/unit/drivers/test_bench_learner.py's
    assert large["vllm_vs_transformers"] > 0 and "learner" not in large
    # the run's start-up trace, printed: every component the run started, from asked for to ready
    trace = seed["polyray"]["startup_trace"]["components"]
    assert {"ray", "reward service", "rollout worker 0", "learner rank 0"} <= set(trace), trace
    for needle in ("polyray vs TRL", "grpo step s", "polyray's fixed costs", "vLLM", "polyray's start-up, seed 0"):
        assert needle in proc.stdout, needle
