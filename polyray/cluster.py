"""Joining or starting the Ray cluster a driver runs on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from polyray.config import ClusterConfig, RolloutConfig, RunConfig
from polyray.io import ConfigError


@dataclass(frozen=True)
class Demand:
    """``count`` actors of one kind (``what``), each asking Ray for ``bundle`` on one node."""

    what: str
    count: int
    bundle: dict[str, float]


class ClusterShortfall(ConfigError):
    """The cluster cannot hold what a run's actors ask for at once (a user's error: the config or the cluster)."""


def init_ray(
    cluster: ClusterConfig,
    needed_cpus: float,
    resources: dict[str, float] | None = None,
    demands: list[Demand] | None = None,
) -> None:
    """Join ``cluster.address`` (or $RAY_ADDRESS), else start a local cluster; no-op inside a Ray task.
    ``demands``: the actors the run starts at once, checked against the cluster before any starts
    (:func:`check_resources`)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cluster.address, log_to_driver=cluster.worker_logs)
        if demands:
            request_cluster(demands)
            try:
                check_resources(demands, cluster.resource_wait_s)
            finally:
                # the nodes are there once the check passes, and the run's actors keep them busy from
                # here on: a request left in force (a driver SIGKILLed, or stopped by `ray job stop`)
                # would hold them after the run
                release_cluster()
        else:
            have = ray.cluster_resources().get("CPU", 0.0)
            # an autoscaling cluster may grow; a fixed one would wait forever
            if have < needed_cpus:
                from polyray.io import warn

                warn(
                    f"the cluster has {have:g} CPUs, this run asks for {needed_cpus:g} at once (rollout workers,"
                    " learner ranks, services): it waits until the cluster grows"
                )
        return
    # Ray Train starts a preemption watcher with every worker group, to see nodes drained (spot
    # instances): a local cluster is this one node, which nothing drains without the run going with it.
    # One process a phase less (docs/benchmarks-notes.md, "Fixed time: processes a fit starts"); a user's setting stays.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    num_cpus = cluster.num_cpus or max(int(needed_cpus + 0.999), os.cpu_count() or 1)
    settings = dict(
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=cluster.dashboard,
        log_to_driver=cluster.worker_logs,
        _metrics_export_port=cluster.metrics_export_port,
    )
    context = start_local_ray(settings)
    if demands:
        try:
            # nothing adds nodes to a local cluster
            check_resources(demands, 0.0)
        except ClusterShortfall:
            ray.shutdown()
            raise
    if cluster.dashboard and context.dashboard_url:
        from polyray.io import console

        console.print(f"Ray dashboard: http://{context.dashboard_url}{dashboard_sign_in()}")


# Ray's words when a new node does not register with its GCS within its window
_NODE_START_TIMEOUT = "timed out during startup"


def start_local_ray(settings: dict, attempts: int = 2):
    """``ray.init(**settings)`` of a local cluster, started again when its node never registers: the
    raylet waits a fixed 15 s (no setting) for its dashboard agent, a Python process, to write its ports,
    and aborts when a machine whose cores are all busy (a test suite's other runs, a build) makes the
    agent's imports slower; a second start finds them in the page cache. What the missed start left
    running (GCS, agents: this process's new children) is stopped first."""
    import psutil
    import ray

    from polyray.io import warn

    for attempt in range(1, attempts + 1):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            return ray.init(**settings)
        except Exception as exc:
            if _NODE_START_TIMEOUT not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            _stop_new_children(before)
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            warn(f"Ray's local node did not register in time (load average {load}): starting it again")
    raise AssertionError("unreachable")


def _stop_new_children(before: set[int]) -> None:
    import psutil

    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)


# a request of this process is in force (request_cluster)
_requested = False


def request_cluster(demands: list[Demand]) -> None:
    """Ask the cluster's autoscaler for every bundle of ``demands`` at once. Ray adds nodes only for queued
    work or such a request, and a run checks the cluster before it starts any actor, so without it an
    autoscaling cluster never grows. The request is the cluster's one (a later one replaces it), in force
    until :func:`release_cluster` (at the latest when this process exits); a cluster without an autoscaler
    ignores it."""
    import atexit

    from ray.autoscaler.sdk import request_resources

    global _requested
    request_resources(bundles=[dict(d.bundle) for d in demands for _ in range(d.count)])
    if not _requested:
        # before Ray's own exit hook (registered when ray was imported, so run after this one)
        atexit.register(release_cluster)
    _requested = True


