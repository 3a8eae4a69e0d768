"""One step of each phase class on CUDA: SFT, polychromic SFT (countdown_expr diversity) and GRPO.

Runs on a bare CUDA machine (PyTorch, transformers, peft; no Ray, no vLLM): the model is a
random-init small Qwen3 and the samples come from transformers' ``generate`` on the policy
itself. A tensor built on the CPU and fed to the CUDA model fails the step, so passing means
every tensor a phase builds lives on the model's device. Step times are printed (-s).
"""

from __future__ import annotations

import time

import pytest
import torch

from support.phase_harness import GeneratePool, build_policy, make_phase, tiny_model_dir

pytestmark = [pytest.mark.gpu]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return tiny_model_dir(tmp_path_factory.mktemp("gpu"))


def _cases():
    from polyray.config import GRPOPhaseConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig

    return {
        "sft": SFTPhaseConfig(steps=3, batch_size=8),
        "polychromic_sft": PolychromicSFTPhaseConfig(
            steps=3,
            batch_size=8,
            prompts_per_step=4,
            n_samples=3,
            diversity="countdown_expr",
            sampling={"temperature": 0.8, "max_tokens": 8},
        ),
        "grpo": GRPOPhaseConfig(
            steps=3,
            prompts_per_step=4,
            group_size=4,
            kl_beta=0.05,
            kl_reference="base",
            sampling={"temperature": 1.2, "max_tokens": 8},
        ),
    }


@pytest.mark.parametrize("name", ["sft", "polychromic_sft", "grpo"])
def test_phase_steps_on_cuda(model_dir, name):
    cfg = _cases()[name]
    model, tok = build_policy(model_dir, device="cuda")
    phase = make_phase(cfg, model, tok, 0, 1, GeneratePool(model, tok))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for step in range(cfg.steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        metrics = phase.step(step, 1)  # forwards and backwards
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        assert torch.isfinite(torch.tensor(metrics["loss"])), metrics
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)
    print(f"\n{name} on {torch.cuda.get_device_name()}: step seconds {[round(t, 4) for t in times]}")
