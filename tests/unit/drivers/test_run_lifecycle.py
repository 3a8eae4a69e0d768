"""One lifecycle for every job that runs a run's stages (``polyray.drivers.run.run_components``): the
components start in order, and whatever the block does they are released, told whether it finished.
The stage functions are recorded here; the components themselves run in the e2e tests."""

from __future__ import annotations

import pytest

from polyray.drivers import run as driver

STAGES = ("prepare_inputs", "start_ray", "launch_pool", "start_services", "start_learner", "wait_for_pool")


class _State:
    run = type(
        "Run",
        (),
        {"rollout": type("R", (), {"store_keep": 2})(), "name": "t", "eval": type("E", (), {"diversity": []})()},
    )()
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
    monkeypatch.setattr("polyray.diversity.preload_encoders", lambda names: seen.append("preload_encoders"))
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
        "start_learner",
        "start_services",
        "preload_encoders",
        "wait_for_pool",
        "block",
        ("release", "store", True),
    ]


def test_the_reward_service_is_waited_for_once_by_the_first_phase_that_trains(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import polyray.cluster as cluster
    from polyray.drivers.startup import StartupTrace
    from polyray.io import Timer

    waited: list = []
    monkeypatch.setattr(cluster, "wait_serve_apps", lambda names, wait_s: waited.append((names, wait_s)))
    trace = StartupTrace(origin=100.0)
    pending = [driver.PendingService("reward service", ["polyray-reward-t"], asked=101.0, deploy_s=1.5)]
    run = SimpleNamespace(cluster=SimpleNamespace(resource_wait_s=30.0))
    state = SimpleNamespace(run=run, pending_services=pending, timer=Timer(), trace=trace, out=tmp_path)
    driver.wait_for_services(state)
    driver.wait_for_services(state)
    assert waited == [(["polyray-reward-t"], 30.0)] and state.pending_services == []
    assert state.timer.timings["reward_service_start"] >= 1.5
    assert trace.components["reward service"]["asked"] == 1.0 and (tmp_path / "startup.json").is_file()


def test_a_service_that_does_not_start_fails_the_wait_and_is_not_marked_ready(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import polyray.cluster as cluster
    from polyray.drivers.startup import StartupTrace
    from polyray.io import Timer

    def short(names, wait_s):
        raise cluster.ClusterShortfall(f"Serve app {names[0]!r} not running after {wait_s:g} s")

    monkeypatch.setattr(cluster, "wait_serve_apps", short)
    pending = [driver.PendingService("reward service", ["polyray-reward-t"], asked=1.0, deploy_s=0.5)]
    run = SimpleNamespace(cluster=SimpleNamespace(resource_wait_s=5.0))
    state = SimpleNamespace(run=run, pending_services=pending, timer=Timer(), trace=StartupTrace(), out=tmp_path)
    with pytest.raises(cluster.ClusterShortfall, match="polyray-reward-t"):
        driver.wait_for_services(state)
    assert "reward service" not in state.trace.components


def test_test_evaluations_start_no_services_logs_or_ranks(calls):
    with driver.run_components(_State(), engagement=[], training=False):
        calls.append("block")
    assert calls == [
        "prepare_inputs",
        "start_ray",
        "open_store",
        "launch_pool",
        "preload_encoders",
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
