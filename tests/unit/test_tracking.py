"""Experiment tracking (polyray/tracking.py) against real backends, offline: MLflow's SQLite store
in a temporary directory, W&B in offline mode."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from polyray.config import RunConfig
from polyray.io import ConfigError, append_jsonl
from polyray.eval.record import EvalRecord
from polyray.tracking import RunTracker, check_tracking, flatten, mlflow_key, open_tracker, run_metrics


def _run(tmp_path: Path, backend: str = "mlflow", **tracking) -> RunConfig:
    if backend == "mlflow":
        tracking.setdefault("uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return RunConfig.model_validate(
        {"name": "tracked", "tracking": {"backend": backend, "experiment": "unit", **tracking}}
    )


def _steps(out: Path, phase: str, steps, loss=lambda s: 1.0 / s) -> None:
    for s in steps:
        append_jsonl(out / "metrics.jsonl", {"phase": phase, "step": s, "loss": loss(s), "version": s, "time": 1e9 + s})


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_key_is_valid_for_mlflow():
    from mlflow.utils.validation import validate_param_and_metric_name

    for name in ("sft/pass@10", "grpo/val/usq@5", "base/semantic div", "phases.0.lam"):
        assert validate_param_and_metric_name(mlflow_key(name)), name
    assert mlflow_key("sft/pass@10") == "sft/pass_at_10"
    assert mlflow_key("phases.0.lam") == "phases.0.lam"


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": [{"d": 2}, 3]}, "e": None}) == {"a.b": 1, "a.c.0.d": 2, "a.c.1": 3, "e": None}


def test_run_metrics_test_evaluations_and_last_validation(tmp_path):
    phases = {"base": {"pass@1": 0.1, "n_prompts": 8, "ok": True, "bad": float("nan")}, "sft": {"pass@1": 0.2}}
    results = {"phases": {stage: EvalRecord.from_json(r) for stage, r in phases.items()}}
    for step, p1 in ((0, 0.05), (4, 0.3), (2, 0.2)):  # the last measurement is the highest step, not the last row
        append_jsonl(tmp_path / "dynamics.jsonl", {"phase": "sft", "step": step, "global_step": step, "version": 1,
                                                   "pass@1": p1})  # fmt: skip
    assert run_metrics(tmp_path, results["phases"]) == {
        "base/pass@1": 0.1,
        "base/n_prompts": 8.0,
        "sft/pass@1": 0.2,
        "sft/val/pass@1": 0.3,
    }


def test_missing_client_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    check_tracking(_run(tmp_path).tracking)  # installed: no error
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"tracking.backend: 'mlflow' .*polyray\[tracking\]"):
        check_tracking(_run(tmp_path).tracking)
    check_tracking(_run(tmp_path, "none").tracking)


def test_no_tracker_by_default(tmp_path):
    assert open_tracker(RunConfig(), tmp_path) is None


def test_mlflow_run_logs_steps_evaluations_and_resumes_without_repeats(tmp_path):
    from mlflow.tracking import MlflowClient

    run, out = _run(tmp_path, tags={"team": "k"}), tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    tracker = RunTracker(run, out)
    _steps(out, "sft", [1, 2, 3])
    append_jsonl(out / "dynamics.jsonl", {"phase": "sft", "step": 0, "global_step": 0, "version": 1, "pass@1": 0.25})
    tracker.log_progress()
    tracker.log_progress()  # nothing new: nothing sent twice
    tracker.log_stage("sft", EvalRecord.from_json({"pass@1": 0.5, "pass@10": 0.75, "note": "text"}))
    tracker.finish(failed=True)  # the driver died here

    _steps(out, "sft", [4])
    _steps(out, "grpo", [1, 2])
    resumed = RunTracker(run, out)  # --resume: the same tracking run, only what is new
    assert resumed.backend.run_id == tracker.backend.run_id
    resumed.log_progress()
    resumed.finish(failed=False)

    client = MlflowClient(tracking_uri=run.tracking.uri)
    run_id = tracker.backend.run_id
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert logged.data.tags["team"] == "k" and logged.data.tags["polyray.task"] == "countdown"
    assert logged.data.params["phases.1.type"] == "grpo" and logged.data.params["seed"] == "0"
    assert _history(client, run_id, "sft/train/loss") == [(s, 1.0 / s) for s in (1, 2, 3, 4)]
    assert _history(client, run_id, "grpo/train/loss") == [(1, 1.0), (2, 0.5)]
    assert "sft/train/time" not in logged.data.metrics
    assert _history(client, run_id, "sft/val/pass_at_1") == [(0, 0.25)]
    assert logged.data.metrics["sft/pass_at_10"] == 0.75
    assert [a.path for a in client.list_artifacts(run_id)] == ["results.json"]
    assert json.loads((out / "tracking.json").read_text())["sent"]["metrics.jsonl"] == {"sft": 4, "grpo": 2}


def _current(client, run_id: str, key: str) -> dict[int, float]:
    """Each step's value as MLflow reads it: the one logged last (latest timestamp) at that step."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


