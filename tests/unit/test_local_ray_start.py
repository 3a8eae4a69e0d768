"""A local Ray cluster whose node misses Ray's registration window is started again, once, after what the
missed start left running is stopped. The real miss needs every core busy for half a minute (measured in
the commit); here the first ``ray.init`` fails with Ray's own message after starting a child process."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from polyray import cluster

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet failed to startup"
    " or the GCS has become overloaded."
)


def test_a_missed_registration_is_started_again_without_its_leftovers(monkeypatch, capsys):
    import ray

    leftovers, calls = [], []

    def init(**settings):
        calls.append(settings)
        if len(calls) == 1:  # the missed start: its raylet stands in as a child left running
            leftovers.append(subprocess.Popen(["sleep", "600"]))
            raise TIMEOUT
        return "context"

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert cluster.start_local_ray({"num_cpus": 2}) == "context"
    assert calls == [{"num_cpus": 2}, {"num_cpus": 2}]
    assert not psutil.pid_exists(leftovers[0].pid)  # stopped (and reaped) before the second start
    assert "Ray's local node did not register in time (load average" in capsys.readouterr().err


def test_other_errors_and_a_second_miss_are_raised(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: None)
    calls = []

    def other(**settings):
        calls.append(1)
        raise ValueError("num_cpus must be positive")

    monkeypatch.setattr(ray, "init", other)
    with pytest.raises(ValueError, match="num_cpus"):
        cluster.start_local_ray({})
    assert len(calls) == 1

    def missed(**settings):
        calls.append(1)
        raise TIMEOUT

    monkeypatch.setattr(ray, "init", missed)
    with pytest.raises(Exception, match="timed out during startup"):
        cluster.start_local_ray({})
    assert len(calls) == 3
