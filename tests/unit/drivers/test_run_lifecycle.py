"""One lifecycle for every job that runs a run's stages (``polyray.drivers.run.run_components``): the
components start in order, and whatever the block does they are released, told whether it finished.
The stage functions are recorded here; the components themselves run in the e2e tests."""

from __future__ import annotations

import pytest

from polyray.drivers import run as driver

STAGES = ("prepare_inputs", "start_ray", "launch_pool", "start_services", "start_learner", "wait_for_pool")


class _State:
    run = type("Run", (), {"rollout": type("R", (), {"store_keep": 2})(), "name": "t"})()
    out = warm = model_ref = logs = None
    shared_pool = False

    def store_root(self):
        return "/nowhere"


@pytest.fixture
def calls(monkeypatch):
    seen: list = []
    for name in STAGES:
        monkeypatch.setattr(driver, name, lambda *a, _n=name, **k: seen.append(_n) or 0.0)
    monkeypatch.setattr("polyray.rollout.store.open_store", lambda *a, **k: seen.append("open_store") or "store")
    monkeypatch.setattr(driver.StepLogs, "on_driver_node", staticmethod(lambda out: seen.append("logs") or "logs"))
    monkeypatch.setattr(driver, "release", lambda state, store, finished: seen.append(("release", store, finished)))
    return seen


def test_a_training_run_starts_everything_in_order_and_releases_finished(calls):
    with driver.run_components(_State(), engagement=[]):
        calls.append("block")
    assert calls == [
        "prepare_inputs",
        "start_ray",
        "open_store",
        "logs",
        "launch_pool",
        "start_services",
        "start_learner",
        "wait_for_pool",
        "block",
        ("release", "store", True),
    ]


def test_test_evaluations_start_no_services_logs_or_ranks(calls):
    with driver.run_components(_State(), engagement=[], training=False):
        calls.append("block")
    assert calls == [
        "prepare_inputs",
        "start_ray",
        "open_store",
        "launch_pool",
        "wait_for_pool",
        "block",
        ("release", "store", True),
    ]


@pytest.mark.parametrize("error", [RuntimeError("a stage failed"), KeyboardInterrupt()])
def test_a_failed_block_releases_unfinished_and_raises(calls, error):
    with pytest.raises(type(error)):
        with driver.run_components(_State(), engagement=[]):
            raise error
    assert calls[-1] == ("release", "store", False)
