"""What the trials of a sweep or an experiment share when they run one at a time: the rollout engines and
the learner's kept ranks, started once by the sweep's driver and handed to every trial.

A trial's run (:func:`polyray.drivers.run.run_pipeline` with ``warm``) then starts no engine: it opens its
adapter store under the name the workers were given, and the workers drop the last run's adapters and
prefix cache (:meth:`polyray.rollout.pool.RolloutPool.start_run`); its learner takes the kept ranks
(:class:`polyray.learner.group.RankKeeper`) and gives them back at its end. A trial whose rollout settings
differ from the pool's (another model, other engine settings) starts its own engines as before; so does
every trial of a sweep whose trials run concurrently.

What a trial computes does not depend on it: every request samples with its own seed, the engine's cache
of the last run is emptied, and a phase builds its model, optimizer and process group afresh on the
kept ranks. A worker that dies in a trial is restarted by Ray and finds that trial's store by name.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from polyray.config import RunConfig


# rollout fields a shared pool need not match: each request's seed, the store's own setting, the switch itself, and
# a memory figure a run checks (and fills in from the cluster, which a key made before the cluster would not see),
# and dtype, keyed as the dtype the engines resolve it to (auto: model.dtype)
NOT_KEYED = {"seed", "share_across_trials", "store_keep", "gpu_memory_gib", "dtype"}


def pool_key(run: RunConfig, model_ref) -> str:
    """What a shared pool must match to serve ``run``: the model, its dtype, the rollout settings but the
    seed (each request brings its own), the workers' resources."""
    rollout = run.rollout.model_dump(mode="json", exclude=NOT_KEYED)
    return json.dumps(
        [str(model_ref), run.engine_dtype, rollout, run.cluster.worker_resources], sort_keys=True, default=str
    )


@dataclass
class WarmComponents:
    """A sweep's shared rollout workers (for runs whose :func:`pool_key` is ``key``) and learner rank keeper."""

    key: str
    workers: list[Any]
    # the name each trial's adapter store takes in turn
    store_name: str
    # a RankKeeper actor, or None (runs start their own ranks)
    keeper: Any = None

    def serves(self, run: RunConfig, model_ref) -> bool:
        return bool(self.workers) and pool_key(run, model_ref) == self.key

    def close(self) -> None:
        import contextlib

        import ray

        if self.keeper is not None:
            with contextlib.suppress(Exception):
                ray.get(self.keeper.release.remote(), timeout=60)
            ray.kill(self.keeper)
        for worker in self.workers:
            with contextlib.suppress(Exception):
                ray.get(worker.close.remote(), timeout=30)
            ray.kill(worker)


def launch_run_pool(run: RunConfig, model_ref, store: str):
    """``run``'s rollout pool on the model ``model_ref`` (a path, or its reference in ``cluster.storage``) with
    adapter store ``store``, its engines starting (not waited for)."""
    from polyray.rollout.pool import RolloutPool

    return RolloutPool.launch(
        model_ref,
        run.rollout,
        dtype=run.engine_dtype,
        run_seed=run.seed,
        store=store,
        run=run.name,
        resources=run.cluster.worker_resources,
        wait=False,
        resource_wait_s=run.cluster.resource_wait_s,
    )


def start_warm(configs: list[RunConfig], concurrent: int) -> WarmComponents | None:
    """The components the trials of ``configs`` (one config per base run) may share, started and ready; None
    when trials run concurrently; without the pool when their rollout settings differ or one sets
    ``rollout.share_across_trials`` false, and without the keeper when one sets ``learner.keep_ranks`` false."""
    import ray

    from polyray.learner.group import RankKeeper, rank_options
    from polyray.models.source import prepare_model_dir
    from polyray.storage import share_model

    if concurrent != 1 or not configs:
        return None
    first = configs[0]
    model_ref = share_model(first.cluster.storage, prepare_model_dir(first.model, first.task))
    keys = {pool_key(run, share_model(run.cluster.storage, prepare_model_dir(run.model, run.task))) for run in configs}
    store_name = f"polyray-adapter-store-trials-{uuid.uuid4().hex[:8]}"
    workers: list[Any] = []
    pool = None
    if len(keys) == 1 and all(run.rollout.share_across_trials for run in configs):
        pool = launch_run_pool(first, model_ref, store_name)
    keeper = None
    if all(run.learner.keep_ranks for run in configs):
        keeper = ray.remote(RankKeeper).options(num_cpus=0, scheduling_strategy="DEFAULT").remote()
        # the first run's ranks import while the engines start (the keeper's: they die with it)
        keeper.prestart.remote(first.phase_workers(0), rank_options(first), first.learner.threads)
    if pool is not None:
        from polyray.cluster import rollout_demand

        demand = rollout_demand(first.rollout, first.cluster.worker_resources)
        try:
            pool.wait_ready(demand, first.cluster.resource_wait_s)
        except BaseException:
            if keeper is not None:
                ray.kill(keeper)
            raise
        workers = pool.workers
    return WarmComponents(keys.pop() if len(keys) == 1 else "", workers, store_name, keeper)
