"""polyray's grouped LoRA matmuls for vLLM on CPU (polyray.rollout.cpu_lora) against a float64 loop of
out[b] = W[idx[b]] @ x[b], installed where vLLM's CPU punica wrapper calls them, by the plugin that
pyproject.toml's vLLM entry point names."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
import torch

from polyray.rollout import cpu_lora, vllm_plugin

ROOT = Path(__file__).resolve().parents[3]


def _reference(x, w, idx):
    w = w.squeeze(1) if w.dim() == 4 else w
    return torch.stack([w[int(i)].double() @ x[b].double() for b, i in enumerate(idx)])


@pytest.mark.parametrize(
    "indices", [[0] * 7, [1, 0, 1, 1, 0, 2, 2], [-1, 0, -1, 1, 0, 0, 1]], ids=["one", "mixed", "negative"]
)
def test_shrink_and_expand_match_a_loop(indices):
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor(indices)
    x = torch.randn(7, 32, generator=gen)
    a = torch.randn(3, 1, 4, 32, generator=gen)  # (slots, 1, r, in)
    b = torch.randn(3, 1, 48, 4, generator=gen)  # (slots, 1, out, r)

    shrunk = torch.zeros(7, 4)
    cpu_lora.bgmv_shrink(x, a, shrunk, idx, scaling=0.5)
    torch.testing.assert_close(shrunk.double(), 0.5 * _reference(x, a, idx), rtol=1e-5, atol=1e-5)

    base = torch.randn(7, 48, generator=gen)
    out = base.clone()
    cpu_lora.bgmv_expand(shrunk, b, out, idx, add_inputs=True)
    torch.testing.assert_close(out.double(), base.double() + _reference(shrunk, b, idx), rtol=1e-5, atol=1e-5)

    sliced = base.clone()
    cpu_lora.bgmv_expand_slice(shrunk, b[:, :, :16], sliced, idx, slice_offset=16, slice_size=16, add_inputs=False)
    expected = base.double().clone()
    expected[:, 16:32] = _reference(shrunk, b[:, :, :16], idx)
    torch.testing.assert_close(sliced.double(), expected, rtol=1e-5, atol=1e-5)


def test_registered_in_vllms_cpu_lora_path():
    pytest.importorskip("vllm")
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    cpu_lora.install()
    assert punica_cpu.bgmv_shrink is cpu_lora.bgmv_shrink and lora_ops.bgmv_expand is cpu_lora.bgmv_expand
    # vLLM's own prefill entry point (sgmv: per-sequence indices) now runs through the grouped matmul
    gen = torch.Generator().manual_seed(1)
    x, a = torch.randn(5, 32, generator=gen), torch.randn(2, 1, 4, 32, generator=gen)
    lengths, seq_idx = torch.tensor([2, 3]), torch.tensor([1, 0])
    out = torch.zeros(5, 4)
    punica_cpu.sgmv_shrink(x, a, out, torch.tensor([0, 2]), lengths, seq_idx, 2, 3, 5, 1.0)
    torch.testing.assert_close(out.double(), _reference(x, a, torch.tensor([1, 1, 0, 0, 0])), rtol=1e-5, atol=1e-5)


def test_the_vllm_entry_point_names_the_plugin():
    """vLLM loads ``vllm.general_plugins`` by name: ``polyray_cpu_lora`` (the name the rollout benchmark turns
    off) must resolve to the plugin's ``register``, which installs these ops."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project also runs on 3.10
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plugins = project["entry-points"]["vllm.general_plugins"]
    assert pkgutil.resolve_name(plugins["polyray_cpu_lora"]) is vllm_plugin.register
