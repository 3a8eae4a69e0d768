"""``--resume``: which run directory a run may start in or continue, and that both entrypoints pass it on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyray.config import load_config
from polyray.io import ConfigError
from polyray.drivers.run import open_run_dir

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    run = load_config(QUICKSTART)
    assert open_run_dir(run, tmp_path / "r", resume=False) == {"name": "quickstart", "phases": {}, "versions": {}}
    assert (tmp_path / "r" / "config.resolved.yaml").is_file()
    with pytest.raises(ConfigError, match="already holds a run: continue it with --resume"):
        open_run_dir(run, tmp_path / "r", resume=False)
    (tmp_path / "s" / "adapter_store").mkdir(parents=True)  # a run killed before it wrote anything else
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_dir(run, tmp_path / "s", resume=False)


def test_resume_continues_the_same_config_only(tmp_path):
    run = load_config(QUICKSTART)
    with pytest.raises(ConfigError, match="--resume: .* holds no run"):
        open_run_dir(run, tmp_path / "none", resume=True)
    out = tmp_path / "r"
    open_run_dir(run, out, resume=False)
    other = load_config(QUICKSTART, ["seed=3", "phases.1.steps=7"])
    with pytest.raises(ConfigError, match="config differs from the run's .* in: phases, seed"):
        open_run_dir(other, out, resume=True)
    assert open_run_dir(run, out, resume=True) == {"name": "quickstart", "phases": {}, "versions": {}}
    (out / "results.json").write_text(json.dumps({"name": "quickstart", "phases": {"base": {"pass@1": 0.1}}}))
    results = open_run_dir(run, out, resume=True)
    assert results["phases"]["base"].pass_at_k[1].mean == 0.1 and results["resumed"] == 1 and results["versions"] == {}
    assert results["phases"]["base"].to_json() == {"pass@1": 0.1}  # read back through the record, unchanged


def test_both_entrypoints_pass_resume_on(monkeypatch, tmp_path):
    import jobs.train
    import polyray.drivers.run
    from typer.testing import CliRunner

    from polyray.cli import app

    calls = []
    fake = lambda run, out, resume=False, serve_generation=False: calls.append(  # noqa: E731
        (run.name, str(out), resume, serve_generation)
    )
    monkeypatch.setattr(polyray.drivers.run, "run_pipeline", fake)
    assert jobs.train.main([str(QUICKSTART), "--output-dir", str(tmp_path), "--resume"]) == 0
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), "--output-dir", str(tmp_path), "--resume"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), "--output-dir", str(tmp_path), "--serve-generation"])
    assert jobs.train.main([str(QUICKSTART), "--output-dir", str(tmp_path), "--serve-generation"]) == 0
    assert calls == [("quickstart", str(tmp_path), True, False)] * 2 + [("quickstart", str(tmp_path), False, True)] * 2


def test_a_restarted_phase_marks_the_lost_attempts_rows(tmp_path):
    """A learner group restarted from step 0 (it died before its first checkpoint was registered) or
    from a checkpoint marks what the lost attempt logged past its start; readers see each step once."""
    from polyray.io import append_jsonl, read_log_jsonl
    from polyray.learner.loop import _mark_superseded

    log = tmp_path / "metrics.jsonl"
    _mark_superseded(tmp_path, "poly", 0)  # nothing logged yet: no marker
    assert not log.exists()
    for step in (1, 2, 3):
        append_jsonl(log, {"phase": "poly", "step": step, "loss": float(step)})
    _mark_superseded(tmp_path, "poly", 0)  # restart from scratch
    assert read_log_jsonl(log) == []
    for step in (1, 2, 3, 4):
        append_jsonl(log, {"phase": "poly", "step": step, "loss": 10.0 + step})
    _mark_superseded(tmp_path, "poly", 4)  # nothing past step 4: no marker
    _mark_superseded(tmp_path, "grpo", 0)  # another phase: no marker
    _mark_superseded(tmp_path, "poly", 2)  # restart from the step-2 checkpoint
    append_jsonl(log, {"phase": "poly", "step": 3, "loss": 20.0})
    assert [(r["step"], r["loss"]) for r in read_log_jsonl(log)] == [(1, 11.0), (2, 12.0), (3, 20.0)]
    assert log.read_text().count('"event"') == 2


def test_a_restart_marks_each_log_that_ran_ahead_of_the_metrics(tmp_path):
    """Step 3's rollouts and its dynamics row reach their logs before its metrics.jsonl row: a learner
    killed in between leaves step 3 in rollouts.jsonl and dynamics.jsonl only. The attempt restarted
    from the step-2 checkpoint marks those logs too, so the re-run step 3 is read once in each."""
    from collections import Counter

    from polyray.io import append_jsonl, read_log_jsonl
    from polyray.learner.loop import _mark_superseded

    logs = {name: tmp_path / name for name in ("metrics.jsonl", "dynamics.jsonl", "rollouts.jsonl")}
    for step in (1, 2):
        append_jsonl(logs["metrics.jsonl"], {"phase": "grpo", "step": step, "loss": float(step)})
    for step in (2, 3):  # the lost attempt measured and sampled step 3, then died before its metrics row
        append_jsonl(logs["dynamics.jsonl"], {"phase": "grpo", "step": step, "pass@1": 0.1 * step})
    for step in (1, 2, 3):
        append_jsonl(logs["rollouts.jsonl"], {"phase": "grpo", "step": step, "reward": 0.0})
    _mark_superseded(tmp_path, "grpo", 2)
    for name, log in logs.items():  # the resumed attempt's step 3
        append_jsonl(log, {"phase": "grpo", "step": 3, "loss": 30.0, "pass@1": 0.9, "reward": 1.0})
    for name, log in logs.items():
        rows = read_log_jsonl(log)
        assert max(Counter((r["phase"], r["step"]) for r in rows).values()) == 1, (name, rows)
        assert rows[-1]["step"] == 3 and rows[-1]["pass@1"] == 0.9, name  # the resumed attempt's row
    assert '"event"' not in logs["metrics.jsonl"].read_text()  # nothing of it past step 2: no marker

def test_a_step_logged_once_is_known(tmp_path):
    """A phase restarted from step 0 does not measure its step-0 dynamics again (the lost attempt's row,
    same weights, stays current); a superseded row does not count."""
    from polyray.io import RESUME_EVENT, append_jsonl
    from polyray.learner.loop import _logged

    log = tmp_path / "dynamics.jsonl"
    assert not _logged(log, "grpo", 0)
    append_jsonl(log, {"phase": "grpo", "step": 0})
    append_jsonl(log, {"phase": "grpo", "step": 20})
    assert _logged(log, "grpo", 0) and _logged(log, "grpo", 20) and not _logged(log, "sft", 0)
    append_jsonl(log, {"event": RESUME_EVENT, "phase": "grpo", "step": 0})
    assert _logged(log, "grpo", 0) and not _logged(log, "grpo", 20)
