"""The pre-flight check of a run's actors against the cluster: every missing resource named in one line,
before any actor starts (a run that asks for GPUs a cluster lacks used to wait forever)."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyray.cluster import ClusterShortfall, Demand, GpuInfo, check_resources, run_demands, shortfalls
from polyray.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def test_the_gpu_preset_asks_for_what_its_plan_says():
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    demands = {d.what: d for d in run_demands(run)}
    assert demands["rollout workers"] == Demand("rollout workers", 2, {"CPU": 4, "GPU": 1})
    assert demands["learner ranks"] == Demand("learner ranks", 4, {"CPU": 4, "GPU": 1})
    assert demands["reward replicas"] == Demand("reward replicas", 1, {"CPU": 1})
    generation = {"model_dir": "m", "num_replicas": 1, "num_cpus": 2, "gpus": 2, "resources": {"worker": 1}}
    assert run_demands(run, generation)[-1] == Demand("generation replicas", 1, {"CPU": 2, "GPU": 2, "worker": 1})


def test_a_cluster_that_fits_has_no_shortfall():
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    nodes = [{"CPU": 16, "GPU": 4, "memory": 1e11}] * 2  # 32 CPU, 8 GPU: 25 CPU, 6 GPU needed
    assert shortfalls(run_demands(run), nodes) == []


def test_every_missing_resource_is_named():
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    short = shortfalls(run_demands(run), [{"CPU": 64}])  # CPUs enough, no GPU at all
    assert short[0] == ("GPU: the run needs 6 at once (rollout workers 2 x 1, learner ranks 4 x 1), the cluster has 0")
    assert "rollout workers: each asks {CPU: 4, GPU: 1} on one node, and no node has that" in short[1]
    assert "learner ranks: each asks {CPU: 4, GPU: 1}" in short[2] and len(short) == 3


def test_enough_in_total_but_not_on_one_node():
    demand = [Demand("learner ranks", 2, {"CPU": 4, "GPU": 1})]
    nodes = [{"CPU": 2, "GPU": 1}] * 4  # 8 CPU, 4 GPU in all, but no node holds a rank
    (short,) = shortfalls(demand, nodes)
    assert (
        short
        == "learner ranks: each asks {CPU: 4, GPU: 1} on one node, and no node has that (4 node(s), the largest {CPU: 2, GPU: 1})"
    )
    custom = [Demand("rollout workers", 1, {"CPU": 1, "worker": 1})]
    assert shortfalls(custom, [{"CPU": 8}])[0].startswith("worker: the run needs 1 at once (rollout workers 1 x 1)")


@pytest.mark.ray
def test_a_local_run_asking_for_a_gpu_is_refused_at_once(ray_cluster):
    """On the test's real cluster (CPUs only): refused in one line, with no wait."""
    import time

    run = load_config(ROOT / "configs/quickstart.yaml", ["learner.use_gpu=true"])
    started = time.monotonic()
    with pytest.raises(ClusterShortfall) as err:
        check_resources(run_demands(run), wait_s=0.0)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith("the cluster cannot hold this run: GPU: the run needs 2 at once (learner ranks 2 x 1)")
    assert "\n" not in message
    check_resources(run_demands(load_config(ROOT / "configs/quickstart.yaml")), wait_s=0.0)  # the CPU run fits


@pytest.mark.ray
def test_a_joined_cluster_is_given_time_to_grow(ray_cluster, monkeypatch):
    import ray

    grown = {"polls": 0}
    real_nodes = ray.nodes

    def nodes():  # an autoscaler adds a GPU node at the third look
        grown["polls"] += 1
        extra = [{"Alive": True, "Resources": {"CPU": 8, "GPU": 1}}] if grown["polls"] >= 3 else []
        return real_nodes() + extra

    monkeypatch.setattr(ray, "nodes", nodes)
    check_resources([Demand("learner ranks", 1, {"CPU": 4, "GPU": 1})], wait_s=30.0, poll_s=0.05)
    assert grown["polls"] == 3
    with pytest.raises(ClusterShortfall):
        check_resources([Demand("learner ranks", 1, {"CPU": 4, "GPU": 2})], wait_s=0.2, poll_s=0.05)


