"""RolloutPool: N RolloutWorker actors behind one generate/publish interface.

Prompts are split into contiguous chunks, one per worker, and generated in parallel.
Adapter versions are ``ray.put`` once and every worker loads that same object. The pool
remembers what a worker may be asked for: the newest published versions (object refs),
saved phase adapters (directories, registered by the driver) and named adapters. A worker
that died (Ray restarts it, running ``__init__`` again with no adapters) is caught up
before its chunk is retried: its in-flight call failing, or a later call naming an
adapter the restarted worker lacks (:class:`~polyray.rollout.worker.MissingAdapterError`).

The pool object itself is a small picklable value (actor handles, object refs, paths),
so the learner's rank 0 can receive it and drive rollouts and syncs.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import ray

from polyray.config import RolloutConfig, SamplingConfig
from polyray.rollout.worker import MissingAdapterError, RolloutWorker, Sample, rollout_env

KEEP_REFS = 4  # published versions whose object refs the pool keeps for re-syncing a restarted worker


def engine_seed(rollout_seed: int, run_seed: int, worker_index: int) -> int:
    """A vLLM engine seed per (rollout seed, run seed, worker): workers and runs draw different streams."""
    digest = hashlib.blake2b(f"engine:{rollout_seed}:{run_seed}:{worker_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class RolloutPool:
    def __init__(self, workers: list):
        self.workers = workers
        self.recent: dict[int, Any] = {}  # version -> ObjectRef of the adapter, the newest few published
        self.saved: dict[int, str] = {}  # version -> saved peft directory (phase ends)
        self.named: dict[str, str] = {}  # name -> saved peft directory

    @classmethod
    def launch(cls, model_dir: str, config: RolloutConfig, dtype: str = "float32", run_seed: int = 0) -> "RolloutPool":
        """Start ``config.num_workers`` workers; worker i's engine seed mixes (rollout.seed, run seed, i)."""
        actor_cls = ray.remote(RolloutWorker).options(
            num_cpus=config.cpus_per_worker,
            num_gpus=config.gpus_per_worker,
            max_restarts=2,
            max_task_retries=0,
            runtime_env={"env_vars": rollout_env(config)},
        )
        workers = [
            actor_cls.remote(model_dir, config.model_copy(update={"seed": engine_seed(config.seed, run_seed, i)}), dtype)
            for i in range(config.num_workers)
        ]
        pool = cls(workers)
        pool.wait_ready()
        return pool

    def wait_ready(self) -> None:
        ray.get([w.versions.remote() for w in self.workers])

    @property
    def version(self) -> int:
        """The newest version this pool handle published (0: none)."""
        return max(self.recent, default=0)

    # ---- weight sync ------------------------------------------------------------------------
    def publish(self, version: int, adapter: dict[str, Any]) -> float:
        """Put ``adapter`` in the object store once and load it on every worker; returns seconds taken."""
        started = time.perf_counter()
        ref = ray.put(adapter)
        self.recent[version] = ref
        for old in sorted(self.recent)[:-KEEP_REFS]:
            del self.recent[old]
        self._on_every_worker(lambda w: w.load_adapter.remote(version, ref))
        return time.perf_counter() - started

    def _on_every_worker(self, call) -> list:
        """``call(worker)`` on every worker; a worker that died meanwhile is waited for, caught up, asked again."""
        refs = [call(w) for w in self.workers]
        out = []
        for worker, ref in zip(self.workers, refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                wait_restarted(worker)
                self._catch_up(worker)
                out.append(ray.get(call(worker)))
        return out

    def register_saved(self, version: int, path: str) -> None:
        """Remember that ``version`` is saved at ``path`` (a phase's final adapter): a worker restarted
        later (e.g. during the driver's evaluation) can load it from there."""
        self.saved[version] = str(path)

    def _catch_up(self, worker, version: int | None = None, name: str | None = None) -> None:
        """Load what a (restarted) worker needs: the named adapters, the newest version, and ``version``."""
        for n, path in self.named.items():
            ray.get(worker.add_named_adapter.remote(n, path))
        newest = max([*self.recent, *self.saved], default=0)
        for v in dict.fromkeys(x for x in (newest, version) if x):
            if v in self.recent:
                ray.get(worker.load_adapter.remote(v, self.recent[v]))
            elif v in self.saved:
                ray.get(worker.load_adapter_dir.remote(v, self.saved[v]))
            else:
                raise RuntimeError(f"a restarted rollout worker needs adapter version {v}, which the pool no longer holds")

    def newest_version(self) -> int:
        """The highest adapter version any worker holds (0: none)."""
        return max((max(v, default=0) for v in self._on_every_worker(lambda w: w.versions.remote())), default=0)

    def score(self, prompt_ids: list[int], completion_ids: list[int], version: int | None, worker: int = 0) -> list[float]:
        """Log-probs of a fixed completion's tokens on worker ``worker`` under adapter ``version``."""
        return ray.get(self.workers[worker].score.remote(prompt_ids, completion_ids, version))

    def add_named_adapter(self, name: str, path: str) -> None:
        self.named[name] = str(path)
        self._on_every_worker(lambda w: w.add_named_adapter.remote(name, path))

    # ---- generation -------------------------------------------------------------------------
    def submit(
        self,
        prompts: list[str],
        n: int,
        sampling: SamplingConfig,
        version: int | None = None,
        adapter_name: str | None = None,
        seeds: list[int] | None = None,
    ) -> "PendingGeneration":
        """Start generating ``n`` samples per prompt on the workers; ``.result()`` collects them.

        ``seeds``: one sampling seed per prompt (see :func:`polyray.rollout.sampling.request_seeds`)."""
        k = len(self.workers)
        size = max(1, -(-len(prompts) // k))
        args = (n, sampling, version, adapter_name)
        chunks = []
        for j, start in enumerate(range(0, len(prompts), size)):
            chunk_seeds = None if seeds is None else list(seeds[start : start + size])
            chunk = (prompts[start : start + size], chunk_seeds)
            chunks.append((start, chunk, self.workers[j], self.workers[j].generate.remote(chunk[0], *args, chunk_seeds)))
        return PendingGeneration(self, chunks, args)

    def generate(
        self,
        prompts: list[str],
        n: int,
        sampling: SamplingConfig,
        version: int | None = None,
        adapter_name: str | None = None,
        seeds: list[int] | None = None,
        retries: int = 1,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, spread over the workers; result order follows ``prompts``."""
        return self.submit(prompts, n, sampling, version, adapter_name, seeds).result(retries)

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


class PendingGeneration:
    """Chunks in flight on the workers. ``result()`` gathers them in prompt order, retrying a
    chunk whose worker died once Ray has restarted it and the pool has re-synced its adapter."""

    def __init__(self, pool: RolloutPool, chunks: list[tuple[int, tuple[list[str], list[int] | None], Any, Any]], args: tuple):
        self.pool, self.chunks, self.args = pool, chunks, args

    def result(self, retries: int = 1) -> list[list[Sample]]:
        results: list[list[Sample]] = []
        version, name = self.args[2], self.args[3]
        for start, chunk, worker, future in self.chunks:
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
                    self.pool._catch_up(worker, version, name)
                    future = worker.generate.remote(chunk[0], *self.args, chunk[1])
            for group in groups:
                for sample in group:
                    sample.prompt_index += start
            results.extend(groups)
        return results
