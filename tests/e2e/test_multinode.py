"""A short quickstart on a three-node Ray cluster whose nodes share no disk but ``cluster.storage``,
one of which is lost mid-GRPO.

One machine stands for three: a head node (the driver's) and two worker nodes
(``ray.cluster_utils.Cluster``), each worker node with its own ``POLYRAY_CACHE_DIR`` and
``HF_HOME`` and a custom resource ``worker`` that ``cluster.worker_resources`` asks for, so every
rollout worker, learner rank and reward replica runs there. A temporary directory stands for the
shared volume (``cluster.storage``). The driver (its own cache too) builds nothing: the embedded
model is copied into its cache beforehand; once its inputs are prepared (the model put into
storage) it deletes its cache copy, so a process that still reads a path on the driver's disk
fails, naming it.

Node loss, in the same run: worker node A holds every worker (rollout worker, both learner ranks,
the reward replica). GRPO scores with a gate (a custom reward, :data:`GATE`) that holds a scoring
call past GRPO's step 3 once Ray Train has registered a GRPO checkpoint, so the loss lands
mid-phase however fast the steps are: node B joins, with room for every worker, and node A is SIGKILLed whole (its
raylet and every process under it); then the gate opens. The rollout worker and the reward replica
come back on B, Ray Train restarts the learner group there from the checkpoint, and the run
finishes with every step logged once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# serial: a node's loss must be seen within Ray's health-check timeouts
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm, pytest.mark.serial]

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "phases.0.steps=3",
    "phases.0.batch_size=8",
    "phases.0.checkpoint_every=2",
    "phases.1.steps=6",
    "phases.1.prompts_per_step=4",
    "phases.1.group_size=4",
    "phases.1.checkpoint_every=2",
    "task.n_test=8",
    "eval.n_samples=4",
    "eval.ks=[1, 4]",
    "dynamics.every=3",
    "cluster.dashboard=false",
]
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
# GRPO's reward: graded by length (any signal will do). Once GRPO has logged step 3 (so a call for a
# later step's rollouts: the phase cannot end), a call waits, bounded, until Ray Train has registered
# a GRPO checkpoint (its snapshot is in storage), says so (HELD), and waits until the test lost a node.
GATE = """
import json, time
from pathlib import Path

STORAGE, METRICS, HELD, RELEASE = (Path(p) for p in {paths!r})


def _logged(step):
    for line in METRICS.read_text().splitlines() if METRICS.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if row.get("phase") == "grpo" and row.get("step", 0) >= step:
            return True
    return False


def _wait(ready):
    deadline = time.monotonic() + 300
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.2)


def score(prompts, completions, **kwargs):
    if not RELEASE.exists() and _logged(3):
        _wait(lambda: any(STORAGE.rglob("grpo/checkpoint_*/polyray_manifest.json")))  # a whole checkpoint
        HELD.touch()
        _wait(RELEASE.exists)
    return [len(c) % 7 / 7 for c in completions]
"""


def _seed_driver_cache(cache: Path) -> Path:
    """The embedded quickstart model copied into ``cache`` (built into the user cache if needed)."""
    from polyray.config import load_config
    from polyray.models.source import resolve_model_dir

    run = load_config(ROOT / "configs" / "quickstart.yaml")
    built = resolve_model_dir(run.model, run.task)
    shutil.copytree(built, cache / "models" / built.name)
    return cache / "models" / built.name


def _wait_for(what: str, ready, proc: subprocess.Popen, timeout_s: float = 300.0):
    """Poll ``ready()`` until it returns something truthy; fail if the driver exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = ready()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the driver exited (rc {proc.returncode}) while waiting for {what}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}", pytrace=False)
        time.sleep(0.5)


def _kill_node(cluster, node) -> list[int]:
    """SIGKILL a worker node whole: its raylet and every process under it (core workers, the vLLM
    engine's processes, the agents) at once, then let the cluster reap it. Returns the pids killed."""
    import psutil

    from ray._private import ray_constants

    roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    procs = [psutil.Process(pid) for pid in roots if psutil.pid_exists(pid)]
    procs += [child for p in list(procs) for child in p.children(recursive=True)]
    assert any(p.pid == raylet for p in procs) and len(procs) > len(roots)  # workers live under the raylet
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)  # reaps the node's own processes
    _gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if _running(p)], f"survived SIGKILL: {alive}"
    return [p.pid for p in procs]


def _running(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _actors_by_class(address: str) -> dict[str, list[dict]]:
    """Every actor the cluster's GCS knows of (dead ones too), by class name."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        table = ray._private.state.actors()
    finally:
        ray.shutdown()
    actors: dict[str, list[dict]] = {}
    for actor in table.values():
        actors.setdefault(actor["ActorClassName"], []).append(actor)
    return actors


INNER = "POLYRAY_MULTINODE_INNER"


def test_short_quickstart_on_nodes_that_share_only_storage_survives_a_lost_node(tmp_path, monkeypatch):
    """Runs in a pytest of its own: the nodes start from the test's process with token auth off, and Ray
    keeps the auth mode it read for the life of a process, which would break every later test's cluster."""
    if os.environ.get(INNER) != "1":
        node_id = f"{__file__}::test_short_quickstart_on_nodes_that_share_only_storage_survives_a_lost_node"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                node_id,
                "--basetemp",
                str(tmp_path / "inner"),
            ],
            cwd=ROOT,
            env={**os.environ, INNER: "1"},
            capture_output=True,
            text=True,
        )
        print(proc.stdout[-3000:])
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
        return
    _survives_a_lost_node(tmp_path, monkeypatch)


