"""A run's start-up trace: marks relative to the run's start, its file, its table and its timeline's bars."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from polyray.drivers.startup import STARTUP_FILE, StartupTrace, startup_rows, startup_table
from polyray.eval.figures import startup_segments


def test_marks_are_seconds_since_the_run_started_and_written_in_the_order_asked(tmp_path):
    trace = StartupTrace(origin=1000.0)
    trace.mark("rollout worker 0", asked=1006.0, process=1006.5, init=1008.25, ready=1025.0)
    trace.mark("ray", asked=1000.5, ready=1006.0)
    trace.add_reported("learner rank", 1007.0, [{"process": 1004.0, "init": 1007.5, "ready": 1019.0}])
    written = json.loads(trace.write(tmp_path).read_text())
    assert tmp_path / STARTUP_FILE == trace.write(tmp_path)
    assert written["origin_unix_s"] == 1000.0
    assert list(written["components"]) == ["ray", "rollout worker 0", "learner rank 0"]
    assert written["components"]["rollout worker 0"] == {"asked": 6.0, "process": 6.5, "init": 8.25, "ready": 25.0}
    assert startup_rows(written)[2] == ("learner rank 0", 7.0, 4.0, 7.5, 19.0)
    console = Console(width=200, record=True)
    console.print(startup_table(written))
    text = console.export_text()
    # asked -> ready per component
    assert "25.0" in text and "19.0" in text and "12.0" in text


def test_an_unknown_mark_names_itself_and_a_failed_span_is_not_marked():
    trace = StartupTrace(origin=0.0)
    with pytest.raises(ValueError, match="'started'.*'ray'"):
        trace.mark("ray", started=1.0)
    with pytest.raises(RuntimeError):
        with trace.span("reward service"):
            raise RuntimeError("placement")
    assert trace.components == {}
    with trace.span("reward service"):
        pass
    assert set(trace.components["reward service"]) == {"asked", "ready"}


def test_the_timeline_draws_what_each_component_reported():
    bars = startup_segments(
        {
            "ray": {"asked": 0.1, "ready": 6.0},
            # a process Ray started before it was asked for: no waiting bar
            "learner rank 0": {"asked": 6.4, "process": 5.0, "init": 7.0, "ready": 19.5},
            "rollout worker 0": {"asked": 6.3, "process": 6.9, "init": 8.1, "ready": 25.0},
        }
    )
    assert bars["asked to ready"] == [("ray", 0.1, 6.0)]
    assert bars["asked, no process yet"] == [("rollout worker 0", 6.3, 6.9)]
    assert bars["process starting (imports)"] == [
        ("learner rank 0", 5.0, 7.0),
        ("rollout worker 0", 6.9, 8.1),
    ]
    assert bars["constructor to ready"] == [("learner rank 0", 7.0, 19.5), ("rollout worker 0", 8.1, 25.0)]
