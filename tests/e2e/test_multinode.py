"""A short quickstart on a three-node Ray cluster whose nodes share no disk but ``cluster.storage``.

One machine stands for three: a head node (the driver's) and two worker nodes
(``ray.cluster_utils.Cluster``), each worker node with its own ``POLYRAY_CACHE_DIR`` and
``HF_HOME`` and a custom resource ``worker`` that ``cluster.worker_resources`` asks for, so every
rollout worker, learner rank and reward replica runs there. A temporary directory stands for the
shared volume (``cluster.storage``). The driver (its own cache too) builds nothing: the embedded
model is copied into its cache beforehand; once its inputs are prepared (the model put into
storage) it deletes its cache copy, so a process that still reads a path on the driver's disk
fails, naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "phases.0.steps=3", "phases.0.batch_size=8", "phases.0.checkpoint_every=2",
    "phases.1.steps=2", "phases.1.prompts_per_step=4", "phases.1.group_size=4", "phases.1.checkpoint_every=2",
    "task.n_test=8", "eval.n_samples=4", "eval.ks=[1, 4]", "dynamics.every=3", "cluster.dashboard=false",
]  # fmt: skip
# The driver: the CLI, with its cache deleted once prepare_inputs returns (the model is in storage then).
DRIVER = """
import shutil, sys
import polyray.drivers.run as run
prepare, cache = run.prepare_inputs, sys.argv.pop(1)
def prepare_then_forget(state, engagement):
    prepare(state, engagement)
    shutil.rmtree(cache)
run.prepare_inputs = prepare_then_forget
from polyray.cli import app
sys.argv[0] = "polyray"
app()
"""


def _seed_driver_cache(cache: Path) -> Path:
    """The embedded quickstart model copied into ``cache`` (built into the user cache if needed)."""
    from polyray.config import load_config
    from polyray.models.source import resolve_model_dir

    run = load_config(ROOT / "configs" / "quickstart.yaml")
    built = resolve_model_dir(run.model, run.task)
    shutil.copytree(built, cache / "models" / built.name)
    return cache / "models" / built.name


def test_short_quickstart_on_nodes_that_share_only_storage(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # the nodes start from this process, whose Ray read its auth mode on import: no token, for all
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    driver_cache = tmp_path / "driver" / "cache"
    seeded = _seed_driver_cache(driver_cache)
    model = shutil.copytree(seeded, tmp_path / "expected")  # the driver's copy goes
    storage, out = tmp_path / "shared", tmp_path / "run"
    nodes = {name: tmp_path / name for name in ("node-a", "node-b")}
    cluster = Cluster()
    try:
        cluster.add_node(  # the head: the driver's node
            num_cpus=1, include_dashboard=False,
            env_vars={"POLYRAY_CACHE_DIR": str(driver_cache), "HF_HOME": str(tmp_path / "driver" / "hf")},
        )
        for name, root in nodes.items():
            cluster.add_node(
                num_cpus=2, resources={"worker": 4}, object_store_memory=200 * 1024**2,
                env_vars={"POLYRAY_CACHE_DIR": str(root / "cache"), "HF_HOME": str(root / "hf")},
            )  # fmt: skip
        cluster.wait_for_nodes()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "POLYRAY_CACHE_DIR": str(driver_cache),
               "HF_HOME": str(tmp_path / "driver" / "hf")}  # fmt: skip
        sets = [*SHORT, f"cluster.storage={storage}", "cluster.worker_resources={worker: 1}"]
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, str(driver_cache), "run", str(ROOT / "configs" / "quickstart.yaml"),
             "--output-dir", str(out), *(arg for s in sets for arg in ("--set", s))],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        cluster.shutdown()
    if proc.returncode != 0:
        pytest.fail(f"the driver failed:\n{proc.stderr[-8000:]}", pytrace=False)
    assert not driver_cache.exists()

    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    for phase in ("sft", "grpo"):  # the driver has each phase's adapter, through storage
        assert (out / "adapters" / phase / "adapter_model.safetensors").is_file()
    # each worker node copied the model from storage once, hash-checked, and built none itself
    copies = [p for root in nodes.values() for p in (root / "cache" / "storage").glob(f"{seeded.name}-*") if p.is_dir()]
    assert copies, "no worker node copied the model from storage"
    for copy in copies:
        assert (copy / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert not any((root / "cache" / "models").exists() for root in nodes.values())
    # Ray Train's checkpoints and the adapter store are in storage, not on the driver's disk
    assert any(storage.rglob("checkpoint_*")) and not (out / "checkpoints").exists()
    assert any(storage.rglob("adapter_store/v000001/record.json")) and not (out / "adapter_store").exists()
