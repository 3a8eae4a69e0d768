"""The driver's side of the learner: one Ray Train ``TorchTrainer`` fit per phase.

:func:`run_phase` starts the phase's ranks (each runs :func:`polyray.learner.loop.train_loop_per_worker`
with a :class:`~polyray.learner.job.LearnerJob`), follows rank 0's step rows for a progress bar, and
returns the phase's adapter. A rank that dies restarts the group from the latest checkpoint, up to
``learner.max_failures`` times; ranks the cluster cannot place end it with a
:class:`~polyray.cluster.ClusterShortfall` after ``cluster.resource_wait_s`` per try.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyray.config import RunConfig
from polyray.learner.checkpoints import recover_run_dir
from polyray.learner.job import LearnerJob
from polyray.learner.logs import StepLogs
from polyray.learner.loop import train_loop_per_worker

TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 0.5
# (Ray Train hands it to its controller too)
TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def run_phase(
    run: RunConfig,
    phase_index: int,
    model_dir,
    output_dir: Path,
    pool,
    start_version: int,
    init_adapter,
    on_progress=None,
    dynamics=None,
    logs: StepLogs | None = None,
    group=None,
) -> dict[str, Any]:
    """Fit one phase; returns {"adapter_dir", "version", "metrics"}. With ``group`` (a
    :class:`~polyray.learner.group.LearnerGroup`, ``learner.keep_ranks``) on its kept ranks, else with a
    ``TorchTrainer``.

    ``dynamics``: a picklable ``probe(step, version) -> row`` with ``probe.due(step, last)`` that
    rank 0 calls after publishing, and appends the row to ``dynamics.jsonl`` (the driver passes
    :class:`polyray.eval.dynamics.DynamicsProbe`).

    Rank 0's step logs reach ``output_dir`` through an actor on this process's node
    (:mod:`polyray.learner.logs`), so the run directory need not be on a disk the ranks share:
    ``logs`` when the caller holds one for the whole run (``StepLogs.on_driver_node(output_dir)``;
    it stays open), else one made for this phase. ``on_progress({"step", "total", "metrics"})``
    is called about once a second with the phase's latest step row.

    ``model_dir`` and ``init_adapter``: paths, or with ``cluster.storage`` references into it
    (:class:`~polyray.storage.StoredDir` or its string form) that each rank copies to its own node.
    With storage, Ray Train's checkpoints and the final adapter are there too (the adapter is copied
    into ``output_dir/adapters/<phase>`` afterwards) and no rank is given ``output_dir``.
    """
    from polyray.storage import RunStorage

    phase = run.phases[phase_index]
    shared = RunStorage.of(run.cluster.storage, run.name, output_dir)
    _set_train_env(run)
    # rank 0's rows, which this process also polls for progress: on its node, so losing a worker node
    # does not lose them. One actor for the whole run when the caller holds it (a process a phase less).
    own_logs = logs is None
    logs = StepLogs.on_driver_node(output_dir) if own_logs else logs
    storage_path = shared.location("checkpoints") if shared else str((output_dir / "checkpoints").resolve())
    # Ray Train's record of the checkpoints, if unreadable (kept ranks find their newest whole one themselves)
    recovered = recover_run_dir(storage_path, phase.name) if group is None else None
    job = LearnerJob.for_phase(
        run,
        phase_index,
        model_dir=str(model_dir) if isinstance(model_dir, Path) else model_dir,
        # (None: the final adapter goes to storage)
        output_dir=str(output_dir) if shared is None else None,
        pool=pool,
        start_version=start_version,
        init_adapter=init_adapter,
        logs=logs,
        dynamics=dynamics,
        storage=shared,
        recovered_checkpoint=recovered.location if recovered else None,
    )
    try:
        fit = _trainer(run, job, storage_path).fit if group is None else lambda: group.fit(job, storage_path)
        result = _fit_with_progress(fit, lambda: logs.latest(phase.name) or {}, phase.steps, on_progress)
    except BaseException as exc:
        raise _unplaced_learner(exc, run, phase_index) or exc
    finally:
        if own_logs:
            logs.close()
    adapter_dir = output_dir / "adapters" / phase.name
    # rank 0 put it into storage, from whichever node it ran on
    if shared is not None:
        shared.get_dir(adapter_dir, "adapters", phase.name)
    version = json.loads((adapter_dir / "polyray_version.json").read_text())["version"]
    return {"adapter_dir": str(adapter_dir), "version": version, "metrics": result.metrics}


def _set_train_env(run: RunConfig) -> None:
    """Ray Train's settings that only its environment sets; it hands them from this process to its controller."""
    # the controller sees a finished phase only at a poll: a shorter poll than its default ends each phase
    # sooner (docs/benchmarks.md); a user's own setting stays
    os.environ.setdefault(TRAIN_POLL_ENV, str(TRAIN_POLL_S))
    # it waits this long for the ranks' placement group, then retries its start (a controller failure,
    # counted apart from the ranks' own): bounded by the run's resource wait and failure budget
    os.environ[TRAIN_START_TIMEOUT_ENV] = str(run.cluster.resource_wait_s)


def _trainer(run: RunConfig, job: LearnerJob, storage_path: str):
    """The phase's ``TorchTrainer``: one rank per learner worker, restarted from the latest checkpoint
    after a failure, up to ``learner.max_failures`` times."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if run.learner.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=run.learner.use_gpu,
            resources_per_worker={"CPU": run.learner.cpus_per_worker, **run.cluster.worker_resources},
        ),
        run_config=TrainRunConfig(
            name=job.phase.name,
            storage_path=storage_path,
            failure_config=FailureConfig(
                max_failures=run.learner.max_failures, controller_failure_limit=run.learner.max_failures
            ),
        ),
    )


def _fit_with_progress(fit: Callable[[], Any], latest_row: Callable[[], dict[str, Any]], total: int, on_progress=None):
    """``fit()`` in a thread, calling ``on_progress({"step", "total", "metrics"})`` about once a
    second with ``latest_row()`` until it returns; its error is raised here, in the caller's thread."""
    import threading

    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fit()
        # surfaced in the caller's thread
        except BaseException as exc:
            box["error"] = exc

    def progress() -> dict[str, Any]:
        row = latest_row()
        return {"step": row.get("step", 0), "total": total, "metrics": row}

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=1.0)
        if on_progress is not None:
            on_progress(progress())
    if on_progress is not None:
        on_progress(progress())
    if "error" in box:
        raise box["error"]
    return box["result"]


def _unplaced_learner(error: BaseException, run: RunConfig, phase_index: int) -> Exception | None:
    """A :class:`~polyray.cluster.ClusterShortfall` naming the learner's ranks when Ray Train gave up placing
    them (its start timed out on every try), else None."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from polyray.cluster import ClusterShortfall, format_bundle, free_resources

    if not isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None
    bundle = {
        "CPU": run.learner.cpus_per_worker,
        **({"GPU": 1.0} if run.learner.use_gpu else {}),
        **run.cluster.worker_resources,
    }
    return ClusterShortfall(
        f"learner: {run.phase_workers(phase_index)} rank(s) of phase {run.phases[phase_index].name!r} not placed in"
        f" {run.learner.max_failures + 1} start(s) of {run.cluster.resource_wait_s:g} s each (learner.max_failures + 1,"
        f" cluster.resource_wait_s): each asks {format_bundle(bundle)} on one node; free now: {free_resources(bundle)}"
    )