def test_gpu_memory_comes_from_the_cluster_the_smallest_gpu_checked(monkeypatch, tmp_path):
    """The plan checks the smallest GPU the cluster reported (an actor may land on any node); a setting wins."""
    from polyray.cluster import with_cluster_gpu_memory
    from polyray.drivers.preflight import plan_memory
    from polyray.io import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    unset = ["learner.gpu_memory_gib=null", "rollout.gpu_memory_gib=null"]
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml", unset)
    gpus = {"a": GpuInfo("NVIDIA A100-SXM4-80GB", 79.25), "b": GpuInfo("NVIDIA A10G", 22.07)}
    planned, line = with_cluster_gpu_memory(run, gpus)
    assert planned.learner.gpu_memory_gib == planned.rollout.gpu_memory_gib == 22.07
    assert (
        line
        == "GPUs: 2 node(s) with NVIDIA A100-SXM4-80GB (79.2 GiB), NVIDIA A10G (22.1 GiB); the memory plan checks 22.1 GiB a GPU"
    )
    with pytest.raises(ConfigError, match=r"a learner rank needs ~45.8 GiB .* > learner.gpu_memory_gib 22.07"):
        plan_memory(planned, None)
    assert plan_memory(with_cluster_gpu_memory(run, {"a": gpus["a"]})[0], None)  # fits an 80 GB GPU
    chosen = load_config(
        ROOT / "configs/gpu/qwen3_0.6b.yaml", ["learner.gpu_memory_gib=70", "rollout.gpu_memory_gib=70"]
    )
    assert with_cluster_gpu_memory(chosen, gpus) == (chosen, None)
    assert with_cluster_gpu_memory(run, {}) == (run, None)  # no GPU node: nothing to read


@pytest.mark.ray
def test_a_cluster_without_gpus_reports_none(ray_cluster):
    from polyray.cluster import cluster_gpus

    assert cluster_gpus(timeout_s=5.0) == {}


@pytest.mark.ray
def test_an_actor_ray_cannot_place_stops_the_wait_naming_what_it_asks(ray_cluster):
    """A placed actor is waited for past the deadline (its call outlasts it); one Ray has given no worker by the
    deadline (what it asks for is held, or nowhere) is named with the cluster's free resources."""
    import time

    import ray

    from polyray.cluster import wait_for_actors

    @ray.remote(num_cpus=0)
    class Slow:
        def __init__(self, start_s: float = 0.0):
            import time

            time.sleep(start_s)  # a model loading: placed, still being created

        def ready(self, delay: float) -> str:
            import time

            time.sleep(delay)
            return "ok"

    from ray._private import state

    starting = [Slow.remote(2.0)]
    while not state.actors(actor_id=starting[0]._actor_id.hex()).get("Pid"):  # Ray gave it a worker process
        time.sleep(0.05)
    assert state.actors(actor_id=starting[0]._actor_id.hex())["State"] == "PENDING_CREATION"  # its __init__ runs
    assert wait_for_actors(
        [starting[0].ready.remote(0.0)], starting, Demand("rollout workers", 1, {"CPU": 0}), wait_s=0.1, poll_s=0.2
    ) == ["ok"]
    stuck = [Slow.options(resources={"nowhere": 1}).remote()]
    with pytest.raises(ClusterShortfall) as err:
        wait_for_actors(
            [stuck[0].ready.remote(0.0)],
            stuck,
            Demand("rollout workers", 1, {"CPU": 1, "nowhere": 1}),
            wait_s=0.5,
            poll_s=0.2,
        )
    message = str(err.value)
    assert message.startswith(
        "rollout workers [0] not placed after 0.5 s (cluster.resource_wait_s): each asks"
        " {CPU: 1, nowhere: 1} on one node; free now: {CPU: "
    ), message
    assert message.endswith("nowhere: 0}")
    ray.kill(stuck[0])


H100 = GpuInfo("NVIDIA H100 80GB HBM3", 79.2, (9, 0), 13000, "13.0")
READING = {"node-a": H100, "node-b": H100}


