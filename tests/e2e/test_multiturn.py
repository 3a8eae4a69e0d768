"""``configs/multiturn.yaml`` end to end, shortened: SFT, then GRPO on countdown_retry episodes on the embedded
model that pretrained on retry dialogues, vLLM rollouts turn by turn, no reward service (the environment
scores). The test table shows pass@1 after the first and the last turn."""

from __future__ import annotations

import json

import pytest
from support.processes import run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

PHASES = [
    {"type": "sft", "steps": 8, "batch_size": 16},
    {"type": "grpo", "steps": 4, "prompts_per_step": 4, "group_size": 4, "async_rollouts": True, "max_lag": 1},
]
SHORT = [
    f"phases={json.dumps(PHASES)}",
    "task.n_test=16",
    "eval.n_samples=4",
    "eval.ks=[1, 4]",
    "cluster.dashboard=false",
]


def test_multiturn_trains_on_episodes_and_reports_pass_at_k_by_turn(tmp_path):
    out = tmp_path / "multiturn"
    done = run_config("configs/multiturn.yaml", out, SHORT)

    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    for stage, record in results["phases"].items():
        by_turn = {t: record[f"turn{t}/pass@1"] for t in (1, 2, 3)}
        assert record["episode_errors"] == 0 and 1 <= record["turns_mean"] <= 3, (stage, record)
        # the final answer's pass@1 is the last turn's
        assert record["pass@1"] == pytest.approx(by_turn[3]), (stage, record)
    # the retries helped the model that pretrained on them: some wrong first answers were put right
    base = results["phases"]["base"]
    assert base["turn3/pass@1"] > base["turn1/pass@1"] and base["turns_mean"] > 1, base
    # the table's by-turn columns
    table = " ".join((done.stdout + done.stderr).split())
    assert "turn1 pass@1" in table and "turn3 pass@1" in table, table[-2000:]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    assert [r["step"] for r in grpo] == [1, 2, 3, 4]
    for row in grpo:
        assert row["episode_errors"] == 0 and 1 <= row["turns_mean"] <= 3, row
        assert 0 <= row["solved_turn1_frac"] <= row["solved_turn3_frac"] <= 1, row
    # no reward service: the environment scored the episodes
    assert "reward_service_start" not in results["timings_s"], results["timings_s"]

    # the report's multi-turn panels: pass@k by turn, the episodes' measures, the episode curves
    from support.browser import draw_report

    panels = ("fig-training", "fig-turns", "fig-episodes")
    seen = draw_report(out / "report.html", panels, screenshot=tmp_path / "report.png")
    assert all(n > 0 for n in seen["drawn"].values()) and all(v > 0.003 for v in seen["ink"].values()), seen
    # per stage a line for each of pass@1 and pass@4, and three bar charts
    assert seen["drawn"]["fig-turns"] == 2 * 3 and seen["drawn"]["fig-episodes"] == 3, seen["drawn"]