def test_mlflow_gets_the_steps_a_restarted_learner_ran_again(tmp_path):
    """A learner restarted from its step-2 checkpoint re-runs steps 3 and 4 after the lost attempt's
    were sent: its resume marker supersedes them in metrics.jsonl and dynamics.jsonl, and the tracker
    sends the re-run steps again, so MLflow's value at each step is the one metrics.jsonl holds."""
    from mlflow.tracking import MlflowClient

    from polyray.io import RESUME_EVENT, read_log_jsonl

    run, out = _run(tmp_path), tmp_path / "run"
    out.mkdir()
    tracker = RunTracker(run, out)
    _steps(out, "grpo", [1, 2, 3, 4])
    for step in (2, 4):
        append_jsonl(out / "dynamics.jsonl", {"phase": "grpo", "step": step, "global_step": step, "pass@1": step / 10})
    tracker.log_progress()

    for name in ("metrics.jsonl", "dynamics.jsonl"):  # the learner died; the new attempt resumes at step 2
        append_jsonl(out / name, {"event": RESUME_EVENT, "phase": "grpo", "step": 2, "time": 2e9})
    _steps(out, "grpo", [3], loss=lambda s: 10.0 + s)
    tracker.log_progress()  # the driver polls mid-way through the re-run
    _steps(out, "grpo", [4], loss=lambda s: 10.0 + s)
    append_jsonl(out / "dynamics.jsonl", {"phase": "grpo", "step": 4, "global_step": 4, "pass@1": 0.9})
    tracker.log_progress()

    client = MlflowClient(tracking_uri=run.tracking.uri)
    run_id = tracker.backend.run_id
    assert _current(client, run_id, "grpo/train/loss") == {1: 1.0, 2: 0.5, 3: 13.0, 4: 14.0}
    logged = {r["step"]: r["loss"] for r in read_log_jsonl(out / "metrics.jsonl")}
    assert logged == {1: 1.0, 2: 0.5, 3: 13.0, 4: 14.0}
    assert _current(client, run_id, "grpo/val/pass_at_1") == {2: 0.2, 4: 0.9}
    assert client.get_run(run_id).data.metrics["grpo/train/loss"] == 14.0  # the run's summary value too

    RunTracker(run, out).log_progress()  # --resume: the markers were applied once, nothing is sent again
    assert len(client.get_metric_history(run_id, "grpo/train/loss")) == 6


@pytest.mark.slow
def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run, out = _run(tmp_path, "wandb", mode="offline"), tmp_path / "run"
    out.mkdir()
    tracker = RunTracker(run, out)
    _steps(out, "sft", [1, 2])
    tracker.log_progress()
    # a learner restarted from step 1 re-runs step 2: W&B's own step goes on, sft/train/step goes back
    append_jsonl(out / "metrics.jsonl", {"event": "resume", "phase": "sft", "step": 1})
    _steps(out, "sft", [2], loss=lambda s: 7.0)
    tracker.log_progress()
    assert tracker.backend.run.summary["sft/train/loss"] == 7.0  # the re-run's value is the current one
    tracker.log_stage("sft", EvalRecord.from_json({"pass@1": 0.5}))
    tracker.finish(failed=False)
    (log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` uploads
    keys = (b"sft/train/loss", b"sft/pass@1", b"phases.1.type", b"polyray.task:countdown")
    deadline = time.monotonic() + 60  # W&B's service process writes the log behind the client
    while not all(key in log.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    records = log.read_bytes()  # protobuf records: the keys are plain bytes in them
    for key in keys:
        assert key in records, (key, records[:200])
    assert json.loads((out / "tracking.json").read_text())["run_id"] == log.stem.removeprefix("run-")
