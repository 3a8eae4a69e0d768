"""``--resume``: which run directory a run may start in or continue, and that both entrypoints pass it on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from polyray.config import RunConfig, load_config
from polyray.io import ConfigError, file_sha256
from polyray.learner.logs import LogFiles, StepLogs
from polyray.drivers.results import RunResults, open_run_dir

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
USERDATA = ROOT / "tests" / "fixtures" / "userdata" / "prompt_completion.jsonl"


def test_a_new_run_refuses_a_directory_that_holds_one(tmp_path):
    run = load_config(QUICKSTART)
    assert open_run_dir(run, tmp_path / "r", resume=False) == RunResults(name="quickstart", eval_split="test")
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
    with pytest.raises(ConfigError, match="config differs from the run's .* in: phases.1.steps, seed$"):
        open_run_dir(other, out, resume=True)
    # how the learner's ranks run is not what the run computes: a resume may change it
    execution = ["learner.keep_ranks=false", "rollout.share_across_trials=false"]
    assert open_run_dir(load_config(QUICKSTART, execution), out, resume=True).name == "quickstart"
    assert open_run_dir(run, out, resume=True) == RunResults(name="quickstart", eval_split="test")
    (out / "results.json").write_text(json.dumps({"name": "quickstart", "phases": {"base": {"pass@1": 0.1}}}))
    results = open_run_dir(run, out, resume=True)
    assert results.evaluations["base"].pass_at_k[1].mean == 0.1 and results.resumed == 1 and results.versions == {}
    assert results.evaluations["base"].to_json() == {"pass@1": 0.1}  # read back through the record, unchanged


def _replies_run(path: str, **extra) -> RunConfig:
    return RunConfig(task={"type": "replies", "path": path}, **extra)


def test_resume_from_another_working_directory_with_the_same_data(tmp_path, monkeypatch):
    """A run started in A with a relative data path continues from B holding a copy of the data (a new
    ``ray job submit --working-dir`` unpacks a fresh copy), and from a copy elsewhere on a shared volume."""
    data = tmp_path / "A" / "data" / "rows.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(USERDATA.read_text())
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "A")
    first = _replies_run("data/rows.jsonl")
    assert first.task.path == str(data)  # made absolute against the working directory
    open_run_dir(first, out, resume=False)
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["cwd"] == str(tmp_path / "A") and inputs["digests"] == {"task.path": f"sha256:{file_sha256(data)}"}

    shutil.copytree(tmp_path / "A", tmp_path / "B")
    monkeypatch.chdir(tmp_path / "B")
    assert open_run_dir(_replies_run("data/rows.jsonl"), out, resume=True).evaluations == {}
    shared = tmp_path / "mnt" / "rows.jsonl"  # the same bytes at another absolute path
    shared.parent.mkdir()
    shutil.copy(data, shared)
    open_run_dir(_replies_run(str(shared)), out, resume=True)


def test_resume_refuses_changed_data_or_settings_naming_the_field(tmp_path, monkeypatch):
    data = tmp_path / "A" / "rows.jsonl"
    data.parent.mkdir()
    data.write_text(USERDATA.read_text())
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "A")
    open_run_dir(_replies_run("rows.jsonl", init_adapter=str(adapter)), out, resume=False)
    data.write_text(data.read_text() + '{"prompt": "one more", "completion": "row"}\n')  # same path, new content
    with pytest.raises(ConfigError, match=r"differs from the run's .* in: task.path \(content\)$"):
        open_run_dir(_replies_run("rows.jsonl", init_adapter=str(adapter)), out, resume=True)
    data.write_text(USERDATA.read_text())
    (adapter / "adapter_config.json").write_text('{"r": 16}')  # an input directory's file changed
    with pytest.raises(ConfigError, match=r"in: init_adapter \(content\)$"):
        open_run_dir(_replies_run("rows.jsonl", init_adapter=str(adapter)), out, resume=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    open_run_dir(_replies_run("rows.jsonl", init_adapter=str(adapter)), out, resume=True)  # back as it was
    with pytest.raises(ConfigError, match=r"in: task.n_test, task.seed$"):  # a changed setting, not a path
        changed = RunConfig(
            task={"type": "replies", "path": "rows.jsonl", "seed": 1, "n_test": 2}, init_adapter=str(adapter)
        )
        open_run_dir(changed, out, resume=True)
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "rows.jsonl").write_text(USERDATA.read_text().replace("topic", "subject"))
    monkeypatch.chdir(tmp_path / "B")  # another working directory whose file of that name holds other data
    with pytest.raises(ConfigError, match=r"in: task.path \(content\)$"):
        open_run_dir(_replies_run("rows.jsonl", init_adapter=str(adapter)), out, resume=True)


def test_a_run_without_inputs_json_compares_paths_as_written(tmp_path, monkeypatch):
    """A run started before polyray recorded its inputs: the paths must be the same strings."""
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "rows.jsonl").write_text(USERDATA.read_text())
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "A")
    open_run_dir(_replies_run("rows.jsonl"), out, resume=False)
    (out / "inputs.json").unlink()
    open_run_dir(_replies_run("rows.jsonl"), out, resume=True)
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    monkeypatch.chdir(tmp_path / "B")
    with pytest.raises(ConfigError, match=r"in: task.path$"):
        open_run_dir(_replies_run("rows.jsonl"), out, resume=True)


def test_differences_name_the_leaves():
    from polyray.config.resume import differences

    old = {"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 1}], "f": 1}
    assert differences(old, old) == []
    new = {"a": {"b": 2, "c": [1, 2, 3]}, "d": [{"e": 2}], "g": 1}
    assert differences(old, new) == ["a.b", "a.c", "d.0.e", "f", "g"]


def test_both_entrypoints_pass_resume_on(monkeypatch, tmp_path):
    import jobs.train
    import polyray.drivers.run
    from typer.testing import CliRunner

    from polyray.cli import app

    calls = []
    fake = lambda run, out, resume=False, serve_generation=False, verbose=False: calls.append(  # noqa: E731
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
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "poly", 0)  # nothing logged yet: no marker
    assert not log.exists()
    for step in (1, 2, 3):
        append_jsonl(log, {"phase": "poly", "step": step, "loss": float(step)})
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "poly", 0)  # restart from scratch
    assert read_log_jsonl(log) == []
    for step in (1, 2, 3, 4):
        append_jsonl(log, {"phase": "poly", "step": step, "loss": 10.0 + step})
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "poly", 4)  # nothing past step 4: no marker
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "grpo", 0)  # another phase: no marker
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "poly", 2)  # restart from the step-2 checkpoint
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
    _mark_superseded(StepLogs(LogFiles(tmp_path)), "grpo", 2)
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

    log, logs = tmp_path / "dynamics.jsonl", StepLogs(LogFiles(tmp_path))
    assert not _logged(logs, "dynamics.jsonl", "grpo", 0)
    append_jsonl(log, {"phase": "grpo", "step": 0})
    append_jsonl(log, {"phase": "grpo", "step": 20})
    assert _logged(logs, "dynamics.jsonl", "grpo", 0) and _logged(logs, "dynamics.jsonl", "grpo", 20)
    assert not _logged(logs, "dynamics.jsonl", "sft", 0) and not _logged(logs, "metrics.jsonl", "grpo", 0)
    append_jsonl(log, {"event": RESUME_EVENT, "phase": "grpo", "step": 0})
    assert _logged(logs, "dynamics.jsonl", "grpo", 0) and not _logged(logs, "dynamics.jsonl", "grpo", 20)


@pytest.mark.parametrize(
    ("trained", "adapter_written", "world"),
    [((), (), 2), (("base", "sft"), (), 1), (("base",), ("sft",), 1), (("base", "sft", "grpo"), (), None)],
    ids=["fresh", "sft-evaluated", "sft-written", "all-trained"],
)
def test_the_learners_ranks_start_early_for_the_first_phase_still_to_train(
    tmp_path, monkeypatch, trained, adapter_written, world
):
    """A run starts its kept ranks while its engines start, as many as the first phase it will still train
    needs (a resumed run skips what it holds), and none when it trains nothing."""
    import polyray.learner.group as group_module
    from polyray.drivers.run import RunState, start_learner

    started = []

    class Group:
        def __init__(self, run, keeper=None):
            self.keeper = keeper

        def start(self, n: int) -> None:
            started.append(n)

    monkeypatch.setattr(group_module, "LearnerGroup", Group)
    run = load_config(QUICKSTART)
    assert [run.phase_workers(i) for i in range(len(run.phases))] == [2, 1]  # SFT on two ranks, GRPO on one
    results = RunResults(name="quickstart", eval_split="test")
    for stage in trained:
        results.evaluations[stage] = _record(0.1)
    for phase in adapter_written:
        (tmp_path / "adapters" / phase).mkdir(parents=True)
        (tmp_path / "adapters" / phase / "polyray_version.json").write_text('{"version": 3}')
    state = RunState(run, tmp_path, bool(trained or adapter_written), results, worker_run=run)
    start_learner(state)
    assert started == ([] if world is None else [world])
    assert (state.learner is None) == (world is None)
    start_learner(RunState(run.model_copy(update={"learner": run.learner.model_copy(update={"keep_ranks": False})}),
                           tmp_path / "other", False, RunResults(name="q", eval_split="test")))  # fmt: skip
    assert started == ([] if world is None else [world])  # a Ray Train fit per phase: nothing kept


def _record(pass1: float):
    from polyray.eval.record import EvalRecord

    return EvalRecord.from_json({"pass@1": pass1})
