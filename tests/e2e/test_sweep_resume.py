"""A λ × seed sweep on Ray Tune survives its driver dying: ``polyray sweep --resume`` finishes it.

A 2 λ × 1 seed sweep of polychromic SFT with a small step budget (one phase per trial and two
trials keep it short). Once one trial has finished and the next is mid-phase with a checkpoint
registered, the driver's node dies (the driver and its local Ray cluster, SIGKILL). ``--resume``
restores the Tune experiment: a trial that had finished is not run again (its run was never resumed), the interrupted one continues
its phase from a checkpoint step > 0, and the summary holds both trials. The trials evaluate on
validation only; the selected setting's trial alone is evaluated on test, after the selection (a re-run
reads that evaluation back: ``tests/unit/drivers/test_sweep.py``). Trials are tracked
in MLflow (SQLite store) through Ray Tune's logger callback: every trial ends with a finished
MLflow run holding its parameters and reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.faults import kill_node, registered_step

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
PHASE = "polychromic_sft"  # one phase per trial keeps the test short; λ is its weight
SWEEP = f"""
name: tiny
base: {ROOT / "configs" / "quickstart.yaml"}
overrides:
  task: {{n_test: 4, n_train: 64}}
  phases:
    - {{type: polychromic_sft, name: polychromic_sft, steps: 6, batch_size: 8, prompts_per_step: 2, n_samples: 3,
       checkpoint_every: 2}}
  dynamics: {{every: 6, n_prompts: 4, n_samples: 4, ks: [1, 4]}}
  eval: {{n_samples: 4, ks: [1, 4]}}
  learner: {{sync_check_every: 0, num_workers: 1}}   # (one rank: the run recovery test trains on two)
  cluster: {{dashboard: false}}   # (the ray job test covers the dashboard; here it only costs time)
  tracking: {{backend: mlflow, uri: "sqlite:///{{db}}", experiment: tiny-sweep}}
space:
  phases.0.lam: {{grid: [0.0, 0.5]}}
  seed: {{grid: [0]}}
objective: {{phase: polychromic_sft, metric: val/pass@1}}
"""


def _steps(run_dir: Path, phase: str) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines[:-1] if f'"phase": "{phase}"' in line]
    return max(steps, default=0)


def _finished(run_dir: Path) -> bool:
    try:
        return PHASE in json.loads((run_dir / "results.json").read_text())["phases"]
    except (OSError, ValueError, KeyError):
        return False


def _sweep(path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "polyray.cli", "sweep", str(path), "--output-dir", str(out), *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def test_sweep_driver_killed_mid_trial_resumes(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("{db}", str(tmp_path / "mlflow.db")))
    out = tmp_path / "out"
    proc = _sweep(path, out)
    deadline, victim = time.time() + 900, None
    while proc.poll() is None and time.time() < deadline:
        trials = sorted((out / "trials").glob("*")) if (out / "trials").is_dir() else []
        done = [t for t in trials if _finished(t)]
        running = [t for t in trials if not _finished(t) and _steps(t, PHASE) >= 3 and registered_step(t, PHASE) >= 2]
        if done and running:
            victim = running[0]
            kill_node(proc.pid)  # the driver's node: driver and local cluster at once
            proc.communicate(timeout=60)
            break
        time.sleep(0.5)
    assert victim is not None, f"no kill point reached (exit {proc.poll()}): {(proc.stdout.read() or '')[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    finished_before = {t.name: json.loads((t / "results.json").read_text()) for t in done}

    proc = _sweep(path, out, "--resume")
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-4000:]

    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["trials"]) == 2 and not [t for t in summary["trials"] if t["error"]], summary["trials"]
    # every trial measured on validation (its stage evaluation and the probe), none on test
    assert all(
        f"{PHASE}/val_eval/pass@1" in t["metrics"]
        and f"{PHASE}/val/pass@1" in t["metrics"]
        and f"{PHASE}/pass@1" not in t["metrics"]
        for t in summary["trials"]
    )
    assert summary["best"] is not None and len(summary["settings"]) == 2 and summary["axes"] == ["phases.0.lam", "seed"]
    # the test set: the selected setting's trial only, after the selection
    selected = summary["selected"]
    assert selected["selected_on"] == "validation" and selected["test"]["seeds"] == [0], selected
    assert f"{PHASE}/pass@1" in selected["test"]["metrics"] and not selected["test"]["errors"]
    tested = [t for t in summary["trials"] if "test" in t]
    assert len(tested) == 1 and tested[0]["params"]["phases.0.lam"] == selected["params"]["phases.0.lam"]
    for trial in summary["trials"]:
        results = json.loads((Path(trial["run_dir"]) / "results.json").read_text())
        assert results["eval_split"] == "val" and (PHASE in results.get("test", {})) == (trial is tested[0])
    for name, before in finished_before.items():  # a finished trial is not run again (a test evaluation may follow)
        after = json.loads((out / "trials" / name / "results.json").read_text())
        trained = [s for s in after["stages"] if not s["stage"].startswith("test_")]
        assert after.get("resumed", 0) == 0 and trained == before["stages"], name
    # the interrupted trial continued its phase from a checkpoint, not from step 0
    from polyray.io import RESUME_EVENT

    results = json.loads((victim / "results.json").read_text())
    assert results["resumed"] == 1 and PHASE in results["phases"]
    rows = [json.loads(line) for line in (victim / "metrics.jsonl").read_text().splitlines()]
    markers = [r["step"] for r in rows if r.get("event") == RESUME_EVENT and r.get("phase") == PHASE]
    steps = [r["step"] for r in rows if r.get("phase") == PHASE and "event" not in r]
    # A restart from step 0 would mark the rows past 0 it supersedes (the kill came after step 3). A resume
    # from a checkpoint of the last logged step supersedes nothing, so it writes no marker: then every step
    # is logged once, in order.
    assert all(s > 0 for s in markers), markers
    assert markers or steps == list(range(1, max(steps) + 1)), steps
    assert (out / "sweep.csv").is_file() and (out / "report.html").is_file()
    _check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", summary)
    stages = [s["stage"] for s in json.loads((Path(tested[0]["run_dir"]) / "results.json").read_text())["stages"]]
    assert stages.count(f"test_{PHASE}") == 1, stages


def _check_tracking(uri: str, summary: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])
    finished = {}
    for run in runs:  # an interrupted trial's first MLflow run stays open; its restored trial logs a new one
        if run.info.status == "FINISHED":
            finished[(float(run.data.params["phases.0.lam"]), int(run.data.params["seed"]))] = run
    assert set(finished) == {(0.0, 0), (0.5, 0)}, [r.info for r in runs]
    for trial in summary["trials"]:
        run = finished[(trial["params"]["phases.0.lam"], trial["params"]["seed"])]
        assert run.data.metrics[f"{PHASE}/val/pass_at_1"] == trial["metrics"][f"{PHASE}/val/pass@1"]
        assert run.data.tags["polyray.sweep"] == "tiny"
