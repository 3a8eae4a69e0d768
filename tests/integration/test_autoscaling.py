"""A run's pre-check on an autoscaling cluster: the cluster grows the GPU nodes the run needs.

Ray's fake multi-node provider (what ``ray.cluster_utils.AutoscalingCluster`` starts) stands for a
cloud: a head node with CPUs only, and a node type with a declared ``GPU`` that starts with none,
each node a real raylet launched by the real autoscaler when it decides to scale. A driver joins the
cluster and runs polyray's pre-check (``init_ray`` with the run's demands) for a config whose
rollout worker asks for a GPU. Ray adds nodes only for queued work or an explicit request, and the
pre-check comes before any actor: the fake GPU node must start because polyray asked for it, and go
again once the driver has ended (its request withdrawn). The same check with the request left out
waits out its bound and is refused: the control that this cluster does not grow by itself.

The head and every node it launches carry a marker in their environment; they are killed by it
afterwards, so the test runs beside other clusters on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support.processes import kill_by_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "POLYRAY_TEST_AUTOSCALER"
GPU_NODE = {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2}
# The driver: polyray's pre-check for the quickstart with a GPU rollout worker; "no-request" leaves the
# autoscaler request out (the control).
DRIVER = """
import sys
import ray
import polyray.cluster as cluster
from polyray.config import load_config

mode, overrides = sys.argv[1], sys.argv[2:]
if mode == "no-request":
    cluster.request_cluster = lambda demands: None
run = load_config("configs/quickstart.yaml", overrides)
try:
    cluster.init_ray(run.cluster, cluster.needed_cpus(run), demands=cluster.run_demands(run))
except cluster.ClusterShortfall as exc:
    print("SHORTFALL", exc, flush=True)
    sys.exit(3)
print("FITS", ray.cluster_resources().get("GPU", 0.0), flush=True)
"""


def _config(port: int) -> dict:
    """The fake provider's cluster config (Ray's example, with this test's node types and GCS port)."""
    from ray._private.services import get_node_ip_address

    return {
        "cluster_name": "polyray-test",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{get_node_ip_address()}:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 4}, "node_config": {}, "max_workers": 0},
            "gpu": GPU_NODE,
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def _gpu_nodes(env: dict[str, str], address: str) -> int:
    """Live nodes with a GPU, as a fresh client of the cluster sees them."""
    code = (
        "import ray; ray.init(address=%r, log_to_driver=False);"
        "print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('GPU')))" % address
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def autoscaling_cluster():
    """(environment, address) of a head with CPUs only whose autoscaler may add fake GPU nodes."""
    from polyray.http import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_FAKE_CLUSTER="1")
    env.update(AUTOSCALER_UPDATE_INTERVAL_S="1", PATH=f"{BIN}:{env.get('PATH', '')}")
    env[MARKER] = secrets.token_hex(8)
    temp_dir = Path(tempfile.mkdtemp(prefix="as-", dir="/tmp"))  # short: socket paths under it
    config = temp_dir / "autoscaling.json"
    config.write_text(json.dumps(_config(port)))
    start = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"]
    start += [f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield env, f"127.0.0.1:{port}"
    finally:
        kill_by_env(MARKER, env[MARKER])


def _precheck(env: dict[str, str], address: str, mode: str, wait_s: int) -> subprocess.CompletedProcess:
    overrides = [f"cluster.address={address}", f"cluster.resource_wait_s={wait_s}"]
    overrides += ["rollout.gpus_per_worker=1", "rollout.gpu_memory_gib=80", "cluster.dashboard=false"]
    return subprocess.run(
        [sys.executable, "-c", DRIVER, mode, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=wait_s + 120,
    )


def test_a_run_asks_the_autoscaler_for_its_gpus(autoscaling_cluster):
    env, address = autoscaling_cluster
    assert _gpu_nodes(env, address) == 0

    control = _precheck(env, address, "no-request", wait_s=20)
    assert control.returncode == 3, control.stdout[-2000:] + control.stderr[-3000:]
    assert "SHORTFALL the cluster cannot hold this run: GPU: the run needs 1 at once" in control.stdout
    assert _gpu_nodes(env, address) == 0

    run = _precheck(env, address, "request", wait_s=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "FITS 1.0" in run.stdout, run.stdout
    # the driver has ended: its request is withdrawn, and the idle GPU node goes
    deadline = time.monotonic() + 90
    while _gpu_nodes(env, address) and time.monotonic() < deadline:
        time.sleep(3)
    assert _gpu_nodes(env, address) == 0, "the run's request outlived it: the GPU node was kept"
