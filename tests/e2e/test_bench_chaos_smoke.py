"""``polyray bench chaos`` at a tiny size: both services under load, each replica SIGKILLed mid-load.

No thresholds on the figures (rates, latencies, the recovery time); but what the services promise is
checked: the steady load all answered, a kill failing no request outside its window, the learner's
retrying reward calls losing none; and what the killed replicas had running below them (vLLM's engine
core, sandboxes) and the directories they owned are checked from outside, after the benchmark's process
and its Ray cluster are gone: nothing of them may be left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyray import lifetime

# Not serial: nothing here bounds a time (a replica's recovery is waited for up to 400 s), and alone it left one
# of the two cores idle most of its run
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_chaos_smoke(tmp_path):
    out = tmp_path / "chaos.json"
    # a replica's restart took 85-91 s here with another test beside this one: the wait for it is not checked
    args = [
        "jobs.benchmark",
        "chaos",
        "--clients",
        "2",
        "--seconds",
        "3",
        "--kill-at",
        "1",
        "--max-recovery-s",
        "400",
        "--json",
        str(out),
    ]
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for service in ("reward", "generation"):
        steady, kill = results[service]["steady"], results[service]["kill"]
        # 2 clients against a queue of hundreds: every request of the steady load answered, none shed nor failed
        assert steady["requests"] > 0 and steady["ok"] == steady["requests"], steady["statuses"]
        assert kill["recovery_s"] is not None  # the service answered again after its replica died
        # the kill fails only what was in flight or sent while the replica was down: before it and after the
        # service answered again, no request failed
        assert kill["errors_before_kill"] == 0 and kill["errors_after_recovery"] == 0, kill["statuses"]
        killed = kill["killed"]
        # nothing the replica had running outlived it, nor a directory it owned
        assert kill["orphans"] == [] and kill["leaked_dirs"] == []
        assert not [p for p, started, _ in killed["processes"] if lifetime.alive(p, started)]
        assert not [d for d in killed["dirs"] if os.path.isdir(d)]
    generation = results["generation"]["kill"]["killed"]["processes"]
    assert any("EngineCore" in title for _, _, title in generation), generation  # the check could fail
    for run in ("steady", "kill"):
        # the learner's own calls (retrying through the handle) went on beside the load, and lost none, even
        # while the replica was down
        retrying = results["reward"][run]["retrying"]
        assert retrying["calls"] > 0 and retrying["lost"] == 0, (run, retrying["outcomes"])
    assert "services on loopback" in proc.stdout  # the table printed
