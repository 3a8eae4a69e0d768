"""The learner's ranks kept warm across a run's phases: one Ray actor per rank (``learner.keep_ranks``).

A Ray Train fit starts a controller, helper actors and fresh rank processes for every phase, and each
rank imports torch, transformers and peft again before its first step. A :class:`LearnerGroup` starts
its ranks once, as plain Ray actors that import those on start; each phase then forms a
``torch.distributed`` group among the first ``world`` ranks (gloo on CPU, NCCL on GPU), runs the same
worker function as under Ray Train (:func:`polyray.learner.loop.run_worker`) through a
:class:`KeptSession`, and tears the group down. A phase that needs fewer ranks than the group holds
leaves the others idle (the run's plan holds CPUs for its largest phase); one that needs more starts them.
Between the trials of a sweep a :class:`RankKeeper` holds them.

Checkpoints are polyray's own: rank 0 puts each one into the phase's directory of the run's checkpoint
storage as ``checkpoint_<time>`` (Ray Train's layout, so either learner resumes the other's), sealed by
its manifest (:mod:`polyray.learner.checkpoints`); an attempt starts from the newest whole one. A rank
that fails or dies ends the attempt: every rank of the group is stopped (a peer may be stuck in a
collective), fresh ones are started, and the phase resumes from its newest whole checkpoint, up to
``learner.max_failures`` times, as Ray Train's ``FailureConfig`` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from polyray.config import RunConfig
from polyray.learner.job import LearnerJob

# Ray Train's checkpoint directory names, so both sort by time alike
CHECKPOINT_TIME = "%Y-%m-%d_%H-%M-%S.%f"


class KeptSession:
    """:class:`~polyray.learner.loop.TrainSession` of a rank of a :class:`LearnerGroup`: rank and world from
    the group, checkpoints into ``storage_path/<phase>`` (a path or a ``pyarrow.fs`` URI), the latest one
    found by the driver before the attempt (``resume``: its location, or None for a fresh start)."""

    def __init__(
        self, rank: int, world: int, storage_path: str, phase: str, *, resume: str | None, device_index: int | None
    ):
        self.rank, self.world = rank, world
        self.storage_path, self.phase, self.resume = storage_path, phase, resume
        # the rank's CUDA device (rank_device), None on CPU
        self.device_index = device_index
        self.last_metrics: dict[str, Any] = {}

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        from polyray.storage import Storage

        if self.resume is None:
            yield None
            return
        storage = Storage(self.resume)
        # read in place
        if storage.local:
            yield storage.base
            return
        # removed once the set-up read it
        with tempfile.TemporaryDirectory(prefix="polyray-resume-") as tmp:
            whole = Storage(self.resume.rsplit("/", 1)[0])
            whole.get_dir(whole.ref(self.resume.rsplit("/", 1)[1]), tmp)
            yield tmp

    def prepare_model(self, model):
        """As Ray Train's ``prepare_model``: on the rank's device, wrapped in DDP only when there are peers."""
        import torch

        from polyray.learner.loop import ddp_options

        gpu = self.device_index is not None
        device = torch.device("cuda", self.device_index) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        model = model.to(device)
        if self.world == 1:
            return model
        ids = {"device_ids": [device], "output_device": device} if gpu else {}
        return torch.nn.parallel.DistributedDataParallel(model, **ids, **ddp_options())

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        from polyray.storage import Storage

        self.last_metrics = dict(metrics)
        if checkpoint_dir is None:
            return
        # one clock read, local time as Ray Train's
        stamp = datetime.datetime.now().strftime(CHECKPOINT_TIME)
        Storage(self.storage_path).put_dir(checkpoint_dir, f"{self.phase}/checkpoint_{stamp}")

    def telemetry(self, run: str, phase: str):
        from polyray.learner.telemetry import LearnerTelemetry

        return LearnerTelemetry(run, phase)


class LearnerRank:
    """One kept learner process (a Ray actor): the learner's imports once, then any number of phase attempts."""

    def __init__(self, threads: int):
        init_started = time.time()
        from polyray.imports import paused_gc

        with paused_gc():
            import torch

            torch.set_num_threads(threads)
            import polyray.learner.loop  # noqa: F401
            from polyray.learner.lora import import_model_libraries
            from polyray.telemetry import startup_marks

            # once here, not at every phase's start
            import_model_libraries()
        self._startup = startup_marks(init_started)

    def startup(self) -> dict[str, float]:
        """When this rank's process and constructor started, and when it was ready (the run's start-up trace)."""
        return self._startup

    def rendezvous(self) -> str:
        """``tcp://<this node>:<free port>``, where the phase's process group meets (called on rank 0)."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def run(self, job: LearnerJob, rank: int, world: int, *, address: str, storage_path: str) -> dict[str, Any]:
        """Rank ``rank`` of ``world`` through one attempt at ``job``'s phase; rank 0's last reported metrics."""
        import torch.distributed as dist

        from polyray.learner.loop import run_rank

        device_index = None
        if job.learner.use_gpu:
            import os

            import ray
            import torch

            device_index = rank_device(ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
            # before the group forms: NCCL binds each rank to its current device
            torch.cuda.set_device(device_index)
        backend = "nccl" if job.learner.use_gpu else "gloo"
        timeout = datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
        dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=timeout)
        session = KeptSession(
            rank, world, storage_path, job.phase.name, resume=job.recovered_checkpoint, device_index=device_index
        )
        try:
            run_rank(job, session)
        finally:
            dist.destroy_process_group()
            # the next phase plans on a clean process
            _release_memory(job.learner.use_gpu)
        return session.last_metrics


# a collective's wait, as Ray Train's TorchConfig sets it
PROCESS_GROUP_TIMEOUT_S = 1800


def _release_memory(use_gpu: bool) -> None:
    """What a finished phase held (its model, optimizer, batches): collected, and the CUDA cache emptied."""
    gc.collect()
    if use_gpu:
        import torch

        torch.cuda.empty_cache()


class PhaseResult:
    """What :meth:`LearnerGroup.fit` returns: rank 0's last reported metrics (as a Ray Train result's)."""

    def __init__(self, metrics: dict[str, Any]):
        self.metrics = metrics


# Ray shows an actor only the GPUs it was given; NCCL then cannot open its peers' memory on the same
# node and moves every all-reduce through host memory instead of NVLink or PCIe peer-to-peer. The
# kept ranks see all of their node's GPUs, as Ray Train's ranks share one CUDA_VISIBLE_DEVICES per node,
# and each selects the one Ray assigned it (rank_device).
SHARED_GPU_VISIBILITY = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}


def rank_options(run: RunConfig) -> dict[str, Any]:
    """A rank actor's Ray options: what a kept rank must match to serve another run."""
    learner = run.learner
    options = {
        "num_cpus": learner.cpus_per_worker,
        "num_gpus": 1 if learner.use_gpu else 0,
        "resources": dict(run.cluster.worker_resources),
        # outside a Tune trial's placement group, as the rollout actors
        "scheduling_strategy": "DEFAULT",
    }
    if learner.use_gpu:
        options["runtime_env"] = {"env_vars": dict(SHARED_GPU_VISIBILITY)}
    return options


