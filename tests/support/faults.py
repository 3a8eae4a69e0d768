"""Fault injection shared by the end-to-end recovery tests: real processes, really killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CANARY_TOL = 1e-3  # float32 (polyray.learner.sync.TOLERANCE)
# a small quickstart: every publish canary-checked
COMMON = [
    "--set", "task.n_test=8", "--set", "dynamics.every=0", "--set", "learner.sync_check_every=1",
    "--set", "eval.n_samples=4", "--set", "eval.ks=[1, 4]",
    "--set", "cluster.dashboard=false",  # (the ray job test covers the dashboard; here it only costs time)
]  # fmt: skip
GRPO = "{type: grpo, steps: %d, prompts_per_step: 8, group_size: 4, lr: 3.0e-3, kl_beta: 0.02, checkpoint_every: 2}"


def kill_node(pid: int) -> None:
    """SIGKILL the process ``pid`` and every process under it (its local Ray cluster) at once, as
    when its node dies: killed one by one, a learner could finish its phase before its cluster noticed."""
    tree = psutil.Process(pid).children(recursive=True)
    for p in [psutil.Process(pid), *tree]:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=60)


def registered_step(run_dir: Path, phase: str) -> int:
    """The newest checkpoint step a restart of ``phase`` of the run in ``run_dir`` resumes from: the newest
    one Ray Train has registered (its record trails the step that wrote the checkpoint), or with kept ranks
    the newest one whole in storage."""
    from polyray.learner.checkpoints import newest_whole_checkpoint
    from polyray.storage import Storage

    try:
        snapshot = json.loads((run_dir / "checkpoints" / phase / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        found = newest_whole_checkpoint(Storage(run_dir / "checkpoints"), phase)
        return found.step if found else 0
    return max((c["metrics"]["step"] for c in snapshot["checkpoint_results"]), default=0)


def run_rows(metrics: Path) -> list[dict]:
    """Every row as written (a row still being written left out)."""
    rows = []
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _progress(metrics: Path) -> tuple[str | None, int]:
    steps = [r for r in run_rows(metrics) if "event" not in r]
    return (steps[-1]["phase"], steps[-1]["step"]) if steps else (None, 0)


def _processes(root: int, marker: str) -> list[psutil.Process]:
    """Processes under ``root`` (the run's driver: its local Ray cluster is its child) whose command
    line (Ray's process title) contains ``marker``; this session's own Ray processes are not among them."""
    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


RESUMES = ("LearnerRank", "driver")  # kills that resume the phase from a checkpoint


def run_with_kills(
    out: Path, phases: str, kills: list[tuple[str, int, str]], extra=(), timeout_s=900
) -> tuple[int, str, list]:
    """``polyray run`` with ``kills``: (phase, step, process marker) -> SIGKILL one such process once the
    phase's metrics reach that step (and, for a kill the phase resumes from, a checkpoint of it is
    registered). Returns (exit code, output, kills done as (phase, step, marker))."""
    cmd = [
        sys.executable,
        "-m",
        "polyray.cli",
        "run",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--output-dir",
        str(out),
        "--set",
        f"phases={phases}",
        *COMMON,
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    done, pending = [], list(kills)
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline and pending:
        phase, step = _progress(out / "metrics.jsonl")
        want_phase, want_step, marker = pending[0]
        if phase == want_phase and step >= want_step and (marker not in RESUMES or registered_step(out, phase) > 0):
            if marker == "driver":  # the driver's node goes down: the driver and its local cluster die together
                kill_node(proc.pid)
            else:
                victims = _processes(proc.pid, marker)
                assert victims, f"no process matching {marker!r} at {phase} step {step}"
                os.kill(victims[-1].pid, signal.SIGKILL)
            done.append((phase, step, marker))
            pending.pop(0)
        time.sleep(0.2)
    try:
        output = proc.communicate(timeout=max(1, deadline - time.time()))[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    assert not pending, f"kills not done (run ended first): {pending}\n{output[-3000:]}"
    return proc.returncode, output, done


def check_recovered_run(out: Path, steps: dict[str, int]) -> dict:
    """What every recovered run must show; returns results.json."""
    from polyray.io import read_log_jsonl

    results = json.loads((out / "results.json").read_text())
    assert {"base", *steps} <= set(results["phases"])
    rows = read_log_jsonl(out / "metrics.jsonl")  # superseded rows (past a resumed checkpoint) dropped
    for phase, n in steps.items():
        assert [r["step"] for r in rows if r["phase"] == phase] == list(range(1, n + 1)), phase
        # the phase's adapter comes from exactly n optimizer steps: its last checkpoint says so
        states = [json.loads(p.read_text()) for p in (out / "checkpoints" / phase).glob("checkpoint_*/state.json")]
        assert max(s["step"] for s in states) == n
        final = json.loads((out / "adapters" / phase / "polyray_version.json").read_text())["version"]
        assert final == max(s["version"] for s in states) == results["versions"][phase]
    # every publish of every attempt: canary-checked, within tolerance; ids strictly increase
    published = [r for r in run_rows(out / "metrics.jsonl") if "canary_gap" in r]
    assert published and max(r["canary_gap"] for r in published) <= CANARY_TOL
    versions = [r["version"] for r in published]
    assert versions == sorted(set(versions)), versions
    records = [json.loads(p.read_text()) for p in sorted((out / "adapter_store").glob("v*/record.json"))]
    ids = [r["version"] for r in records]
    assert ids == sorted(set(ids)) and all(len(r["sha256"]) == 64 for r in records)
    assert set(results["versions"].values()) <= set(ids)  # phase adapters pinned in the store
    return results


def check_tracking(uri: str, out: Path, results: dict, steps: dict[str, int]) -> None:
    """One MLflow run for the run and its resume: finished, every step of every phase sent (the
    resumed driver sends on from where the killed one stopped), each step's latest value the one in
    metrics.jsonl (a step a restarted learner ran again is sent again, later), and the evaluations."""
    from mlflow.tracking import MlflowClient

    from polyray.io import read_log_jsonl

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("polyray").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["phases.1.type"] == "grpo"
    current = read_log_jsonl(out / "metrics.jsonl")
    for phase, n in steps.items():
        history = client.get_metric_history(run.info.run_id, f"{phase}/train/loss")
        latest = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
        assert sorted(latest) == list(range(1, n + 1)), (phase, sorted(m.step for m in history))
        loss = {r["step"]: r["loss"] for r in current if r["phase"] == phase}
        assert latest == pytest.approx(loss), phase
        assert run.data.metrics[f"{phase}/pass_at_1"] == pytest.approx(results["phases"][phase]["pass@1"])