def release_cluster() -> None:
    """Withdraw :func:`request_cluster`'s request, so the autoscaler may take idle nodes back; a no-op when
    this process has none in force or Ray is gone."""
    global _requested
    if not _requested:
        return
    _requested = False
    import ray

    if not ray.is_initialized():
        return
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=[])
    except Exception as exc:  # noqa: BLE001 - a lost head: its autoscaler went with it
        from polyray.io import warn

        warn(f"withdrawing the run's request to the autoscaler: {exc!r}")


def dashboard_sign_in() -> str:
    """How to sign in to the dashboard of a local cluster with Ray's token auth on (else "")."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return ""
    return "  (sign in with the token `ray get-auth-token` prints)"


def run_demands(run: RunConfig, generation: dict | None = None) -> list[Demand]:
    """The actors ``run`` holds at once (as :func:`needed_cpus` counts them), with the generation service's
    replicas when ``generation`` (its args) is given; kinds that ask for nothing are left out."""
    extra = run.cluster.worker_resources
    lr = run.learner
    demands = [
        rollout_demand(run.rollout, extra),
        Demand(
            "learner ranks", run.most_learner_workers, {"CPU": lr.cpus_per_worker, "GPU": float(lr.use_gpu), **extra}
        ),
    ]
    if run.reward.endpoint:
        demands.append(
            Demand(
                "reward replicas", 2 if run.reward.http_port is not None else 1, {"CPU": run.reward.num_cpus, **extra}
            )
        )
    if generation is not None:
        from polyray.config.services import GenerationServiceConfig

        g = GenerationServiceConfig.model_validate(generation)
        demands.append(Demand("generation replicas", g.num_replicas, {"CPU": g.num_cpus, "GPU": g.gpus, **g.resources}))
    return [Demand(d.what, d.count, {k: v for k, v in d.bundle.items() if v}) for d in demands if d.count]


def rollout_demand(rollout: RolloutConfig, extra: dict[str, float]) -> Demand:
    """The rollout workers of ``rollout`` as a :class:`Demand`, with the custom resources ``extra`` each asks."""
    bundle = {"CPU": rollout.cpus_per_worker, "GPU": rollout.gpus_per_worker, **extra}
    return Demand("rollout workers", rollout.num_workers, {k: v for k, v in bundle.items() if v})


def shortfalls(demands: list[Demand], nodes: list[dict[str, float]]) -> list[str]:
    """What the cluster of ``nodes`` (each node's total resources) lacks for ``demands`` held at once: a
    resource whose total falls short, and an actor whose bundle no single node holds. Empty: it fits."""
    short = []
    needed: dict[str, float] = {}
    for d in demands:
        for key, amount in d.bundle.items():
            needed[key] = needed.get(key, 0.0) + d.count * amount
    for key, amount in needed.items():
        have = sum(node.get(key, 0.0) for node in nodes)
        if have + 1e-9 < amount:
            parts = ", ".join(f"{d.what} {d.count} x {d.bundle[key]:g}" for d in demands if d.bundle.get(key))
            short.append(f"{key}: the run needs {amount:g} at once ({parts}), the cluster has {have:g}")
    for d in demands:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in d.bundle.items()) for node in nodes):
            short.append(
                f"{d.what}: each asks {format_bundle(d.bundle)} on one node, and no node has that"
                f" ({len(nodes)} node(s), the largest {format_bundle(_largest(nodes, d.bundle))})"
            )
    return short


def check_resources(demands: list[Demand], wait_s: float, poll_s: float = 5.0) -> None:
    """Wait up to ``wait_s`` for the cluster to hold ``demands`` (an autoscaler may add nodes); then raise
    :class:`ClusterShortfall` naming every missing resource in one line."""
    import ray

    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        short = shortfalls(demands, nodes)
        if not short:
            return
        if time.monotonic() >= deadline:
            raise ClusterShortfall("the cluster cannot hold this run: " + "; ".join(short))
        if not warned:
            from polyray.io import warn

            warn(f"waiting up to {wait_s:g} s (cluster.resource_wait_s) for the cluster to grow: {'; '.join(short)}")
            warned = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def wait_for_actors(refs: list, actors: list, demand: Demand, wait_s: float, poll_s: float = 2.0) -> list:
    """``ray.get(refs)`` (each a call on one of ``actors``, the ``demand`` kind), raising
    :class:`ClusterShortfall` once ``wait_s`` has passed with an actor Ray has still not given a worker
    process: other work holds what it asks for. One placed and starting (a model loading) is waited for."""
    import ray

    deadline = time.monotonic() + wait_s
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        if pending and time.monotonic() >= deadline:
            unplaced = [i for i, actor in enumerate(actors) if _unplaced(actor)]
            if unplaced:
                raise ClusterShortfall(
                    f"{demand.what} {unplaced} not placed after {wait_s:g} s (cluster.resource_wait_s): each asks"
                    f" {format_bundle(demand.bundle)} on one node; free now: {free_resources(demand.bundle)}"
                )
            # all placed: what is left is their start
            deadline = float("inf")
    return ray.get(refs)


def run_serve_apps(
    apps: list[tuple[object, str, str | None]], wait_s: float, poll_s: float = 0.5, wait: bool = True
) -> list[str]:
    """Deploy each (application, name, route prefix) on the connected cluster's Serve and (``wait``) wait for
    all to run (:func:`wait_serve_apps`); returns their names (``wait`` False: to wait on later)."""
    from ray import serve
    from ray.serve.api import RunTarget

    serve.run_many(
        [RunTarget(target=app, name=name, route_prefix=prefix) for app, name, prefix in apps],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    names = [name for _, name, _ in apps]
    if wait:
        wait_serve_apps(names, wait_s, poll_s)
    return names


def wait_serve_apps(names: list[str], wait_s: float, poll_s: float = 0.5) -> None:
    """Wait for the Serve apps ``names`` to run: :class:`ClusterShortfall` once ``wait_s`` has passed with an app
    not running (naming what its deployments report: the replicas Ray has not placed and what each asks),
    ``ConfigError`` for an app that failed."""
    from ray import serve

    deadline = time.monotonic() + wait_s
    while True:
        status = serve.status().applications
        waiting = [name for name in names if name not in status or status[name].status != "RUNNING"]
        for name in waiting:
            if name in status and status[name].status == "DEPLOY_FAILED":
                raise ConfigError(f"Serve app {name!r} failed to deploy: {_serve_messages(status[name])}")
        if not waiting:
            return
        if time.monotonic() >= deadline:
            told = [
                f"{name!r} ({_serve_messages(status[name]) if name in status else 'not created'})" for name in waiting
            ]
            raise ClusterShortfall(
                f"Serve app {', '.join(told)} not running after {wait_s:g} s (cluster.resource_wait_s)"
            )
        time.sleep(poll_s)


def _serve_messages(app) -> str:
    """An app's status message and each of its deployments' that is not healthy (Serve's own words: replicas
    not scheduled and the resources each asks, a constructor's error)."""
    parts = [app.message] if app.message else []
    parts += [f"{name}: {d.message or d.status}" for name, d in app.deployments.items() if d.status != "HEALTHY"]
    return "; ".join(_one_line(part) for part in parts) or str(app.status)


def _one_line(message: str) -> str:
    """A message's first line, and its last where it goes on (a replica's traceback: the error it ends with)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return " ... ".join([lines[0], lines[-1]] if len(lines) > 1 else lines)


def _unplaced(actor) -> bool:
    """Whether Ray has not given the actor a worker process yet: still pending creation with no pid (one
    placed and starting has its worker's pid). Unknown counts as placed: it is a diagnosis only."""
    from ray._private import state

    try:
        info = state.actors(actor_id=actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - unknown is not an error
        return False
    return info.get("State") == "PENDING_CREATION" and not info.get("Pid")


def free_resources(bundle: dict[str, float]) -> str:
    """What the cluster has free now of each resource ``bundle`` names, as :func:`format_bundle` writes it."""
    import ray

    free = ray.available_resources()
    return format_bundle({k: free.get(k, 0.0) for k in bundle})


class GpuInfo(NamedTuple):
    """What a node's probe reads of its first GPU (:func:`local_gpu`)."""

    name: str
    # total memory
    gib: float
    # CUDA compute capability (8, 0): Ampere
    capability: tuple[int, int] | None = None
    # the newest CUDA the node's driver runs, as CUDA writes it (12040: 12.4)
    driver_cuda: int | None = None
    # the CUDA this install's PyTorch was built for ("13.0")
    built_cuda: str | None = None


def cuda_number(version: str) -> int:
    """``"13.0"`` as CUDA's own version numbers write it (13000)."""
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major) * 1000 + int(minor) * 10


def driver_runs(driver: int, built: str) -> bool:
    """Whether a driver that runs CUDA ``driver`` (12040) runs wheels built for CUDA ``built`` ("12.8"): a
    driver runs every runtime of its CUDA major version (CUDA's minor version compatibility)."""
    return driver // 1000 >= cuda_number(built) // 1000


def driver_cuda_version() -> int | None:
    """The newest CUDA version this node's NVIDIA driver runs (``cuDriverGetVersion``), None without a driver.
    Read through the driver library itself: an old driver fails PyTorch's first CUDA call with a traceback."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def local_gpu() -> GpuInfo:
    """This process's first CUDA device, and whether the node's driver runs this install's CUDA build (when it
    does not, the device is not touched: name and memory are left unknown)."""
    import torch

    built, driver = torch.version.cuda, driver_cuda_version()
    if built and driver is not None and not driver_runs(driver, built):
        return GpuInfo("unknown", 0.0, driver_cuda=driver, built_cuda=built)
    props = torch.cuda.get_device_properties(0)
    gib = props.total_memory / 2**30
    return GpuInfo(props.name, gib, capability=(props.major, props.minor), driver_cuda=driver, built_cuda=built)


def cluster_gpus(timeout_s: float, required: bool = True) -> dict[str, GpuInfo]:
    """Each live GPU node's GPU, read on it by a one-GPU task (Ray's resources count GPUs, not their memory nor
    their kind): node id -> :class:`GpuInfo`. Empty for a cluster without GPUs. No GPU free within
    ``timeout_s``: :class:`ClusterShortfall` where ``required``, else a warning and nothing read."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0.0) >= 1]
    read = ray.remote(num_gpus=1, num_cpus=0)(local_gpu)
    refs = [
        read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes
    ]
    try:
        return dict(zip(nodes, ray.get(refs, timeout=timeout_s)))
    except ray.exceptions.GetTimeoutError:
        for ref in refs:
            ray.cancel(ref)
        if not required:
            from polyray.io import warn

            warn(f"the cluster's GPUs were all busy for {timeout_s:g} s: their kind and driver are not checked")
            return {}
        raise ClusterShortfall(
            f"reading the cluster's GPU memory: no GPU on {len(nodes)} GPU node(s) was free within"
            f" {timeout_s:g} s (cluster.resource_wait_s); or set learner.gpu_memory_gib and"
            " rollout.gpu_memory_gib"
        ) from None


def check_gpus(run: RunConfig, gpus: dict[str, GpuInfo]) -> None:
    """Refuse, in one line, GPUs the run cannot use: a node whose driver is older than the CUDA this install
    was built for, and bfloat16 (``model.dtype`` on GPU learners, the engines' ``rollout.dtype`` on GPU rollout
    workers) on a GPU below compute capability 8.0 (T4, V100)."""
    for node, gpu in sorted(gpus.items()):
        if gpu.built_cuda and gpu.driver_cuda is not None and not driver_runs(gpu.driver_cuda, gpu.built_cuda):
            have = f"{gpu.driver_cuda // 1000}.{gpu.driver_cuda % 1000 // 10}"
            raise ConfigError(
                f"GPU node {node[:12]}: its NVIDIA driver runs CUDA {have} at most, and this install's PyTorch and"
                f" vLLM are built for CUDA {gpu.built_cuda}: update the node's driver (CUDA 13 needs 580 or"
                " later), or install wheels built for the CUDA its driver runs (docs/cluster.md)"
            )
    if run.learner.use_gpu and run.model.dtype == "bfloat16":
        field = "model.dtype"
    elif run.rollout.gpus_per_worker and run.engine_dtype == "bfloat16":
        field = "rollout.dtype" if run.rollout.dtype == "bfloat16" else "model.dtype"
    else:
        return
    for node, gpu in sorted(gpus.items()):
        if gpu.capability is not None and gpu.capability < (8, 0):
            raise ConfigError(
                f"{field}: bfloat16 needs a GPU of compute capability 8.0 or later (Ampere); node {node[:12]}'s"
                f" {gpu.name} is {gpu.capability[0]}.{gpu.capability[1]}: set {field} to float32, or run on"
                " newer GPUs"
            )


def uses_gpus(run: RunConfig) -> bool:
    return bool(run.learner.use_gpu or run.rollout.gpus_per_worker)


def reads_gpu_memory(run: RunConfig) -> bool:
    """Whether ``run`` plans memory on GPUs its config does not size: the cluster's must be read."""
    return bool(
        (run.learner.use_gpu and run.learner.gpu_memory_gib is None)
        or (run.rollout.gpus_per_worker and run.rollout.gpu_memory_gib is None)
    )


def with_cluster_gpu_memory(run: RunConfig, gpus: dict[str, GpuInfo]) -> tuple[RunConfig, str | None]:
    """``run`` with the GPU memory its memory plan checks set from the cluster's ``gpus`` (the smallest: an actor
    may land on any node) where the run uses GPUs and leaves it unset; and a line saying so (None: nothing set)."""
    planned = with_gpu_memory(run, min(g.gib for g in gpus.values()), only_unset=True) if gpus else run
    if planned is run:
        return run, None
    gib = min(g.gib for g in gpus.values())
    kinds = sorted({f"{g.name} ({g.gib:.1f} GiB)" for g in gpus.values()})
    return planned, f"GPUs: {len(gpus)} node(s) with {', '.join(kinds)}; the memory plan checks {gib:.1f} GiB a GPU"


def with_gpu_memory(run: RunConfig, gib: float, only_unset: bool = False) -> RunConfig:
    """``run`` planned for GPUs of ``gib`` GiB: ``gpu_memory_gib`` of the learner and the rollout workers where
    they use GPUs (``only_unset``: where the config leaves it unset); ``run`` itself when nothing changes."""
    update = {}
    if run.learner.use_gpu and not (only_unset and run.learner.gpu_memory_gib is not None):
        update["learner"] = run.learner.model_copy(update={"gpu_memory_gib": round(gib, 2)})
    if run.rollout.gpus_per_worker and not (only_unset and run.rollout.gpu_memory_gib is not None):
        update["rollout"] = run.rollout.model_copy(update={"gpu_memory_gib": round(gib, 2)})
    return run.model_copy(update=update) if update else run


def format_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _largest(nodes: list[dict[str, float]], bundle: dict[str, float]) -> dict[str, float]:
    """The node that holds the most of ``bundle``'s resources, as amounts of them (none: zeros)."""
    best = max(nodes, key=lambda n: [n.get(k, 0.0) for k in bundle], default={})
    return {k: best.get(k, 0.0) for k in bundle}


def needed_cpus(run: RunConfig) -> float:
    """Ray CPUs a run's actors reserve at once: rollout workers, learner ranks, reward replicas."""
    reward = run.reward.service_cpus()
    return (
        run.rollout.num_workers * run.rollout.cpus_per_worker
        + run.most_learner_workers * run.learner.cpus_per_worker
        + reward
    )


def on_this_node():
    """A scheduling strategy that keeps a small actor on the caller's node (the driver's): the step-log
    actor the driver reads then lives as long as the driver, whichever worker node is lost. Hard:
    Ray's soft node affinity was seen to place such an actor on a worker node (with or without
    spilling). Like ``"DEFAULT"``, it keeps the actor out of a Tune trial's placement group."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
