"""A run on two nodes that share no disk, without ``cluster.storage``: the worker node is told in one line.

The head (the driver's node) starts with ``ray start --head``; the worker node with ``ray start`` inside
a mount namespace of its own (``unshare -m``) where the driver's directory is covered by an empty
tmpfs, as a GPU node of the VM launcher does not see the head's disk. The driver's model is in its own
cache under that directory. ``cluster.worker_resources`` sends every worker to that node. The run must
stop with one ``error:`` line naming ``cluster.storage``, not the Hugging Face or vLLM traceback that
loading a missing directory gives.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.processes import kill_by_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "POLYRAY_TEST_UNSHARED"


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_unshare(), reason="needs unshare -m (root)")
def test_a_worker_node_without_the_drivers_path_names_cluster_storage(tmp_path):
    from polyray.config import load_config
    from polyray.http import free_port
    from polyray.models.source import resolve_model_dir

    run = load_config(ROOT / "configs" / "quickstart.yaml")
    built = resolve_model_dir(run.model, run.task)
    driver = tmp_path / "driver"  # the driver's disk: covered on the worker node
    shutil.copytree(built, driver / "cache" / "models" / built.name)

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", POLYRAY_CACHE_DIR=str(driver / "cache"))
    env[MARKER] = secrets.token_hex(8)
    temp_dir = Path(tempfile.mkdtemp(prefix="un-", dir="/tmp"))  # short: socket paths under it
    port = free_port()
    ray = str(BIN / "ray")
    head = [ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    head += [f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    worker = f"mount -t tmpfs tmpfs {driver} && exec {ray} start --address=127.0.0.1:{port} --num-cpus=4"
    worker += " --resources='{\"worker\": 4}' --disable-usage-stats"
    node_env = {**env, "POLYRAY_CACHE_DIR": str(tmp_path / "node" / "cache"), "HF_HOME": str(tmp_path / "node")}
    try:
        started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-3000:]
        joined = subprocess.run(
            ["unshare", "-m", "sh", "-c", worker], env=node_env, capture_output=True, text=True, timeout=180
        )
        assert joined.returncode == 0, joined.stderr[-3000:]
        sets = [f"cluster.address=127.0.0.1:{port}", "cluster.worker_resources={worker: 1}"]
        sets += [
            "cluster.dashboard=false",
            "cluster.resource_wait_s=120",
            "task.n_test=8",
            "eval.n_samples=4",
            "eval.ks=[1, 4]",
        ]
        proc = subprocess.run(
            [str(BIN / "polyray"), "run", "configs/quickstart.yaml", "--output-dir", str(tmp_path / "run")]
            + [arg for s in sets for arg in ("--set", s)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        kill_by_env(MARKER, env[MARKER])
        shutil.rmtree(temp_dir, ignore_errors=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-6000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-6000:]
    assert f"{driver / 'cache' / 'models' / built.name}: not on node " in errors[0]
    assert "set cluster.storage to a location every node reaches" in errors[0]
    assert "Traceback" not in output, output[-6000:]