def test_a_sweep_reads_the_clusters_gpus_once_and_hands_the_reading_to_its_trials(monkeypatch, tmp_path):
    """Each trial used to probe every GPU node itself, while its siblings' actors filled those GPUs: the
    sweep reads them once, before any trial, and asks the cluster (and its autoscaler) for what its
    concurrent trials hold at once."""
    from ray import tune

    import polyray.cluster as cluster
    import polyray.drivers.preflight as preflight
    import polyray.drivers.warm as warm
    import polyray.models.source as source
    import polyray.reward.service as reward_service
    from polyray.drivers import sweep

    run = load_config(ROOT / "configs/quickstart.yaml", ["rollout.gpus_per_worker=1"])
    calls = {"init": [], "probes": 0}

    def probe(timeout_s: float, required: bool):
        calls["probes"] += 1
        return READING

    class Stop(Exception):
        pass

    def with_parameters(trainable, **kwargs):  # the trials' arguments; nothing is run
        calls["trial"] = kwargs
        raise Stop

    monkeypatch.setattr(cluster, "init_ray", lambda c, cpus, demands=None: calls["init"].append(demands))
    monkeypatch.setattr(cluster, "cluster_gpus", probe)
    monkeypatch.setattr(preflight, "check_inputs", lambda run: [])
    monkeypatch.setattr(source, "prepare_model_dir", lambda model, task: tmp_path)
    monkeypatch.setattr(reward_service, "ensure_reward_service", lambda *a, **k: None)
    monkeypatch.setattr(warm, "start_warm", lambda configs, concurrent: None)
    monkeypatch.setattr(tune, "with_parameters", with_parameters)
    with pytest.raises(Stop):
        sweep.run_trials("s", tmp_path, {}, {"": {}}, sweep.grid_run_dir, [run, run], max_concurrent=2)
    assert calls["probes"] == 1 and calls["trial"]["gpus"] is READING
    # one trial's actors must fit (more at once are Tune's to place), each kind at its largest over the runs
    demands = {d.what: d for d in calls["init"][0]}
    assert demands["rollout workers"] == Demand("rollout workers", 1, {"CPU": 1, "GPU": 1})
    assert demands["learner ranks"].count == run.most_learner_workers
    assert demands["reward replicas"] == run_demands(run)[-1]  # shared by the trials
    assert demands["trial drivers"] == Demand("trial drivers", 1, {"CPU": sweep.TRIAL_CPUS})
    wider = run.model_copy(update={"rollout": run.rollout.model_copy(update={"num_workers": 3})})
    assert {d.what: d for d in sweep.sweep_demands([run, wider])}["rollout workers"].count == 3


def test_an_experiments_later_wave_reuses_the_first_waves_gpu_reading(monkeypatch, tmp_path):
    """The waves of an experiment share engines that hold GPUs: a second probe would wait for them."""
    from ray import tune

    import polyray.cluster as cluster
    import polyray.drivers.preflight as preflight
    import polyray.models.source as source
    import polyray.reward.service as reward_service
    from polyray.drivers import sweep

    run = load_config(ROOT / "configs/quickstart.yaml", ["rollout.gpus_per_worker=1"])
    shared = {"warm": object(), "gpus": READING}
    seen = {}

    class Stop(Exception):
        pass

    def with_parameters(trainable, **kwargs):
        seen.update(kwargs)
        raise Stop

    def probe(timeout_s: float, required: bool):
        raise AssertionError("the second wave probed the GPUs again")

    monkeypatch.setattr(cluster, "init_ray", lambda c, cpus, demands=None: None)
    monkeypatch.setattr(cluster, "cluster_gpus", probe)
    monkeypatch.setattr(preflight, "check_inputs", lambda run: [])
    monkeypatch.setattr(source, "prepare_model_dir", lambda model, task: tmp_path)
    monkeypatch.setattr(reward_service, "ensure_reward_service", lambda *a, **k: None)
    monkeypatch.setattr(tune, "with_parameters", with_parameters)
    with pytest.raises(Stop):
        sweep.run_trials("s", tmp_path, {}, {"": {}}, sweep.grid_run_dir, [run], shared=shared)
    assert seen["gpus"] is READING


