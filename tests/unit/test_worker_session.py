"""The learner's worker function end to end without Ray: SFT, then GRPO from its adapter with the
phase-start KL reference and micro-batches, a worker that dies after a checkpoint and one that
resumes from it. The same scenario runs on CUDA in tests/gpu/test_gpu_worker.py."""

from __future__ import annotations

import pytest
import torch

from phase_harness import check_two_phase_run, run_sft_then_grpo, tiny_model_dir

pytestmark = [pytest.mark.slow]


def test_worker_function_runs_both_phases_and_resumes_on_cpu(tmp_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        check_two_phase_run(run_sft_then_grpo(tiny_model_dir(tmp_path), tmp_path / "run"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
