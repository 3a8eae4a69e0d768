"""RolloutPool: N RolloutWorker actors behind one generate/publish interface.

Prompts are split into contiguous chunks, one per worker, and generated in parallel.
Adapter versions go through the run's adapter store (:mod:`polyray.rollout.store`): a
publish persists the version there (which hands back its content hash), ``ray.put``s it
once and every worker loads that same object, hash-checked. A worker that lacks a version
it is asked for pulls it from the store, so a worker Ray restarted (``__init__`` runs again
and pulls the store's newest version) or one asked for an evicted version serves the right
weights. Named adapters (saved directories the evaluation job registers) are re-registered
by the pool on a restarted worker. A chunk whose worker died in flight is retried once the
worker is back. Each worker reports an incarnation id, new when it restarts
(:meth:`RolloutPool.incarnations`), so the learner's sync canary can check a restarted worker.

The pool object itself is a small picklable value (actor handles), so the learner's rank 0
can receive it and drive rollouts and syncs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import ray

from polyray.config import RolloutConfig, SamplingConfig
from polyray.rollout.request import GenerationRequest
from polyray.rollout.worker import MissingAdapterError, RolloutWorker, Sample, rollout_env


def engine_seed(rollout_seed: int, run_seed: int, worker_index: int) -> int:
    """A vLLM engine seed per (rollout seed, run seed, worker): workers and runs draw different streams."""
    digest = hashlib.blake2b(f"engine:{rollout_seed}:{run_seed}:{worker_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def start_in_turn(start: Callable[[int], Any], n: int, ready: Callable[[Any], None], one_at_a_time: bool) -> list:
    """``[start(i) for i in range(n)]``; ``one_at_a_time``: each started once ``ready`` returned for the one
    before (the last is left starting, as all are otherwise)."""
    started: list = []
    for i in range(n):
        if one_at_a_time and started:
            ready(started[-1])
        started.append(start(i))
    return started


def _demand(config: RolloutConfig, resources: dict[str, float] | None):
    from polyray.cluster import rollout_demand

    return rollout_demand(config, resources or {})


class RolloutPool:
    def __init__(self, workers: list, store=None):
        self.workers = workers
        # the run's AdapterStore actor (None: no publishing, named adapters only)
        self.store = store
        # name -> saved peft directory
        self.named: dict[str, str] = {}

    @classmethod
    def launch(
        cls,
        model_dir,
        config: RolloutConfig,
        dtype: str = "float32",
        run_seed: int = 0,
        store=None,
        run: str = "",
        resources: dict[str, float] | None = None,
        wait: bool = True,
        resource_wait_s: float = 0.0,
    ) -> "RolloutPool":
        """Start ``config.num_workers`` workers; worker i's engine seed mixes (rollout.seed, run seed, i).
        ``wait``: return once every engine is ready; False returns at once (the engines start meanwhile,
        :meth:`wait_ready` waits for them).
        ``model_dir``: a path, or a reference into ``cluster.storage`` each worker copies to its node.
        ``run``: the tag of the workers' metrics. ``resources``: custom Ray resources per worker
        (``cluster.worker_resources``). ``store``: the run's AdapterStore actor, or the name of the one each
        run takes in turn (:meth:`start_run`). Workers that share a GPU (``gpus_per_worker`` below 1) start one
        after another, each once the one before is ready, within ``resource_wait_s`` (0: unbounded) to be placed."""
        actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=config.cpus_per_worker,
            num_gpus=config.gpus_per_worker,
            resources=resources or None,
            max_restarts=2,
            max_task_retries=0,
            runtime_env={"env_vars": rollout_env(config)},
            # its own resources, also when launched inside a Tune trial (whose placement group
            # holds only the trial's driver and would otherwise capture it)
            scheduling_strategy="DEFAULT",
        )

        # the store by its name: a handle among an actor's constructor arguments is an object Ray must keep
        # for the actor's restarts, and its reference counting loses it (ray-project/ray#53727)
        worker_store = store if store is None or isinstance(store, str) else ray.get(store.actor_name.remote())

        def start(i: int):
            seeded = config.model_copy(update={"seed": engine_seed(config.seed, run_seed, i)})
            tags = {"run": run, "worker": str(i)}
            return actor_cls.remote(model_dir, seeded, dtype=dtype, store=worker_store, tags=tags)

        def ready(worker) -> None:
            demand = _demand(config, resources) if resource_wait_s else None
            cls([worker]).wait_ready(demand, resource_wait_s)

        # vLLM's start profiles the GPU's free memory and asserts it did not grow meanwhile: an engine on
        # the same GPU finishing its own start in between breaks that
        started: list = []

        def start_kept(i: int):
            started.append(start(i))
            return started[-1]

        try:
            start_in_turn(start_kept, config.num_workers, ready, one_at_a_time=0 < config.gpus_per_worker < 1)
        except BaseException:
            # a worker not placed, or one whose engine failed: none of those started is left waiting
            cls(started).kill()
            raise
        # (a name: each run's, start_run)
        pool = cls(started, None if isinstance(store, str) else store)
        if wait:
            pool.wait_ready()
        return pool

    def start_run(self, store, run: str) -> None:
        """Serve a new run on these workers (a pool a sweep's trials share, launched with ``store`` set to the
        name each trial's store takes): ``store`` is that run's store, ``run`` its metrics tag; every worker
        forgets the last run's adapters (:meth:`RolloutWorker.start_run`)."""
        self.store, self.named = store, {}
        ray.get([w.start_run.remote({"run": run, "worker": str(i)}) for i, w in enumerate(self.workers)])

    def wait_ready(self, demand=None, resource_wait_s: float = 0.0) -> None:
        """Wait for every worker's engine. With ``demand`` (the workers' :class:`polyray.cluster.Demand`), a
        worker Ray has not placed after ``resource_wait_s`` (other work holds its GPUs) stops the wait, naming
        what it asks for."""
        refs = [w.versions.remote() for w in self.workers]
        if demand is None:
            ray.get(refs)
            return
        from polyray.cluster import wait_for_actors

        wait_for_actors(refs, self.workers, demand, resource_wait_s)

    # ---- weight sync ------------------------------------------------------------------------
    def newest_version(self) -> int:
        """The newest version id the store has handed out (0: none); the next publish uses a higher one."""
        return ray.get(self.store.newest.remote()) if self.store is not None else 0

    def publish_next(self, adapter: dict[str, Any], phase: str = "", step: int = 0) -> tuple[int, float]:
        """Persist ``adapter`` in the store under the next version id it hands out and load it on every
        worker, both at once (the id is fresh: no worker holds other weights under it); returns
        (version, seconds taken)."""
        pending = self.start_publish(adapter, phase, step)
        pending.result()
        return pending.version, time.perf_counter() - pending.started

    def start_publish(self, adapter: dict[str, Any], phase: str = "", step: int = 0) -> "PendingPublish":
        """:meth:`publish_next` without waiting for the store's write and the workers' loads: returns as
        soon as the store has handed out the version id, with the loads queued on every worker. A
        worker runs its calls in the order this process sent them, so a generation asked for the
        version after this call samples it. ``.result()`` waits for the rest and raises its errors."""
        started = time.perf_counter()
        sha, ref = self._put_object(adapter)
        version = ray.get(self.store.reserve_next.remote(sha))
        # the store writes while the workers load
        stored = self.store.put.remote(version, ref, phase, step, sha)
        return PendingPublish(self, version, started, stored, partial(_load, version, ref, sha))

    def publish(self, version: int, adapter: dict[str, Any], phase: str = "", step: int = 0) -> float:
        """Persist ``adapter`` as ``version`` (above every id handed out before) in the store, then load
        it on every worker (only once the store took the id); returns seconds taken."""
        return self._publish(adapter, version, phase, step)[1]

    def _publish(self, adapter: dict[str, Any], version: int, phase: str, step: int) -> tuple[int, float]:
        """The adapter's object (:meth:`_put_object`), persisted by the store under the id the caller named
        (it refuses a used one before any worker loads it), then loaded on every worker; (version, seconds)."""
        started = time.perf_counter()
        sha, ref = self._put_object(adapter)
        ray.get(self.store.put.remote(version, ref, phase, step, sha))
        self._on_every_worker(partial(_load, version, ref, sha))
        return version, time.perf_counter() - started

    def _put_object(self, adapter: dict[str, Any]) -> tuple[str, Any]:
        """(the adapter's hash, one ``ray.put`` of it in :func:`~polyray.rollout.store.to_wire` form), which
        the store persists and every worker loads, each checking it against the hash."""
        from polyray.rollout.store import adapter_hash, to_wire

        if self.store is None:
            raise RuntimeError("this rollout pool has no adapter store to publish to")
        return adapter_hash(adapter), ray.put(to_wire(adapter))

    def holds(self, version: int) -> bool:
        """Whether the store holds ``version``'s weights (an id handed out by a put that was killed
        before its record was written is reserved, but not held)."""
        return self.store is not None and ray.get(self.store.record.remote(version)) is not None

    def pin(self, name: str, version: int) -> None:
        """Keep ``version`` in the store for good (a phase's final adapter, evaluated by the driver)."""
        ray.get(self.store.pin.remote(name, version))

    def _on_every_worker(self, call) -> list:
        """``call(worker)`` on every worker (in parallel), each as :meth:`_on_worker` does."""
        refs = [call(w) for w in self.workers]
        return [self._on_worker(worker, call, ref) for worker, ref in zip(self.workers, refs)]

    def _on_worker(self, worker, call, ref=None):
        """``ray.get(call(worker))``; a worker that died meanwhile is waited for, caught up, asked again."""
        try:
            return ray.get(ref if ref is not None else call(worker))
        except ray.exceptions.RayActorError:
            wait_restarted(worker)
            self._catch_up(worker)
            return ray.get(call(worker))

    def _catch_up(self, worker) -> None:
        """Re-register the named adapters on a restarted worker (it pulled the newest version itself)."""
        for n, path in self.named.items():
            ray.get(worker.add_named_adapter.remote(n, path))

    def score(
        self, prompt_ids: list[int], completion_ids: list[int], version: int | None, worker: int = 0
    ) -> list[float]:
        """Log-probs of a fixed completion's tokens on worker ``worker`` under adapter ``version``."""
        return self._on_worker(self.workers[worker], lambda w: w.score.remote(prompt_ids, completion_ids, version))

    def draw(
        self, prompt_ids: list[int], sampling: SamplingConfig, version: int | None, worker: int = 0, seed: int = 0
    ) -> Sample:
        """One sample after ``prompt_ids`` on worker ``worker`` under adapter ``version``, drawn as rollouts
        are, with its sampling-time log-probs (:meth:`RolloutWorker.draw`)."""
        return self._on_worker(self.workers[worker], lambda w: w.draw.remote(prompt_ids, sampling, version, seed))

    def incarnations(self) -> list[str]:
        """Each worker's incarnation id (:meth:`RolloutWorker.incarnation`): an id that changed between two
        calls means Ray restarted that worker in between."""
        return self._on_every_worker(lambda w: w.incarnation.remote())

    def nodes(self) -> list[str]:
        """The Ray node id each worker runs on now."""
        return self._on_every_worker(lambda w: w.node.remote())

    def add_named_adapter(self, name: str, path: str) -> None:
        self.named[name] = str(path)
        self._on_every_worker(lambda w: w.add_named_adapter.remote(name, path))

    # ---- generation -------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> "PendingGeneration":
        """Start generating ``request`` on the workers, its prompts split into one contiguous chunk per worker
        (:meth:`GenerationRequest.split`); ``.result()`` collects the samples."""
        chunks = [
            (start, part, worker, worker.generate.remote(part))
            for (start, part), worker in zip(request.split(len(self.workers)), self.workers)
        ]
        return PendingGeneration(self, chunks)

    def generate(self, request: GenerationRequest, retries: int = 1) -> list[list[Sample]]:
        """``request.n`` samples per prompt, spread over the workers; result order follows ``request.prompts``."""
        return self.submit(request).result(retries)

    def kill(self) -> None:
        """End every worker at once, without :meth:`shutdown`'s close (a worker Ray never placed would not
        answer it)."""
        for worker in self.workers:
            ray.kill(worker)

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(w)


def wait_restarted(worker, timeout_s: float = 600.0) -> None:
    """Block until Ray has brought a dead worker back (a new vLLM engine takes a while), bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(worker.versions.remote(), timeout=30)
            return
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _load(version: int, ref, sha: str, worker):
    """``worker``'s call that loads the adapter object ``ref`` as ``version`` (hash ``sha``)."""
    return worker.load_adapter.remote(version, ref, sha)


def _incarnation(worker):
    return worker.incarnation.remote()


class PendingPublish:
    """A publish whose version id is handed out and whose store write and worker loads are in
    flight (:meth:`RolloutPool.start_publish`). Each worker's load is followed by a call for its
    incarnation id, so :meth:`result` also tells which process took the load (a worker restarted
    since the caller last looked serves weights it pulled from the store itself until then)."""

    def __init__(self, pool: RolloutPool, version: int, started: float, stored, load):
        self.pool, self.version, self.started, self.stored, self.load = pool, version, started, stored, load
        self.loads = [load(w) for w in pool.workers]
        # queued after each worker's load
        self.asked = [_incarnation(w) for w in pool.workers]
        self._incarnations: list[str] | None = None

    def result(self) -> list[str]:
        """Wait for the store's write and every worker's load (a worker that died meanwhile is waited
        for, caught up and loaded again); returns each worker's incarnation id after its load."""
        if self._incarnations is None:
            for worker, ref in zip(self.pool.workers, self.loads):
                self.pool._on_worker(worker, self.load, ref)
            self._incarnations = [
                self.pool._on_worker(w, _incarnation, ref) for w, ref in zip(self.pool.workers, self.asked)
            ]
            ray.get(self.stored)
        return self._incarnations


class PendingGeneration:
    """Chunks in flight on the workers. ``result()`` gathers them in prompt order, retrying a
    chunk whose worker died once Ray has restarted it and the pool has re-synced its adapter."""

    def __init__(self, pool: RolloutPool, chunks: list[tuple[int, GenerationRequest, Any, Any]]):
        # (index of the chunk's first prompt, its request, the worker, its future)
        self.pool, self.chunks = pool, chunks

    def result(self, retries: int = 1) -> list[list[Sample]]:
        results: list[list[Sample]] = []
        for start, request, worker, future in self.chunks:
            for attempt in range(retries + 1):
                try:
                    groups = ray.get(future)
                    break
                except (ray.exceptions.RayActorError, MissingAdapterError) as exc:
                    # died in flight (RayActorError), or restarted before this call and lacks the adapter
                    if attempt == retries:
                        raise
                    if isinstance(exc, ray.exceptions.RayActorError):
                        wait_restarted(worker)
                    elif exc.name is None:
                        # a policy version the store does not hold: retrying cannot help
                        raise
                    self.pool._catch_up(worker)
                    future = worker.generate.remote(request)
            for group in groups:
                for sample in group:
                    sample.prompt_index += start
            results.extend(groups)
        return results
