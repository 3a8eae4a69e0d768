"""vLLM's LoRA matmuls on CPU, one matmul per adapter in the batch instead of one weight copy per token.

vLLM's CPU LoRA path (``vllm.lora.ops.torch_ops``) computes ``out[b] = W[idx[b]] @ x[b]`` by
gathering a (tokens, out, in) copy of the adapter weights, ``W[idx]``, then an ``einsum``: on the
embedded model that gather is ~40% of a decode step and LoRA makes generation 2.7x slower
(``polyray bench rollout``, docs/benchmarks.md). A rollout batch samples one adapter
version, so here the rows are grouped by adapter index and each group is one ``x @ W[i].T``: the
same products (a negative index still picks the last slot, as indexing does there), without the copy.

:func:`install` installs them; polyray's vLLM plugin (:mod:`polyray.rollout.vllm_plugin`) calls it
in every process vLLM starts (engine core, workers). Only the CPU punica wrapper uses these
functions, so GPU engines are untouched.
"""

from __future__ import annotations

import torch


def grouped_lora_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``out[b] = weights[indices[b]] @ inputs[b]`` for weights (slots, [1,] out, in) and inputs (tokens, in)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    slots = torch.unique(indices)
    if slots.numel() == 1:
        return x @ weights[int(slots[0])].to(dtype).T
    out = x.new_empty(x.shape[0], weights.shape[1])
    for slot in slots.tolist():
        rows = indices == slot
        out[rows] = x[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    # adapter and model may pad differently
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    lora_indices_tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
):
    outputs = grouped_lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def install() -> None:
    """Swap the grouped functions into vLLM's CPU LoRA ops (its ``sgmv_*`` call the ``bgmv_*`` ones)."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name, fn in (
        ("bgmv_shrink", bgmv_shrink),
        ("bgmv_expand", bgmv_expand),
        ("bgmv_expand_slice", bgmv_expand_slice),
    ):
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, fn)
