"""Joining or starting the Ray cluster a driver runs on."""

from __future__ import annotations

import os

from polyray.config import ClusterConfig, RunConfig


def init_ray(cluster: ClusterConfig, needed_cpus: float, resources: dict[str, float] | None = None) -> None:
    """Join ``cluster.address`` (or $RAY_ADDRESS), else start a local cluster; no-op inside a Ray task."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cluster.address, log_to_driver=cluster.worker_logs)
        have = ray.cluster_resources().get("CPU", 0.0)
        if have < needed_cpus:  # an autoscaling cluster may grow; a fixed one would wait forever
            from polyray.io import warn

            warn(f"the cluster has {have:g} CPUs, this run asks for {needed_cpus:g} at once (rollout workers,"
                 " learner ranks, services): it waits until the cluster grows")  # fmt: skip
        return
    # Ray Train starts a preemption watcher with every worker group, to see nodes drained (spot
    # instances): a local cluster is this one node, which nothing drains without the run going with it.
    # One process a phase less (docs/benchmarks.md, "Where a run's fixed time goes"); a user's setting stays.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    num_cpus = cluster.num_cpus or max(int(needed_cpus + 0.999), os.cpu_count() or 1)
    context = ray.init(
        num_cpus=num_cpus, resources=resources, include_dashboard=cluster.dashboard, log_to_driver=cluster.worker_logs,
        _metrics_export_port=cluster.metrics_export_port,
    )
    if cluster.dashboard and context.dashboard_url:
        from polyray.io import console

        console.print(f"Ray dashboard: http://{context.dashboard_url}{dashboard_sign_in()}")


def dashboard_sign_in() -> str:
    """How to sign in to the dashboard of a local cluster with Ray's token auth on (else "")."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return ""
    return "  (sign in with the token `ray get-auth-token` prints)"


def needed_cpus(run: RunConfig) -> float:
    """Ray CPUs a run's actors reserve at once: rollout workers, learner ranks, reward replicas."""
    reward = run.reward.service_cpus()
    return (
        run.rollout.num_workers * run.rollout.cpus_per_worker + run.most_learner_workers * run.learner.cpus_per_worker
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
