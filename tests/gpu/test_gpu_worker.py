"""The learner's worker function on CUDA, as users run it: NCCL at world size 1, a bfloat16 base
with float32 LoRA, SFT then GRPO from SFT's adapter with the phase-start KL reference, micro-batches,
a worker that dies before its step-4 checkpoint and one that resumes from step 2's (checkpoint
reload onto the GPU). Needs PyTorch, transformers and peft, not Ray: the worker function runs in
a plain torch.distributed group (``phase_harness.LocalSession``). Run it with ``make test-gpu``."""

from __future__ import annotations

import time

import pytest
import torch

from phase_harness import check_two_phase_run, run_sft_then_grpo, tiny_model_dir

pytestmark = [pytest.mark.gpu]


def test_worker_function_on_cuda_in_bfloat16(tmp_path):
    import torch.distributed as dist

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    started = time.perf_counter()
    try:
        result = run_sft_then_grpo(tiny_model_dir(tmp_path), tmp_path / "run", device="cuda", dtype="bfloat16")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    check_two_phase_run(result)
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"\nworker function on {torch.cuda.get_device_name()}: {time.perf_counter() - started:.1f} s, peak {peak:.0f} MiB")
