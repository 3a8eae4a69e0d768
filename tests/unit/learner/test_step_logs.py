"""Rank 0's step logs (polyray.learner.logs): the files themselves, or an actor on the driver's node."""

from __future__ import annotations

import pytest

from polyray.io import RESUME_EVENT, read_log_jsonl
from polyray.learner.logs import LogFiles, StepLogs


def test_the_files_take_step_logs_only_and_read_back_current_rows(tmp_path):
    logs = StepLogs(LogFiles(tmp_path / "run"))  # the run directory is made on the first append
    assert logs.rows("metrics.jsonl") == []
    logs.append("metrics.jsonl", {"phase": "grpo", "step": 1}, {"phase": "grpo", "step": 2})
    logs.append("metrics.jsonl")  # nothing to write: no call, no file change
    logs.append("metrics.jsonl", {"event": RESUME_EVENT, "phase": "grpo", "step": 1})
    assert logs.rows("metrics.jsonl") == [{"phase": "grpo", "step": 1}]
    with pytest.raises(ValueError, match="'../results.json' is not a step log"):
        logs.append("../results.json", {"x": 1})
    with pytest.raises(ValueError, match="one of the two"):
        StepLogs()


def test_latest_is_each_phases_last_metrics_row_the_driver_follows(tmp_path):
    logs = StepLogs(LogFiles(tmp_path))
    assert logs.latest("sft") is None
    logs.append("metrics.jsonl", {"phase": "sft", "step": 1, "loss": 2.0}, {"phase": "sft", "step": 2, "loss": 1.5})
    logs.append("metrics.jsonl", {"phase": "grpo", "step": 1, "reward_mean": 0.2})
    logs.append("rollouts.jsonl", {"phase": "sft", "step": 3})  # another log: not a step's metrics
    assert logs.latest("sft") == {"phase": "sft", "step": 2, "loss": 1.5}
    assert logs.latest("grpo") == {"phase": "grpo", "step": 1, "reward_mean": 0.2}
    assert logs.latest("dpo") is None


@pytest.mark.ray
def test_a_remote_rank_writes_through_the_actor_on_the_drivers_node(ray_cluster, tmp_path):
    """A task elsewhere appends through the handle it was given; the rows are in the driver's run
    directory once ``append`` returns, and the handle reads them back."""
    import ray

    logs = StepLogs.on_driver_node(tmp_path)

    @ray.remote(num_cpus=0)
    def rank0(logs: StepLogs, steps: int) -> list[dict]:
        for step in range(1, steps + 1):
            logs.append("metrics.jsonl", {"phase": "sft", "step": step})
        logs.append("rollouts.jsonl", *({"phase": "sft", "step": 1, "i": i} for i in range(3)))
        return logs.rows("metrics.jsonl")

    try:
        assert ray.get(rank0.remote(logs, 3)) == [{"phase": "sft", "step": s} for s in (1, 2, 3)]
        assert logs.latest("sft") == {"phase": "sft", "step": 3}  # what the driver's progress bar polls
        assert [r["i"] for r in read_log_jsonl(tmp_path / "rollouts.jsonl")] == [0, 1, 2]
        with pytest.raises(ValueError, match="not a step log"):
            logs.append("checkpoints.jsonl", {"x": 1})
    finally:
        logs.close()
