"""paused_gc: automatic collection off inside, the survivors frozen after, the caller's setting kept."""

from __future__ import annotations

import gc

import pytest

from polyray.imports import paused_gc


@pytest.fixture(autouse=True)
def _restore_gc():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


class _Node:
    def __init__(self):
        self.me = self  # a cycle: only the collector frees it


def test_collection_is_off_inside_and_the_survivors_are_frozen_after():
    gc.enable()
    gc.unfreeze()
    with paused_gc():
        assert not gc.isenabled()
        kept = [_Node() for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    assert not any(gc.is_tracked(k) and k in gc.get_objects() for k in kept[:3])  # frozen: off the generations


def test_a_raising_body_still_turns_collection_back_on():
    gc.enable()
    with pytest.raises(ValueError), paused_gc():
        raise ValueError("import failed")
    assert gc.isenabled()


def test_collection_the_caller_turned_off_stays_off_and_nothing_is_frozen():
    gc.disable()
    gc.unfreeze()
    with paused_gc():
        _Node()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_explicit_collections_inside_still_free_cycles():
    gc.enable()
    with paused_gc():
        _Node()
        assert gc.collect() >= 1