def rank_device(assigned: list, visible: str | None) -> int:
    """The CUDA device index of the GPU Ray assigned a rank (``ray.get_gpu_ids()``) in a process that sees
    its node's GPUs: its place in the node's ``CUDA_VISIBLE_DEVICES`` (``visible``; unset: every GPU, by
    index). One GPU a rank: anything else is refused."""
    if len(assigned) != 1:
        raise RuntimeError(f"a learner rank holds one GPU; Ray assigned it {list(assigned)}")
    gpu = str(assigned[0])
    if not visible:
        return int(gpu)
    order = [d.strip() for d in visible.split(",") if d.strip()]
    if gpu not in order:
        raise RuntimeError(f"the GPU Ray assigned this rank ({gpu}) is not in CUDA_VISIBLE_DEVICES={visible}")
    return order.index(gpu)


class RankKeeper:
    """Kept ranks between the runs of a sweep (its trials, one at a time): a Ray actor of the sweep's driver
    that starts them, so they outlive the trial that used them; a run takes them and gives them back."""

    def __init__(self):
        # given back, idle
        self.ranks: list[Any] = []
        # started for the first run by prestart(), perhaps still importing
        self.starting: list[Any] = []
        # taken or started by the run now going
        self.lent: list[Any] = []
        self.options: dict[str, Any] | None = None

    def prestart(self, n: int, options: dict[str, Any], threads: int) -> None:
        """``n`` ranks for the sweep's first run, started while its shared engines start (not waited for)."""
        import ray

        self._kill(self.starting)
        self.options = options
        self.starting = [ray.remote(LearnerRank).options(**options).remote(threads) for _ in range(n)]

    def take(self, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """The kept ranks if they were started with ``options`` (else they are stopped), and none kept after:
        (those a run gave back, ready; those :meth:`prestart` started, which the run waits for).
        Ranks the last run took and never gave back (it died before its end) are stopped: runs go one at a time."""
        ranks, starting = self.ranks, self.starting
        self.ranks, self.starting = [], []
        self._kill(self.lent)
        if options != self.options:
            self._kill(ranks + starting)
            ranks, starting = [], []
        self.lent = ranks + starting
        return ranks, starting

    def give(self, ranks: list[Any], options: dict[str, Any]) -> None:
        self.ranks, self.options, self.lent = list(ranks), options, []

    def start(self, n: int, options: dict[str, Any], threads: int) -> list[Any]:
        """``n`` new ranks, this actor their owner (not yet ready: the caller waits)."""
        import ray

        new = [ray.remote(LearnerRank).options(**options).remote(threads) for _ in range(n)]
        self.lent += new
        return new

    def release(self) -> None:
        self._kill(self.ranks + self.starting + self.lent)
        self.ranks, self.starting, self.lent = [], [], []

    @staticmethod
    def _kill(actors: list[Any]) -> None:
        import ray

        for actor in actors:
            # already gone
            with contextlib.suppress(Exception):
                ray.kill(actor)


class LearnerGroup:
    """A run's learner ranks as Ray actors kept across its phases (module docstring). Not thread-safe:
    one phase at a time, from the driver. ``keeper``: a :class:`RankKeeper` actor whose ranks the run
    takes at its start and gives back at its end (:meth:`hand_back`), for the next run of a sweep."""

    def __init__(self, run: RunConfig, keeper=None):
        import ray

        self.run, self.keeper = run, keeper
        self.options = rank_options(run)
        kept, starting = ray.get(keeper.take.remote(self.options)) if keeper is not None else ([], [])
        self.ranks: list[Any] = _alive(kept)
        # started (by start(), or the keeper's prestart), not yet waited for
        self.starting: list[Any] = starting
        # cancel(): the run is ending
        self.cancelled = False
        # the start-up marks of the ranks this group waited for (LearnerRank.startup), in start order
        self.startup: list[dict[str, float]] = []

    def start(self, world: int) -> None:
        """Ranks up to ``world`` started and not waited for: their imports run while the run starts its
        other components (:meth:`grow` waits for them)."""
        short = world - len(self.ranks) - len(self.starting)
        if short > 0:
            self.starting += self._start_ranks(short)

    def grow(self, world: int) -> None:
        """At least ``world`` ranks, all started: new ones started and waited for (a
        :class:`~polyray.cluster.ClusterShortfall` after ``cluster.resource_wait_s`` when not placed)."""
        import ray

        self.start(world)
        new, self.starting = self.starting, []
        if not new:
            return
        self.ranks += new
        wait_s = self.run.cluster.resource_wait_s
        ready, _ = ray.wait([a.__ray_ready__.remote() for a in new], num_returns=len(new), timeout=wait_s)
        if len(ready) < len(new):
            self.close()
            raise self._shortfall(world, len(new) - len(ready))
        # a rank whose start failed (an import error) raises here
        ray.get(ready)
        try:
            self.startup += ray.get([a.startup.remote() for a in new])
        # a rank lost right after its start: the phase's own start finds it; the trace goes without it
        except ray.exceptions.RayError:
            self.startup = []

    def _start_ranks(self, n: int) -> list[Any]:
        import ray

        # its own: they outlive this run
        if self.keeper is not None:
            return ray.get(self.keeper.start.remote(n, self.options, self.run.learner.threads))
        return [ray.remote(LearnerRank).options(**self.options).remote(self.run.learner.threads) for _ in range(n)]

    def _shortfall(self, world: int, unplaced: int):
        from polyray.cluster import ClusterShortfall, format_bundle, free_resources

        learner = self.run.learner
        bundle = {"CPU": learner.cpus_per_worker, **({"GPU": 1.0} if learner.use_gpu else {})}
        bundle.update(self.run.cluster.worker_resources)
        return ClusterShortfall(
            f"learner: {unplaced} of {world} rank(s) not placed in {self.run.cluster.resource_wait_s:g} s"
            f" (cluster.resource_wait_s): each asks {format_bundle(bundle)} on one node; free now:"
            f" {free_resources(bundle)}"
        )

    def fit(self, job: LearnerJob, storage_path: str) -> PhaseResult:
        """``job``'s phase on ``run.phase_workers`` ranks, restarted from its newest whole checkpoint after a
        failure, up to ``learner.max_failures`` times; the last failure is raised."""
        import ray

        from polyray.learner.checkpoints import newest_whole_checkpoint
        from polyray.storage import Storage

        world = job.workers
        failures = 0
        while True:
            found = newest_whole_checkpoint(Storage(storage_path), job.phase.name)
            attempt = dataclasses.replace(job, recovered_checkpoint=found.location if found else None)
            try:
                # one lost while idle (its node, an OOM kill) is replaced
                self.ranks = _alive(self.ranks)
                self.grow(world)
                if self.cancelled:
                    raise PhaseCancelled(job.phase.name)
                address = ray.get(self.ranks[0].rendezvous.remote())
                # (the others wait for a phase with more ranks: their CPUs are planned)
                ranks = self.ranks[:world]
                refs = [
                    a.run.remote(attempt, i, world, address=address, storage_path=storage_path)
                    for i, a in enumerate(ranks)
                ]
                return PhaseResult(_first_error_or_all(refs)[0])
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                # a peer may wait in a collective for the rank that failed
                self.close()
                if self.cancelled or failures >= job.learner.max_failures:
                    raise _cause(exc) from None
                failures += 1
                _say_restart(job, failures, exc)

    def hand_back(self) -> None:
        """The ranks to the keeper for the next run (stopped instead when there is none)."""
        import ray

        if self.keeper is None:
            self.close()
            return
        ray.get(self.keeper.give.remote(self.ranks + self.starting, self.options))
        self.ranks, self.starting = [], []

    def cancel(self) -> None:
        """Stop every rank and start none again: the run is ending (an error or Ctrl-C in the driver), and a
        phase still fitting in another thread sees its ranks die and stops instead of restarting them."""
        self.cancelled = True
        self.close()

    def close(self) -> None:
        """Stop every rank (its resources go back to the cluster)."""
        import ray

        for actor in self.ranks + self.starting:
            # already gone
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.ranks, self.starting = [], []


class PhaseCancelled(RuntimeError):
    """A phase's fit that found its group cancelled (the run is ending) before it started its ranks."""


def _alive(ranks: list[Any], timeout_s: float = 30.0) -> list[Any]:
    """The ranks that answer (one killed while kept is stopped for good and left out)."""
    import ray

    alive = []
    for actor in ranks:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
            alive.append(actor)
        except Exception:  # noqa: BLE001 - dead, or not answering: a fresh one replaces it
            with contextlib.suppress(Exception):
                ray.kill(actor)
    return alive


def _first_error_or_all(refs: list) -> list[Any]:
    """Every result of ``refs``, or the first error among them as soon as it comes (not after the others)."""
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        # raises the rank's error now
        ray.get(done)
    return ray.get(refs)


def _cause(exc: BaseException) -> BaseException:
    """A rank's own exception where Ray can rebuild it (a ConfigError stays one), else Ray's error."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _say_restart(job: LearnerJob, failures: int, exc: BaseException) -> None:
    from polyray.io import warn

    line = str(_cause(exc)).strip().splitlines()
    warn(
        f"learner: phase {job.phase.name!r} failed ({line[-1] if line else type(exc).__name__}); restart"
        f" {failures} of {job.learner.max_failures} (learner.max_failures) from its newest checkpoint"
    )
