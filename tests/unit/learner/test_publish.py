"""The learner's publisher: the adapter store numbers the versions, and every rank holds the same one.

An in-process :class:`AdapterStore` behind a stand-in pool (no Ray, no vLLM); the two-rank case
runs on gloo, where only rank 0 has the pool, as in the learner.
"""

from __future__ import annotations

import pytest
import torch

from polyray.http import free_port
from polyray.learner.phases import StepContext
from polyray.learner.publish import AdapterPublisher
from polyray.rollout.store import AdapterStore


def _adapter(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"config": {"r": 1}, "tensors": {"lora_A.weight": torch.randn(1, 4, generator=g)}}


class StorePool:
    """The publishing half of the rollout pool, over an in-process store."""

    def __init__(self, store: AdapterStore):
        self.store, self.published, self.waited, self.pending = store, [], [], None

    def newest_version(self) -> int:
        return self.store.newest()

    def start_publish(self, adapter, phase: str = "", step: int = 0) -> Pending:
        record = self.store.put_next(adapter, phase, step)
        self.published.append((record.version, phase, step))
        return Pending(self, record.version)


class Pending:
    """A publish whose loads the test finishes (``result``), recording the order it is waited for in."""

    def __init__(self, pool: StorePool, version: int, error: Exception | None = None):
        self.pool, self.version, self.error = pool, version, error
        pool.pending = self

    def result(self) -> list[str]:
        self.pool.waited.append(self.version)
        if self.error is not None:
            raise self.error
        return ["w0.0"]


@pytest.fixture(autouse=True)
def _adapters(monkeypatch):
    """Each publish extracts different weights (the learner's extract_adapter needs a peft model)."""
    calls = iter(range(10**6))
    monkeypatch.setattr("polyray.learner.lora.extract_adapter", lambda model: _adapter(next(calls)))


def _publisher(pool, rank: int = 0, world: int = 1) -> AdapterPublisher:
    return AdapterPublisher(pool, "grpo", StepContext(model=None, tokenizer=None, rank=rank, world=world, seed=0))


def test_a_phase_continuing_the_incoming_adapter_publishes_after_it(tmp_path):
    store = AdapterStore(str(tmp_path))
    store.put(1, _adapter(100), "sft")  # the previous phase's final adapter, handed over as version 1
    pool = StorePool(store)
    publisher = _publisher(pool)
    publisher.start(1, 0, holds_published=True, publishes_every_step=True)
    assert publisher.version == 1 and pool.published == []  # rollouts sample version 1: nothing to publish
    for step in (1, 2):
        publisher.publish(step)
    assert publisher.version == 3 and pool.published == [(2, "grpo", 1), (3, "grpo", 2)]
    assert pool.waited == [2, 3]  # each waited for before the step goes on


def test_one_step_ahead_a_publish_is_waited_for_by_the_next(tmp_path):
    """``wait=False``: the version is handed out at once and its loads are waited for at the next
    publish, before that one starts; a publish that waits settles the one before it first."""
    pool = StorePool(AdapterStore(str(tmp_path)))
    publisher = _publisher(pool)
    publisher.start(0, 0, holds_published=False, publishes_every_step=True)
    assert pool.waited == [1]  # the starting weights: waited for
    publisher.publish(1, wait=False)
    assert publisher.version == 2 and pool.waited == [1]  # the step goes on while version 2 loads
    publisher.publish(2, wait=False)
    assert publisher.version == 3 and pool.waited == [1, 2]
    publisher.publish(3, wait=True)  # the phase's last: complete before the phase ends
    assert publisher.version == 4 and pool.waited == [1, 2, 3, 4]
    publisher.settle()  # nothing left in flight
    assert pool.waited == [1, 2, 3, 4]


def test_a_failed_load_behind_the_step_fails_the_next_publish(tmp_path):
    pool = StorePool(AdapterStore(str(tmp_path)))
    publisher = _publisher(pool)
    publisher.publish(1, wait=False)
    pool.pending.error = RuntimeError("adapter version 1 is already loaded with other weights")
    with pytest.raises(RuntimeError, match="already loaded with other weights"):
        publisher.publish(2, wait=False)
    assert pool.published == [(1, "grpo", 1)]  # nothing published past the failure


