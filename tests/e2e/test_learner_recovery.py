"""A learner worker killed mid-phase: Ray Train restarts the group and the phase resumes from its
latest checkpoint instead of starting over (nothing lost, nothing repeated past the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def _steps(metrics: Path) -> list[int]:
    """Every step row as written (duplicates after a resume included; the resume marker and a row
    still being written left out)."""
    if not metrics.is_file():
        return []
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event" not in row:
            steps.append(row["step"])
    return steps


def _train_workers() -> list[psutil.Process]:
    """Ray Train worker processes on this machine (the test run is the only training job)."""
    return [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def test_phase_resumes_from_checkpoint_after_a_worker_dies(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "polyray.cli", "run", str(ROOT / "configs" / "quickstart.yaml"), "--output-dir", str(out),
           "--set", "phases=[{type: sft, steps: 40, checkpoint_every: 5}]", "--set", "task.n_test=8",
           "--set", "dynamics.every=0", "--set", "reward.endpoint=false"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    killed = False
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if not killed and len(_steps(metrics)) >= 12:
            workers = _train_workers()
            assert workers, "no Ray Train worker process found"
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed = True
        time.sleep(0.2)
    output = proc.communicate(timeout=60)[0]
    assert killed, "the phase finished before a worker could be killed"
    assert proc.returncode == 0, output[-4000:]

    steps = _steps(metrics)
    assert steps[-1] == 40 and set(steps) == set(range(1, 41))
    first_repeat = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    resumed_from = steps[first_repeat] - 1
    # restarted at a reported checkpoint (every 5 steps; the newest may still be in flight when the
    # worker dies), not at step 0
    assert resumed_from % 5 == 0 and resumed_from >= 5, steps
    results = json.loads((out / "results.json").read_text())
    assert "sft" in results["phases"]
    # the rows past the checkpoint are marked as superseded: readers see each step once
    from polyray.io import RESUME_EVENT, read_log_jsonl

    markers = [json.loads(line) for line in metrics.read_text().splitlines() if RESUME_EVENT in line]
    assert [m["step"] for m in markers] == [resumed_from], markers
    assert [r["step"] for r in read_log_jsonl(metrics)] == list(range(1, 41))
