"""The learner's worker function end to end without Ray: SFT, then GRPO from its adapter with the
phase-start KL reference and micro-batches, a worker that dies after a checkpoint and one that
resumes from it. The same scenario runs on CUDA in tests/gpu/test_gpu_worker.py."""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import check_two_phase_run, run_sft_then_grpo, tiny_model_dir

pytestmark = [pytest.mark.slow]


def test_worker_function_runs_both_phases_and_resumes_on_cpu(tmp_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        check_two_phase_run(run_sft_then_grpo(tiny_model_dir(tmp_path), tmp_path / "run"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_an_attempt_resumed_at_the_phase_end_hands_over_its_checkpoints_version(tmp_path):
    """A learner killed after its last step's checkpoint and before the final adapter was saved (as a
    driver killed then leaves it): the attempt that resumes from that checkpoint has nothing left to
    train, so it publishes nothing and its final adapter carries the checkpoint's version, which the
    rollouts already hold. (It used to publish the same weights again under a new id, which no
    checkpoint or result named.)"""
    import json

    import torch.distributed as dist

    from support.phase_harness import TASK, AdapterPool, LocalSession
    from polyray.config import RunConfig
    from polyray.learner.job import LearnerJob
    from polyray.learner.loop import run_rank

    torch.set_num_threads(1)
    model_dir = tiny_model_dir(tmp_path)
    run = RunConfig(
        task=TASK.model_dump(),
        learner={"num_workers": 1, "micro_batch_tokens": 32, "sync_check_every": 0, "lora": {"r": 4, "alpha": 8}},
        phases=[
            {
                "type": "grpo",
                "name": "grpo",
                "steps": 2,
                "prompts_per_step": 2,
                "group_size": 3,
                "checkpoint_every": 2,
                "sampling": {"max_tokens": 4},
            }
        ],
    )
    out, storage = tmp_path / "run", tmp_path / "run" / "checkpoints" / "grpo"
    pool = AdapterPool(model_dir, None, version=0)
    config = LearnerJob.for_phase(run, 0, model_dir=str(model_dir), output_dir=str(out), pool=pool)
    try:
        with pytest.raises(RuntimeError, match="killed after its step-2 checkpoint"):
            run_rank(config, LocalSession(storage, die_after=2))
        assert not (out / "adapters" / "grpo").exists()
        checkpoint = json.loads((storage / "step-2" / "state.json").read_text())
        published = pool.version
        assert checkpoint["step"] == 2 and checkpoint["version"] == published  # the last step's publish
        run_rank(config, LocalSession(storage))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    final = json.loads((out / "adapters" / "grpo" / "polyray_version.json").read_text())["version"]
    assert final == checkpoint["version"] == pool.version == published
