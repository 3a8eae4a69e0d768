"""A run survives any of its component processes dying: each fault kills the real process (SIGKILL) at a chosen
step.

One run (polychromic SFT with synchronous rollouts, then GRPO through the reward service with rollouts one
step ahead) takes every kill, one after another, to keep CI time down: a learner worker mid-polychromic-SFT,
the rollout worker, the reward replica, the adapter store, and a learner worker mid-GRPO. It checks: the run
finishes; nothing finished is redone; every phase's adapter comes from exactly ``steps`` optimizer steps;
version ids strictly increase and each maps to one hash; the run's MLflow tracking run (SQLite store) holds
every step, its latest value metrics.jsonl's; and the sync canary (every publish: the rollout worker's
log-probs of a fixed completion under the newest version against the learner's, within 1e-3) held
throughout, recoveries included. The driver's own death and ``polyray run --resume``: test_run_resume.py.
"""

from __future__ import annotations

import pytest
from support.faults import GRPO, check_recovered_run, check_tracking, run_rows, run_with_kills

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow, pytest.mark.e2e]


def test_run_survives_every_component_process_dying(tmp_path):
    out = tmp_path / "run"
    poly = "{type: polychromic_sft, steps: 6, batch_size: 8, prompts_per_step: 4, n_samples: 3, checkpoint_every: 2}"
    grpo = GRPO[:-1] % 10 + ", async_rollouts: true, max_lag: 1}"  # the rollout kill hits a prefetch too
    phases = f"[{poly}, {grpo}]"
    kills = [
        ("polychromic_sft", 3, "LearnerRank"),  # learner rank mid-polychromic-SFT
        ("grpo", 2, "RolloutWorker"),  # rollout worker (vLLM engine) mid-GRPO
        ("grpo", 4, "ServeReplica:reward"),  # the reward replica
        ("grpo", 5, "AdapterStore"),  # the run's adapter store
        ("grpo", 7, "LearnerRank"),  # learner rank mid-GRPO
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = ["--set", "tracking.backend=mlflow", "--set", f"tracking.uri={uri}"]
    code, output, done = run_with_kills(out, phases, kills, extra=tracking)
    assert code == 0 and len(done) == len(kills), output[-4000:]
    steps = {"polychromic_sft": 6, "grpo": 10}
    results = check_recovered_run(out, steps)
    stages = [(s["stage"], s["attempt"]) for s in results["stages"]]
    # one driver: every stage ran once
    assert stages == [
        ("eval_base", 0),
        ("train_polychromic_sft", 0),
        ("eval_polychromic_sft", 0),
        ("train_grpo", 0),
        ("eval_grpo", 0),
    ], stages
    from polyray.io import RESUME_EVENT

    rows = run_rows(out / "metrics.jsonl")
    markers = [(m["phase"], m["step"]) for m in rows if m.get("event") == RESUME_EVENT]
    # each learner restart continued its phase from a checkpoint, never from step 0 (a kill right after a
    # checkpoint leaves no step past it to mark superseded; step 1's single row below says none started again)
    assert all(s > 0 for _, s in markers), markers
    for phase in steps:
        assert [r["step"] for r in rows if r.get("phase") == phase and "event" not in r].count(1) == 1, phase

    check_tracking(uri, out, results, steps)
