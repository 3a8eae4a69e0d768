"""The training entrypoint as a Ray job: `ray job submit --working-dir . -- python -m jobs.train ...`.

Starts a head node with `ray start --head`, submits a shortened quickstart (2 steps per phase,
8 test prompts) with the README's command, and checks the job succeeded and wrote results.
`ray stop` afterwards stops every Ray process started by `ray start` on this machine; the
in-process test cluster (`conftest.ray_cluster`) is started with `ray.init`, which it spares.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_entrypoint_runs_as_ray_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # The head and the submitting client share a token (environment variables keep ~/.ray untouched;
    # with a token file in ~/.ray, `ray start` turns token auth on and the client must use it too).
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"] = "token", secrets.token_hex(16)
    dashboard = _free_port()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port=0", f"--dashboard-port={dashboard}", "--num-cpus=4",
         "--include-dashboard=true", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "job-run"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
        "--", sys.executable, "-m", "jobs.train", "--config", "configs/quickstart.yaml",
        "--set", "phases.0.steps=2", "--set", "phases.1.steps=2", "--set", "task.n_test=8",
        "--set", "dynamics.every=0", "--output-dir", str(out),
    ]  # fmt: skip
    try:
        # `ray start` returns before the head's dashboard agent accepts jobs; until it does, a
        # submission is refused ("No available agent") without creating a job, so it is retried.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            job = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if NO_AGENT not in job.stdout + job.stderr or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    assert "succeeded" in (job.stdout + job.stderr).lower()
    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    assert (out / "adapters" / "grpo" / "adapter_model.safetensors").is_file()