def test_a_trial_given_the_sweeps_reading_probes_no_gpu(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import polyray.cluster as cluster
    import polyray.drivers.run as run_driver
    from polyray.drivers.startup import StartupTrace
    from polyray.io import Timer

    def probe(timeout_s: float, required: bool):
        raise AssertionError("a trial probed the GPUs the sweep had read")

    monkeypatch.setattr(run_driver, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(cluster, "cluster_gpus", probe)
    run = load_config(ROOT / "configs/quickstart.yaml", ["rollout.gpus_per_worker=1"])
    state = SimpleNamespace(run=run, gpus=READING, timer=Timer(), trace=StartupTrace(), model_dir=None, verbose=True)
    run_driver.start_ray(state, None)
    assert state.run.rollout.gpu_memory_gib == 79.2
    # without a reading the run reads the cluster itself
    monkeypatch.setattr(cluster, "cluster_gpus", lambda timeout_s, required: {"n": GpuInfo("NVIDIA L4", 22.0)})
    state = SimpleNamespace(run=run, gpus=None, timer=Timer(), trace=StartupTrace(), model_dir=None, verbose=True)
    run_driver.start_ray(state, None)
    assert state.run.rollout.gpu_memory_gib == 22.0


def test_gpus_the_run_cannot_use_are_refused_in_one_line():
    """A node whose driver is older than the CUDA the wheels are built for (it used to surface as the probe's
    Ray task traceback), and bfloat16 below compute capability 8.0 (T4, V100: vLLM fails at engine start)."""
    from polyray.cluster import check_gpus, cuda_number
    from polyray.io import ConfigError

    assert cuda_number("13.0") == 13000 and cuda_number("12.9") == 12090 and cuda_number("12") == 12000
    bf16 = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    assert bf16.model.dtype == "bfloat16"
    check_gpus(bf16, READING)  # an H100 on a current driver
    old = {**READING, "node-c0123456789abc": GpuInfo("unknown", 0.0, None, 12040, "13.0")}
    with pytest.raises(ConfigError) as err:
        check_gpus(bf16, old)
    assert str(err.value) == (
        "GPU node node-c012345: its NVIDIA driver runs CUDA 12.4 at most, and this install's PyTorch and vLLM"
        " are built for CUDA 13.0: update the node's driver (CUDA 13 needs 580 or later), or install wheels"
        " built for the CUDA its driver runs (docs/cluster.md)"
    )
    # a driver runs every runtime of its CUDA major version
    check_gpus(bf16, {"node-d": GpuInfo("NVIDIA H100", 79.2, (9, 0), 13000, "13.2")})
    t4 = {**READING, "node-t4": GpuInfo("Tesla T4", 14.6, (7, 5), 13000, "13.0")}
    with pytest.raises(ConfigError, match=r"^model.dtype: bfloat16 needs a GPU of compute capability 8.0") as err:
        check_gpus(bf16, t4)
    assert "node-t4's Tesla T4 is 7.5: set model.dtype to float32" in str(err.value)
    fp32 = bf16.model_copy(update={"model": bf16.model.model_copy(update={"dtype": "float32"})})
    check_gpus(fp32, t4)
    # float32 learners beside bfloat16 engines on GPUs: the engines' setting is named
    bf16_engines = fp32.model_copy(update={"rollout": fp32.rollout.model_copy(update={"dtype": "bfloat16"})})
    with pytest.raises(ConfigError, match=r"^rollout.dtype: bfloat16 needs .* set rollout.dtype to float32"):
        check_gpus(bf16_engines, t4)
    check_gpus(bf16, {"node-a100": GpuInfo("NVIDIA A100", 79.2, (8, 0), 13000, "13.0")})


def test_the_probe_reads_the_driver_before_it_touches_the_gpu(monkeypatch):
    """An old driver fails PyTorch's first CUDA call: the probe reports it instead (this machine has no GPU,
    so touching the device would raise here)."""
    import torch

    import polyray.cluster as cluster

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cluster, "driver_cuda_version", lambda: 12040)
    assert cluster.local_gpu() == GpuInfo("unknown", 0.0, None, 12040, "13.0")
    monkeypatch.setattr(cluster, "driver_cuda_version", lambda: 13000)
    with pytest.raises((RuntimeError, AssertionError)):  # a current driver: the device is read (none here)
        cluster.local_gpu()


def test_a_run_on_gpus_it_cannot_use_stops_before_any_actor(monkeypatch):
    from types import SimpleNamespace

    import polyray.cluster as cluster
    import polyray.drivers.run as run_driver
    from polyray.drivers.startup import StartupTrace
    from polyray.io import ConfigError, Timer

    monkeypatch.setattr(run_driver, "init_ray", lambda *a, **k: None)
    # memory set in the config: the GPUs are still read, for their kind and driver
    run = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml", ["learner.gpu_memory_gib=80", "rollout.gpu_memory_gib=80"])
    seen = {}

    def probe(timeout_s: float, required: bool):
        seen["required"] = required
        return {"node-v100": GpuInfo("Tesla V100-SXM2-32GB", 31.7, (7, 0), 13000, "13.0")}

    monkeypatch.setattr(cluster, "cluster_gpus", probe)
    state = SimpleNamespace(run=run, gpus=None, timer=Timer(), trace=StartupTrace(), model_dir=None, verbose=True)
    with pytest.raises(ConfigError, match="^model.dtype: bfloat16 needs"):
        run_driver.start_ray(state, None)
    assert seen == {"required": False}  # busy GPUs would be a warning: the config sizes memory itself
