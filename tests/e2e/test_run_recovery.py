"""A run survives any of its processes dying: each fault kills the real process (SIGKILL) at a chosen step.

One run (polychromic SFT with synchronous rollouts, then GRPO through the reward service with rollouts one
step ahead) takes every kill, one after another, to keep CI time down: a learner worker mid-polychromic-SFT,
the rollout worker, the reward replica, the adapter store, a learner worker mid-GRPO, and finally the driver,
after which ``polyray run --resume`` continues it under Ray Train (``learner.keep_ranks`` false) from the kept
ranks' checkpoint (Ray Train past a cut-off record of its own: tests/unit/learner/test_train_checkpoints.py).
It checks: the run finishes; nothing
finished is redone; every phase's adapter comes from exactly ``steps`` optimizer steps; version ids strictly
increase and each maps to one hash; the run's MLflow tracking run (SQLite store) holds every step, its latest
value metrics.jsonl's, across both drivers; and the sync canary (every publish: the rollout worker's log-probs
of a fixed completion under the newest version against the learner's, within 1e-3) held throughout, recoveries
included.
"""

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
from support.faults import kill_node, registered_step

from polyray.learner.checkpoints import snapshot_name

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CANARY_TOL = 1e-3  # float32 (polyray.learner.sync.TOLERANCE)
COMMON = [
    "--set", "task.n_test=8", "--set", "dynamics.every=0", "--set", "learner.sync_check_every=1",
    "--set", "eval.n_samples=4", "--set", "eval.ks=[1, 4]",
    "--set", "cluster.dashboard=false",  # (the ray job test covers the dashboard; here it only costs time)
]  # fmt: skip
GRPO = "{type: grpo, steps: %d, prompts_per_step: 8, group_size: 4, lr: 3.0e-3, kl_beta: 0.02, checkpoint_every: 2}"


def _rows(metrics: Path) -> list[dict]:
    """Every row as written (a row still being written left out)."""
    rows = []
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _progress(metrics: Path) -> tuple[str | None, int]:
    steps = [r for r in _rows(metrics) if "event" not in r]
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


def _run(out: Path, phases: str, kills: list[tuple[str, int, str]], extra=(), timeout_s=900) -> tuple[int, str, list]:
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


def _check_run(out: Path, steps: dict[str, int]) -> dict:
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
    published = [r for r in _rows(out / "metrics.jsonl") if "canary_gap" in r]
    assert published and max(r["canary_gap"] for r in published) <= CANARY_TOL
    versions = [r["version"] for r in published]
    assert versions == sorted(set(versions)), versions
    records = [json.loads(p.read_text()) for p in sorted((out / "adapter_store").glob("v*/record.json"))]
    ids = [r["version"] for r in records]
    assert ids == sorted(set(ids)) and all(len(r["sha256"]) == 64 for r in records)
    assert set(results["versions"].values()) <= set(ids)  # phase adapters pinned in the store
    return results


def test_run_survives_every_process_dying(tmp_path):
    out = tmp_path / "run"
    poly = "{type: polychromic_sft, steps: 6, batch_size: 8, prompts_per_step: 4, n_samples: 3, checkpoint_every: 2}"
    # 14 steps: the driver's kill (at step 9) lands mid-phase even when the poll lags a loaded machine's steps;
    # with 10, GRPO once finished training first, and the resume had no phase to continue
    grpo = GRPO[:-1] % 14 + ", async_rollouts: true, max_lag: 1}"  # the rollout kill hits a prefetch too
    phases = f"[{poly}, {grpo}]"
    kills = [
        ("polychromic_sft", 3, "LearnerRank"),  # learner rank mid-polychromic-SFT
        ("grpo", 2, "RolloutWorker"),  # rollout worker (vLLM engine) mid-GRPO
        ("grpo", 4, "ServeReplica:reward"),  # the reward replica
        ("grpo", 5, "AdapterStore"),  # the run's adapter store
        ("grpo", 7, "LearnerRank"),  # learner rank mid-GRPO
        ("grpo", 9, "driver"),  # the driver, and the local cluster with it
    ]
    tracking = ["--set", "tracking.backend=mlflow", "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    code, output, done = _run(out, phases, kills, extra=tracking)
    assert code == -signal.SIGKILL and len(done) == len(kills), output[-3000:]
    before = json.loads((out / "results.json").read_text())
    assert set(before["phases"]) == {"base", "polychromic_sft"}
    assert not (out / "checkpoints" / "grpo" / snapshot_name()).exists()  # the kept ranks' checkpoints only

    # resumed by a Ray Train fit: it continues GRPO from the kept ranks' newest whole checkpoint
    resume = ["--resume", "--set", "learner.keep_ranks=false", *tracking]
    code, output, _ = _run(out, phases, [], extra=resume)
    assert code == 0, output[-4000:]
    assert (out / "checkpoints" / "grpo" / snapshot_name()).is_file(), "the resume did not run under Ray Train"
    results = _check_run(out, {"polychromic_sft": 6, "grpo": 14})
    stages = [(s["stage"], s["attempt"]) for s in results["stages"]]
    # nothing finished is redone: base and polychromic SFT trained and evaluated once, by the first attempt
    assert stages == [
        ("eval_base", 0),
        ("train_polychromic_sft", 0),
        ("eval_polychromic_sft", 0),
        ("train_grpo", 1),
        ("eval_grpo", 1),
    ], stages
    assert results["phases"]["polychromic_sft"] == before["phases"]["polychromic_sft"]
    from polyray.io import RESUME_EVENT

    rows = _rows(out / "metrics.jsonl")
    markers = [(m["phase"], m["step"]) for m in rows if m.get("event") == RESUME_EVENT]
    # each learner restart and the driver's resume continued its phase from a checkpoint, never from step 0
    assert markers and all(s > 0 for _, s in markers), markers
    for phase in ("polychromic_sft", "grpo"):
        assert [r["step"] for r in rows if r.get("phase") == phase and "event" not in r].count(1) == 1, phase

    _check_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", out, results, {"polychromic_sft": 6, "grpo": 14})


def _check_tracking(uri: str, out: Path, results: dict, steps: dict[str, int]) -> None:
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
