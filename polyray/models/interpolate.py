"""Adapter interpolation between two LoRA adapters of one base: WiSE-FT for LoRA deltas.

docs/algorithms.md §8. Weight-space ensembling of a fine-tuned model with the model it started from
(WiSE-FT, Wortsman et al. 2022, arXiv 2109.01903), which Dang et al. 2025 ("Weight Ensembling Improves
Reasoning in Language Models", arXiv 2504.10478) find recovers the pass@k that later training loses
while keeping its pass@1. Here between the SFT and GRPO adapters: no training, a grid of α, each point

    W(α) = W0 + (1 − α)·ΔW_from + α·ΔW_to          ΔW = (lora_alpha / r)·B·A per target module

with ``from`` the SFT adapter and ``to`` the GRPO adapter grown from it. α = 0 is the SFT model, α = 1
the GRPO model. The weighted sum of two LoRA deltas is itself a LoRA of rank r_from + r_to, exactly:
peft's ``add_weighted_adapter(combination_type="cat")`` stacks the A's (each multiplied by its weight
and scaling) and the B's, with lora_alpha = r (scaling 1), so B_cat·A_cat = Σ w_j·s_j·B_j·A_j.
Interpolating A and B separately would not be: ((1−α)B1 + αB2)((1−α)A1 + αA2) has cross terms.
``tests/unit/models/test_interpolate.py`` checks the saved adapter against a float64 merge of the deltas.

Assumes the two adapters share target modules and have no per-module rank or alpha patterns.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

_COMBINED = "interpolated"


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """The grid as floats, in order, each in [0, 1] and distinct; ValueError naming the bad value."""
    grid = [float(a) for a in alphas]
    if not grid:
        raise ValueError("alphas: give at least one α in [0, 1]")
    for a in grid:
        if not (math.isfinite(a) and 0.0 <= a <= 1.0):
            raise ValueError(f"alphas: {a} is not in [0, 1] (0 = the 'from' adapter, 1 = the 'to' adapter)")
    if len(set(grid)) != len(grid):
        raise ValueError(f"alphas: repeated values in {grid}")
    return grid


def alpha_label(alpha: float) -> str:
    """A name-safe label for α: 0.25 -> 'a0.25', 1 -> 'a1'."""
    return f"a{alpha:g}"


def _lora_settings(adapter_dir: Path) -> tuple[int, float, list[str]]:
    import json

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: adapters with rank_pattern/alpha_pattern are not supported")
    return int(cfg["r"]), float(cfg["lora_alpha"]), sorted(cfg["target_modules"])


def interpolated_rank(from_dir: str | Path, to_dir: str | Path) -> int:
    """Rank of every interpolated adapter: r_from + r_to (``cat`` stacks both)."""
    return _lora_settings(Path(from_dir))[0] + _lora_settings(Path(to_dir))[0]


def interpolate_adapters(
    model_dir: str | Path,
    from_dir: str | Path,
    to_dir: str | Path,
    alphas: Sequence[float],
    out_dir: str | Path,
    dtype: str = "float32",
) -> dict[float, Path]:
    """Write the adapter of W0 + (1 − α)ΔW_from + αΔW_to for each α under ``out_dir/a<α>/``.

    One load of the base (``model_dir``) and both adapters; each α is peft's exact ``cat``
    combination, saved in standard peft format (vLLM loads it like any adapter). Returns α -> directory.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    grid = check_alphas(alphas)
    from_dir, to_dir, out_dir = Path(from_dir), Path(to_dir), Path(out_dir)
    (_, _, modules_from), (_, _, modules_to) = _lora_settings(from_dir), _lora_settings(to_dir)
    if modules_from != modules_to:
        raise ValueError(f"{from_dir} and {to_dir} adapt different modules: {modules_from} vs {modules_to}")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    # adapter names become module attributes: "to" would clash with nn.Module.to
    model = PeftModel.from_pretrained(base, str(from_dir), adapter_name="lora_from")
    model.load_adapter(str(to_dir), adapter_name="lora_to")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for alpha in grid:
        model.add_weighted_adapter(["lora_from", "lora_to"], [1.0 - alpha, alpha], _COMBINED, combination_type="cat")
        target = out_dir / alpha_label(alpha)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
        model.save_pretrained(str(staging), selected_adapters=[_COMBINED])  # peft writes staging/<name>/
        if target.exists():
            shutil.rmtree(target)
        (staging / _COMBINED).rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        model.delete_adapter(_COMBINED)
        written[alpha] = target
    return written


def compute_lora_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """ΔW = (lora_alpha / r)·B·A of every adapted module, in float64, keyed by the module's name."""
    from safetensors.torch import load_file

    r, lora_alpha, _ = _lora_settings(Path(adapter_dir))
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    deltas = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0]
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            deltas[module] = (lora_alpha / r) * (b.to(torch.float64) @ a.to(torch.float64))
    return deltas
