"""GRPO on a code task, rewarded by the sandbox through the reward service, end to end.

One ``polyray run`` of ``configs/code.yaml``, shortened (no SFT): countdown written as a Python
function, a GRPO phase scored by ``code_exec`` (each rollout's unit test run in the sandbox), then one scored
by a weighted sum of ``code_exec`` and ``length``, both through the Ray Serve reward service, with
``learner.log_rollouts`` on. Afterwards the same items are scored again by the service's scorer in this
process (what a replica runs for a request; the service over HTTP is tests/integration/test_reward_service.py's):
every reward the learner used must equal its answer for the item.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "code.yaml"
# configs/code.yaml's two GRPO phases (no SFT), 2 steps of 4 prompts x 4 samples each
PHASES = [
    {**p, "steps": 2, "prompts_per_step": 4, "group_size": 4} for p in yaml.safe_load(CONFIG.read_text())["phases"][1:]
]
SHORT = [
    "--set",
    "model.tiny.pretrain_steps=300",
    "--set",
    "task.n_train=64",
    "--set",
    "task.n_test=8",
    "--set",
    f"phases={json.dumps(PHASES)}",
    "--set",
    "eval.n_samples=4",
    "--set",
    "eval.ks=[1, 4]",
    "--set",
    "learner.log_rollouts=true",
    "--set",
    "cluster.dashboard=false",  # (the Ray job test covers the dashboard)
]


def test_code_grpo_rewards_from_the_sandbox_equal_the_services(tmp_path):
    from polyray.config import load_config, phase_reward
    from polyray.io import read_log_jsonl
    from polyray.reward.scorer import RewardScorer
    from polyray.reward.service import resolve_reward
    from polyray.tasks import build_task

    out = tmp_path / "code"
    cmd = [sys.executable, "-m", "polyray.cli", "run", str(CONFIG), "--output-dir", str(out), *SHORT]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "grpo_tests", "grpo_tests_short"}

    run = load_config(CONFIG, [s for s in SHORT if s != "--set"])
    task = build_task(run.task)
    rows = read_log_jsonl(out / "rollouts.jsonl")  # current rows only (a restarted learner supersedes some)
    scorer = RewardScorer()  # the reward service's defaults
    for phase in run.phases:
        logged = [r for r in rows if r["phase"] == phase.name]
        assert len(logged) == 2 * 4 * 4, phase.name  # steps x prompts x group
        name, params = resolve_reward(phase_reward(run, phase), task)
        answers = scorer.score(name, [r["item"] for r in logged], params, from_request=True)
        assert [r["reward"] for r in logged] == [a.score for a in answers], phase.name
        if name == "weighted_sum":  # code_exec + 0.2 length, each answer's components shown
            parts = [a.detail["components"] for a in answers]
            assert all(p["code_exec"] + 0.2 * p["length"] == pytest.approx(a.score) for p, a in zip(parts, answers))
            weighted = (name, params)
    # the sandbox path is live: the references pass, the target written as a literal fails
    prompts = [p for p in task.prompts("test", 16) if p.meta["target"] not in p.meta["numbers"]][:8]
    refs = scorer.score(
        "code_exec", [task.reward_item(p, p.reference) for p in prompts], {"timeout_s": 5.0}, from_request=True
    )
    cheats = scorer.score(
        "code_exec", [task.reward_item(p, f" {p.meta['target']}") for p in prompts], from_request=True
    )
    assert [r.score for r in refs] == [1.0] * 8 and [r.score for r in cheats] == [0.0] * 8
    # the weighted sum adds its components: a passing program scores >= 1 - 0.2 above a failing one
    items = [task.reward_item(p, c) for p in prompts[:2] for c in (p.reference, f" {p.meta['target']}")]
    mixed = [a.score for a in scorer.score(weighted[0], items, weighted[1], from_request=True)]
    assert mixed[0] - mixed[1] >= 1 - 0.2 and mixed[2] - mixed[3] >= 1 - 0.2, mixed
