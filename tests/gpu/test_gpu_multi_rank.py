"""The learner on two GPUs under NCCL, without Ray (``phase_harness``: spawned processes, a GPU a rank):
its worker function trains one model on both ranks, and a step's averaged gradients equal one rank's
full-batch gradients for every phase. The same checks run on gloo ranks in tests/unit/learner/test_ddp_scaling.py.
Run with ``make test-gpu`` on a machine with 2 or more GPUs (skipped with fewer)."""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import (
    PHASE_CASES,
    _cpu,
    check_ranks_trained_one_model,
    multi_rank_grads,
    run_sft_ranks,
    step_grads,
    tiny_model_dir,
)

pytestmark = [pytest.mark.gpu]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    return tiny_model_dir(tmp_path_factory.mktemp("nccl"))


def test_the_worker_function_on_two_gpus_trains_one_model(model_dir, tmp_path):
    out = tmp_path / "run"
    check_ranks_trained_one_model(out, run_sft_ranks(model_dir, out, world=2, device="cuda", dtype="bfloat16"))


def test_nccl_gradients_equal_one_ranks(model_dir, tmp_path):
    names = list(PHASE_CASES)
    single = {name: _cpu(step_grads(model_dir, name, device="cuda:0")) for name in names}
    multi = multi_rank_grads(model_dir, 2, names, tmp_path / "grads.pt", device="cuda")
    for name, (grads_1, _) in single.items():
        assert any(g.abs().max() > 0 for g in grads_1.values()), f"{name}: the test needs non-zero gradients"
        for param, g in grads_1.items():  # float32 on the GPU; reductions in another order than one rank's
            torch.testing.assert_close(multi[name][0][param], g, rtol=1e-3, atol=1e-6, msg=f"{name} {param}")
