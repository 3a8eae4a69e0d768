"""``polyray bench canary`` at a small size: the sync canary's rule on the real bfloat16 path (a vLLM
rollout worker and the learner's peft model, Qwen3-0.6B's width, 2 layers, a 32,768-token vocabulary).

What the rule promises is checked on what the benchmark measured: a worker serving the published
adapter never stops the run (the old rule, a token gap past 5e-2, stopped nearly every such check);
a worker left on the previous version is caught once the adapter moved well past the kernels'
noise, and the references catch some the tolerance alone lets pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def test_bfloat16_canary_passes_the_right_adapter_and_catches_a_stale_one(tmp_path):
    from polyray.learner.sync import NOISE, TOLERANCE

    out = tmp_path / "canary.json"
    args = [
        "jobs.benchmark",
        "canary",
        "--layers",
        "2",
        "--vocab",
        "32768",
        "--probes",
        "8",
        "--probe-tokens",
        "16",
        "--short-tokens",
        "4",
        "--json",
        str(out),
    ]
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["rule"] == {"tolerance": TOLERANCE["bfloat16"], "noise": NOISE["bfloat16"]}
    full, short = results["probe"], results["short"]
    assert full["tokens"] == 16 and short["tokens"] == 4 and full["checks"] == short["checks"] == 8 * 8
    for r in (full, short):
        assert r["false_alarms"] == 0, r  # the right adapter, with bfloat16's kernel noise: never stopped
        assert 0 < r["fresh_rms"]["median"] < NOISE["bfloat16"], r  # noise there is, under the rule's figure
    assert full["old_rule_false_alarms"] > full["checks"] // 2, full  # what the first canary did to bfloat16 runs
    last = full["stale"][-1]
    assert last["moved_rms"] > TOLERANCE["bfloat16"] + NOISE["bfloat16"] and last["caught"] == 8, full["stale"]
    assert sum(s["caught"] - s["by_tolerance"] for s in full["stale"]) > 0, full["stale"]  # what the references add
    assert full["base_caught"] >= full["checks"] // 2, full
