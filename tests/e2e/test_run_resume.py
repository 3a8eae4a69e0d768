"""A run survives its driver's node dying: ``polyray run --resume`` continues it.

The driver is killed with its local Ray cluster (SIGKILL, the node going down) mid-GRPO, after a finished
SFT phase; ``polyray run --resume`` continues it under Ray Train (``learner.keep_ranks`` false) from the
kept ranks' checkpoint (Ray Train past a cut-off record of its own: tests/unit/learner/test_train_checkpoints.py).
It checks: the run finishes; nothing finished is redone; GRPO's adapter comes from exactly ``steps``
optimizer steps; version ids strictly increase and each maps to one hash; the run's MLflow tracking run
(SQLite store) holds every step, its latest value metrics.jsonl's, across both drivers; and the sync canary
held on every publish of both drivers. Each component process's death: test_run_recovery.py.
"""

from __future__ import annotations

import json
import signal

import pytest
from support.faults import GRPO, check_recovered_run, check_tracking, run_rows, run_with_kills

from polyray.learner.checkpoints import snapshot_name

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow, pytest.mark.e2e]


def test_a_run_resumes_after_its_driver_dies(tmp_path):
    out = tmp_path / "run"
    sft = "{type: sft, steps: 4, batch_size: 8, checkpoint_every: 2}"
    # the kill (at step 3, once step 2's checkpoint is whole) lands mid-phase even when the poll lags a
    # loaded machine's steps by a few
    grpo = GRPO[:-1] % 8 + ", async_rollouts: true, max_lag: 1}"
    phases = f"[{sft}, {grpo}]"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = ["--set", "tracking.backend=mlflow", "--set", f"tracking.uri={uri}"]
    code, output, done = run_with_kills(out, phases, [("grpo", 3, "driver")], extra=tracking)
    assert code == -signal.SIGKILL and done, output[-3000:]
    before = json.loads((out / "results.json").read_text())
    assert set(before["phases"]) == {"base", "sft"}
    assert not (out / "checkpoints" / "grpo" / snapshot_name()).exists()  # the kept ranks' checkpoints only

    # resumed by a Ray Train fit: it continues GRPO from the kept ranks' newest whole checkpoint
    resume = ["--resume", "--set", "learner.keep_ranks=false", *tracking]
    code, output, _ = run_with_kills(out, phases, [], extra=resume)
    assert code == 0, output[-4000:]
    assert (out / "checkpoints" / "grpo" / snapshot_name()).is_file(), "the resume did not run under Ray Train"
    steps = {"sft": 4, "grpo": 8}
    results = check_recovered_run(out, steps)
    stages = [(s["stage"], s["attempt"]) for s in results["stages"]]
    # nothing finished is redone: base and SFT trained and evaluated once, by the first attempt
    assert stages == [
        ("eval_base", 0),
        ("train_sft", 0),
        ("eval_sft", 0),
        ("train_grpo", 1),
        ("eval_grpo", 1),
    ], stages
    assert results["phases"]["sft"] == before["phases"]["sft"]
    from polyray.io import RESUME_EVENT

    rows = run_rows(out / "metrics.jsonl")
    markers = [(m["phase"], m["step"]) for m in rows if m.get("event") == RESUME_EVENT]
    # the resume continued GRPO from a checkpoint, never from step 0 (a kill right after a checkpoint leaves
    # no step past it to mark superseded; step 1's single row below says it did not start again)
    assert all(p == "grpo" and s > 0 for p, s in markers), markers
    for phase in steps:
        assert [r["step"] for r in rows if r.get("phase") == phase and "event" not in r].count(1) == 1, phase

    check_tracking(uri, out, results, steps)
