"""learner.gradient_checkpointing: the decoder layers run their forward again in the backward pass,
and the loss and every LoRA gradient are those of the plain model."""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import build_policy, tiny_model_dir

pytestmark = [pytest.mark.slow]


def _loss_and_grads(model, tokenizer, calls: list[int]):
    mlp = model.base_model.model.model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # (module hooks are off in a recompute)
    batch = tokenizer(
        ["nums 3 4 9 target 12\nexpr: 3+9", "nums 1 2 5 target 7\nexpr: 2+5"], return_tensors="pt", padding=True
    )
    model.train()
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_checkpointing_recomputes_and_matches(tmp_path):
    torch.set_num_threads(1)
    model_dir = tiny_model_dir(tmp_path)
    plain_calls, ckpt_calls = [], []
    loss, grads = _loss_and_grads(*build_policy(model_dir), plain_calls)
    loss_ckpt, grads_ckpt = _loss_and_grads(*build_policy(model_dir, gradient_checkpointing=True), ckpt_calls)
    assert (len(plain_calls), len(ckpt_calls)) == (1, 2)  # the layer ran again in backward
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