class DueCanary:
    """A canary due on the publishes it names, recording how each publish reached it."""

    def __init__(self, due: set[int]):
        self.due, self.publishes, self.seen = due, 0, []

    def checks_next(self) -> bool:
        return self.publishes + 1 in self.due

    def after_publish(self, model, pool, version, incarnations=None):
        self.publishes += 1
        self.seen.append(("checked", version, incarnations))
        return {"canary_gap": 0.0}

    def after_unchecked(self, incarnations):
        self.publishes += 1
        self.seen.append(("unchecked", incarnations))


def test_a_publish_the_canary_checks_waits_even_one_step_ahead(tmp_path):
    pool = StorePool(AdapterStore(str(tmp_path)))
    canary = DueCanary(due={2})
    publisher = AdapterPublisher(pool, "grpo", StepContext(model=None, tokenizer=None, rank=0, world=1, seed=0), canary)
    publisher.publish(1, wait=False)
    publisher.publish(2, wait=False)  # due: its loads are waited for and the check follows at once
    assert pool.waited == [1, 2] and publisher.pending is None
    assert canary.seen == [("unchecked", ["w0.0"]), ("checked", 2, ["w0.0"])]
    assert publisher.take_canary_metrics() == {"canary_gap": 0.0}


def test_a_resumed_attempt_publishes_after_what_a_lost_one_published(tmp_path):
    pool = StorePool(AdapterStore(str(tmp_path)))
    lost = _publisher(pool)
    lost.start(0, 0, holds_published=False, publishes_every_step=True)  # a fresh LoRA publishes its start
    for step in (1, 2, 3, 4):
        lost.publish(step)
    assert lost.version == 5  # ... and died after its step-2 checkpoint, which holds version 3

    pool = StorePool(AdapterStore(str(tmp_path)))  # the store restarted too: read back from its directory
    resumed = _publisher(pool)
    resumed.start(3, 2, holds_published=False, publishes_every_step=True)
    assert pool.published == [(6, "grpo", 2)] and resumed.version == 6  # its starting weights, under a fresh id
    resumed.publish(3)
    assert resumed.version == 7


def test_sft_holds_the_newest_version_until_it_publishes(tmp_path):
    store = AdapterStore(str(tmp_path))
    for v in (1, 2):
        store.put_next(_adapter(v))
    publisher = _publisher(StorePool(store))
    publisher.start(1, 0, holds_published=True, publishes_every_step=False)
    assert publisher.version == 2 and store.newest() == 2  # no publish at the start
    publisher.publish(3)
    assert publisher.version == 3 == store.newest()


def test_without_a_pool_versions_count_on_as_labels():
    publisher = _publisher(None)
    publisher.start(4, 0, holds_published=True, publishes_every_step=False)
    publisher.publish(1)
    publisher.publish(2)
    assert publisher.version == 6


def _two_ranks(rank: int, world: int, port: int, root: str, out: str) -> None:
    """Rank 0 publishes through the store; an id it skips (another put in between) reaches rank 1 too."""
    import torch.distributed as dist

    import polyray.learner.lora

    polyray.learner.lora.extract_adapter = lambda model: _adapter(7)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        store = AdapterStore(root) if rank == 0 else None
        publisher = _publisher(StorePool(store) if rank == 0 else None, rank, world)
        publisher.start(0, 0, holds_published=False, publishes_every_step=True)
        versions = [publisher.version]
        publisher.publish(1)
        versions.append(publisher.version)
        if rank == 0:
            store.put_next(_adapter(8), "other")  # an id handed out to someone else: the learner skips it
        publisher.publish(2)
        versions.append(publisher.version)
        torch.save(versions, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
def test_every_rank_holds_the_id_rank_0_got_from_the_store(tmp_path):
    from support.phase_harness import spawn_ranks

    out = str(tmp_path / "versions")
    spawn_ranks(_two_ranks, (2, free_port(), str(tmp_path / "store"), out), 2)
    assert torch.load(f"{out}.0") == torch.load(f"{out}.1") == [1, 2, 4]