def _survives_a_lost_node(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from polyray.io import RESUME_EVENT, read_log_and_markers
    from polyray.learner.sync import TOLERANCE

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # the nodes start from this process, whose Ray read its auth mode on import: no token, for all
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    driver_cache = tmp_path / "driver" / "cache"
    seeded = _seed_driver_cache(driver_cache)
    model = shutil.copytree(seeded, tmp_path / "expected")  # the driver's copy goes
    storage, out = tmp_path / "shared", tmp_path / "run"
    nodes = {name: tmp_path / name for name in ("node-a", "node-b")}

    def add_worker_node(name: str):
        # room for every worker at once (rollout worker 1 CPU, learner ranks 2, reward replica 0.5)
        return cluster.add_node(
            num_cpus=4,
            resources={"worker": 4},
            object_store_memory=200 * 1024**2,
            env_vars={"POLYRAY_CACHE_DIR": str(nodes[name] / "cache"), "HF_HOME": str(nodes[name] / "hf")},
        )

    cluster = Cluster()
    started = time.monotonic()
    try:
        cluster.add_node(  # the head: the driver's node; a lost node is declared dead after ~5 s
            num_cpus=1, include_dashboard=False,
            env_vars={"POLYRAY_CACHE_DIR": str(driver_cache), "HF_HOME": str(tmp_path / "driver" / "hf")},
            _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
        )  # fmt: skip
        node_a = add_worker_node("node-a")
        cluster.wait_for_nodes()
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.address,
            "POLYRAY_CACHE_DIR": str(driver_cache),
            "HF_HOME": str(tmp_path / "driver" / "hf"),
        }
        held, release = tmp_path / "held", tmp_path / "release"
        gate = tmp_path / "gate.py"
        gate.write_text(GATE.format(paths=[str(p) for p in (storage, out / "metrics.jsonl", held, release)]))
        sets = [
            *SHORT,
            f"cluster.storage={storage}",
            "cluster.worker_resources={worker: 1}",
            "reward.name=custom",
            f"reward.params={{function: '{gate}:score'}}",
        ]
        with open(tmp_path / "driver.log", "w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    DRIVER,
                    str(driver_cache),
                    "run",
                    str(ROOT / "configs" / "quickstart.yaml"),
                    "--output-dir",
                    str(out),
                    *(arg for s in sets for arg in ("--set", s)),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                _wait_for("GRPO held after its first checkpoint", held.exists, proc, timeout_s=420)
                node_b = add_worker_node("node-b")
                cluster.wait_for_nodes()
                killed = _kill_node(cluster, node_a)
                release.touch()
                proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
        actors = _actors_by_class(cluster.address) if proc.returncode == 0 else {}
    finally:
        cluster.shutdown()
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"the driver failed:\n{(tmp_path / 'driver.log').read_text()[-8000:]}", pytrace=False)
    assert not driver_cache.exists()
    print(f"node loss: {len(killed)} processes of node A SIGKILLed; the run took {elapsed:.0f} s")

    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    for phase in ("sft", "grpo"):  # the driver has each phase's adapter, through storage
        assert (out / "adapters" / phase / "adapter_model.safetensors").is_file()
    # each worker node copied the model from storage once, hash-checked, and built none itself
    copies = [p for root in nodes.values() for p in (root / "cache" / "storage").glob(f"{seeded.name}-*") if p.is_dir()]
    assert len(copies) == 2, "each worker node copies the model from storage"
    for copy in copies:
        assert (copy / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert not any((root / "cache" / "models").exists() for root in nodes.values())
    # the learner's checkpoints and the adapter store are in storage, not on the driver's disk
    assert any(storage.rglob("checkpoint_*")) and not (out / "checkpoints").exists()
    assert any(storage.rglob("adapter_store/v000001/record.json")) and not (out / "adapter_store").exists()

    # every step's metrics once; the learner group restarted from a checkpoint past step 0
    rows, markers = read_log_and_markers(out / "metrics.jsonl")
    steps = [(r["phase"], r["step"]) for r in rows]
    assert steps == [("sft", s) for s in (1, 2, 3)] + [("grpo", s) for s in range(1, 7)], steps
    assert all(m["event"] == RESUME_EVENT and m["phase"] == "grpo" and m["step"] > 0 for m in markers), markers
    resumed = [r for r in rows if "resumed_from" in r]
    assert len(resumed) == 1 and resumed[0]["phase"] == "grpo" and resumed[0]["resumed_from"] > 0, resumed
    assert resumed[0]["step"] == resumed[0]["resumed_from"] + 1
    # the rollout worker: on node A, then restarted on node B, caught up (the canary checked it there)
    a, b = node_a.node_id, node_b.node_id
    first = next(r for r in rows if r["phase"] == "grpo")
    assert first["canary_nodes"] == {"0": a}
    after = [r for r in rows if r["phase"] == "grpo" and r["step"] >= resumed[0]["step"]]
    assert after[0]["canary_nodes"] == {"0": b}, after  # the new attempt's first publish checks every worker
    assert all(r["canary_gap"] < TOLERANCE["float32"] for r in rows if "canary_gap" in r)
    versions = [r["version"] for r in rows if r["phase"] == "grpo"]
    assert versions == sorted(set(versions)), versions  # each step under a newer adapter, none reused
    (rollout,) = actors["RolloutWorker"]  # one actor, restarted once, last on node B
    assert rollout["NumRestarts"] == 1 and rollout["Address"]["NodeID"] == b, rollout
    # the reward replica was on node A and came back on node B
    replicas = [x for name, xs in actors.items() if "Reward" in name for x in xs]
    assert {x["Address"]["NodeID"] for x in replicas} >= {a, b}, replicas
