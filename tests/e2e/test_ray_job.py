"""The training entrypoint as a Ray job: `ray job submit --working-dir . -- python -m jobs.train ...`.

Starts a head node with `ray start --head` and metrics export on, submits a shortened quickstart
(polychromic SFT then GRPO, 3 steps each, the reward service and the generation service on, 8 test
prompts) with the README's command, and checks the job succeeded and wrote results. While the job
runs, the test scrapes the node's Prometheus endpoint: every polyray metric the Grafana dashboard
(deploy/grafana-dashboard.json) queries has a sample tagged with the job's run.
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
from dashboard import declared_metrics

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
    env["RAY_metrics_report_interval_ms"] = "1000"  # samples reach the endpoint within a second
    dashboard, metrics_port = _free_port(), _free_port()
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--port=0", f"--dashboard-port={dashboard}", "--num-cpus=4",
         "--include-dashboard=true", f"--metrics-export-port={metrics_port}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "job-run"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
        "--", sys.executable, "-m", "jobs.train", "--config", "configs/quickstart.yaml", "--set", f"name={RUN}",
        "--set", "phases.0.type=polychromic_sft", "--set", "phases.0.name=sft", "--set", "phases.0.steps=3",
        "--set", "phases.0.batch_size=8", "--set", "phases.0.prompts_per_step=4", "--set", "phases.0.n_samples=3",
        "--set", "phases.1.steps=3", "--set", "phases.1.prompts_per_step=8", "--set", "phases.1.group_size=4",
        "--set", "task.n_test=8", "--set", "dynamics.every=0", "--set", "eval.n_samples=4", "--set", "eval.ks=[1, 4]",
        "--serve-generation", "--set", f"generation.http_port={_free_port()}", "--output-dir", str(out),
    ]  # fmt: skip
    seen: set[str] = set()  # metric families with a sample tagged run=RUN
    try:
        # `ray start` returns before the head's dashboard agent accepts jobs; until it does, a
        # submission is refused ("No available agent") without creating a job, so it is retried.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            proc = subprocess.Popen(submit, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)  # fmt: skip
            while proc.poll() is None:  # scrape while the job runs
                seen |= _scrape(metrics_port)
                time.sleep(1.0)
            output = proc.communicate()[0]
            if NO_AGENT not in output or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower()
    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    assert (out / "adapters" / "grpo" / "adapter_model.safetensors").is_file()
    suffix = {"gauge": "", "histogram": "_bucket", "counter": "_total"}
    expected = {f"ray_{name}{suffix[kind]}" for name, kind in declared_metrics().items()}
    assert expected <= seen, f"never scraped with run={RUN}: {sorted(expected - seen)}"


RUN = "rayjob"


def _scrape(port: int) -> set[str]:
    """Metric names (as exported) with a sample labelled run=RUN on the node's Prometheus endpoint."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return set()
    return {line.split("{", 1)[0] for line in text.splitlines() if f'run="{RUN}"' in line and not line.startswith("#")}
