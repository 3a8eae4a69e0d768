"""``polyray bench learner --device cuda`` at a toy size: its measurement on the GPU (no Ray, no vLLM).

The micro-batched and whole-batch steps train on the same samples, so their losses agree on the GPU as
on the CPU; the GPU's peak holds the CUDA context and the allocator's reserve, so it covers what was
allocated and what was loaded; a bfloat16 base with checkpointing steps to a finite loss.
"""

from __future__ import annotations

import pytest
import torch

from polyray.drivers.bench.learner import BenchShape, StepCase, build_bench_model, estimate
from polyray.drivers.bench.learner_step import measure_step

pytestmark = [pytest.mark.gpu]

TOY = BenchShape(layers=2, hidden=64, intermediate=128, heads=2, kv_heads=1, head_dim=32, vocab=512)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return str(build_bench_model(tmp_path_factory.mktemp("bench") / "model", TOY))


def test_learner_step_on_cuda_measures_the_gpu(toy_model):
    micro = measure_step(toy_model, StepCase(4, 32, 64, 256, group_size=2, device="cuda", measured_steps=2))
    whole = measure_step(toy_model, StepCase(4, 32, None, 0, group_size=2, device="cuda", measured_steps=2))
    assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-6)
    for row in (micro, whole):
        assert row["gpu"] == torch.cuda.get_device_name() and row["peak_of"] == "step"
        assert row["peak_bytes"] >= row["loaded_bytes"] > row["context_bytes"] > 0
        assert row["peak_bytes"] - row["context_bytes"] >= row["peak_allocated_bytes"] > 0
    bf16 = measure_step(
        toy_model, StepCase(4, 32, 64, 256, group_size=2, device="cuda", dtype="bfloat16", gradient_checkpointing=True)
    )
    assert torch.isfinite(torch.tensor(bf16["loss"]))
    plan = estimate(toy_model, StepCase(4, 32, 64, 256, group_size=2, device="cuda", dtype="bfloat16"))
    print(
        f"\ntoy step on {micro['gpu']}: peak {micro['peak_bytes'] / 2**20:.0f} MiB (context"
        f" {micro['context_bytes'] / 2**20:.0f}), plan {plan['total'] / 2**20:.0f} MiB"
    )
