"""The learner's worker function on CUDA, as users run it: NCCL at world size 1, a bfloat16 base
with float32 LoRA, SFT then GRPO from SFT's adapter with the phase-start KL reference, micro-batches,
a worker that dies before its step-4 checkpoint and one that resumes from step 2's (checkpoint
reload onto the GPU). Needs PyTorch, transformers and peft, not Ray: the worker function runs in
a plain torch.distributed group (``phase_harness.LocalSession``). Run it with ``make test-gpu``."""

from __future__ import annotations

import time

import pytest
import torch

from support.phase_harness import check_two_phase_run, run_sft_then_grpo, tiny_model_dir

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
    print(
        f"\nworker function on {torch.cuda.get_device_name()}: {time.perf_counter() - started:.1f} s, peak {peak:.0f} MiB"
    )


@pytest.mark.parametrize("cuda_first", [False, True])
def test_learner_allocator_grows_its_segments(cuda_first):
    """Whether CUDA started before the learner's set-up (a Ray Train worker's device is set first) or not,
    the segments made after it are expandable."""
    import os
    import subprocess
    import sys

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    script = (
        "import torch\n"
        "from polyray.learner.memory import expandable_cuda_segments\n"
        f"if {cuda_first}: torch.zeros(1, device='cuda')\n"
        "assert expandable_cuda_segments()\n"
        "x = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda')\n"
        "segments = [s for s in torch.cuda.memory_snapshot() if s['total_size'] >= 256 * 2**20]\n"
        "assert segments and all(s.get('is_expandable') for s in segments), segments\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
