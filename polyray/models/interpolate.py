"""Adapter interpolation and mixes of LoRA adapters of one base: WiSE-FT for LoRA deltas, no training.

docs/algorithms.md §8. Weight-space ensembling of a fine-tuned model with the model it started from
(WiSE-FT, Wortsman et al. 2022, arXiv 2109.01903), which Dang et al. 2025 ("Weight Ensembling Improves
Reasoning in Language Models", arXiv 2504.10478) find recovers the pass@k that later training loses
while keeping its pass@1. Here between the SFT and GRPO adapters: no training, a grid of α, each point

    W(α) = W0 + (1 − α)·ΔW_from + α·ΔW_to          ΔW = (lora_alpha / r)·B·A per target module

with ``from`` the SFT adapter and ``to`` the GRPO adapter grown from it. α = 0 is the SFT model, α = 1
the GRPO model; α in [−1, 0) or (1, 2] extrapolates past an endpoint (:data:`ALPHA_RANGE`). A mix
with a third adapter instead (:func:`mix_adapters`) is

    W(α, b) = W0 + α·ΔW_to + b·ΔW_other                                     b in :data:`OTHER_RANGE`

Every ΔW is the adapter's whole delta from W0 as saved: a GRPO adapter continued from the SFT one holds
the SFT delta too, so α + b = 1 keeps it once, and with the SFT adapter as ``other`` (α, 1 − α) is W(α).
Any weighted sum of LoRA deltas is itself a LoRA of the summed rank, exactly: peft's
``add_weighted_adapter(combination_type="cat")`` stacks the A's (each multiplied by its weight, of
either sign, and its scaling) and the B's, with lora_alpha = r (scaling 1), so B_cat·A_cat = Σ w_j·s_j·B_j·A_j.
Interpolating A and B separately would not be: ((1−α)B1 + αB2)((1−α)A1 + αA2) has cross terms.
``tests/unit/models/test_interpolate.py`` checks the saved adapters against a float64 sum of the deltas.

Assumes the adapters share target modules and have no per-module rank or alpha patterns, nor rsLoRA.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

_COMBINED = "interpolated"
# α beyond [0, 1] extrapolates; the bound catches typos (25 for 0.25)
ALPHA_RANGE = (-1.0, 2.0)
# b, the coefficient of the third adapter's delta
OTHER_RANGE = (-1.0, 1.5)
_LABEL = re.compile(r"a(?P<a>[^_]+)(?:_b(?P<b>.+))?")


def _check_grid(values: Sequence[float], name: str, bounds: tuple[float, float], meaning: str) -> list[float]:
    low, high = bounds
    # + 0.0: -0.0 is 0.0, one label
    grid = [float(v) + 0.0 for v in values]
    if not grid:
        raise ValueError(f"{name}: give at least one value in [{low:g}, {high:g}]")
    for v in grid:
        if not (math.isfinite(v) and low <= v <= high):
            raise ValueError(f"{name}: {v} is not in [{low:g}, {high:g}] ({meaning})")
    if len(set(grid)) != len(grid):
        raise ValueError(f"{name}: repeated values in {grid}")
    return grid


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """The α grid as floats, in order, each in :data:`ALPHA_RANGE` and distinct; ValueError naming ``alphas``."""
    meaning = "0 = the 'from' adapter, 1 = the 'to' adapter, beyond them extrapolation"
    return _check_grid(alphas, "alphas", ALPHA_RANGE, meaning)


def check_other_coefs(coefs: Sequence[float]) -> list[float]:
    """The grid of b (ΔW_other's coefficient), each in :data:`OTHER_RANGE` and distinct; ValueError naming it."""
    return _check_grid(coefs, "other-coefs", OTHER_RANGE, "the coefficient of the 'other' adapter's delta")


def _number(x: float) -> str:
    # -0.0 is 0.0
    x = float(x) + 0.0
    short = f"{x:g}"
    # repr round-trips where 6 digits would merge two values
    return short if float(short) == x else repr(x)


def alpha_label(alpha: float, other: float | None = None) -> str:
    """A name-safe label for a grid point, distinct per point: 0.25 -> 'a0.25', -0.25 -> 'a-0.25', 1 -> 'a1',
    (1.5, b = 0.5) -> 'a1.5_b0.5'. :func:`parse_label` inverts it."""
    return f"a{_number(alpha)}" + ("" if other is None else f"_b{_number(other)}")


def parse_label(label: str) -> tuple[float, float | None]:
    """(α, b or None) of an :func:`alpha_label`."""
    match = _LABEL.fullmatch(label)
    if not match:
        raise ValueError(f"{label!r} is not an interpolation label (a<α> or a<α>_b<b>)")
    return float(match["a"]), (None if match["b"] is None else float(match["b"]))


def _lora_settings(adapter_dir: Path) -> tuple[int, float, list[str]]:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: adapters with rank_pattern/alpha_pattern are not supported")
    # the cat adapter inherits it: scaling r/sqrt(r), not 1
    if cfg.get("use_rslora"):
        raise ValueError(f"{adapter_dir}: rsLoRA adapters are not supported")
    return int(cfg["r"]), float(cfg["lora_alpha"]), sorted(cfg["target_modules"])


def interpolated_rank(*adapter_dirs: str | Path) -> int:
    """Rank of every combination of these adapters: the sum of their ranks (``cat`` stacks them all)."""
    return sum(_lora_settings(Path(d))[0] for d in adapter_dirs)


def combine_adapters(
    model_dir: str | Path,
    sources: Sequence[str | Path],
    weights: Mapping[str, Sequence[float]],
    out_dir: str | Path,
    dtype: str = "float32",
) -> dict[str, Path]:
    """For each label, the adapter of W0 + Σ_j weights[label][j]·ΔW_{sources[j]}, written to ``out_dir/<label>/``.

    One load of the base (``model_dir``) and every source adapter; each is peft's exact ``cat``
    combination, saved in standard peft format (vLLM loads it like any adapter). Returns label -> directory.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sources, out_dir = [Path(s) for s in sources], Path(out_dir)
    modules = {s: _lora_settings(s)[2] for s in sources}
    if len({tuple(m) for m in modules.values()}) != 1:
        raise ValueError(f"the adapters adapt different modules: {modules}")
    for label, w in weights.items():
        if len(w) != len(sources):
            raise ValueError(f"{label}: {len(w)} weights for {len(sources)} adapters")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    # adapter names become module attributes: "to" would clash with nn.Module.to
    names = [f"lora_{j}" for j in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0]), adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:]):
        model.load_adapter(str(source), adapter_name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for label, w in weights.items():
        model.add_weighted_adapter(names, [float(x) for x in w], _COMBINED, combination_type="cat")
        target = out_dir / label
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
        # peft writes staging/<name>/
        model.save_pretrained(str(staging), selected_adapters=[_COMBINED])
        if target.exists():
            shutil.rmtree(target)
        (staging / _COMBINED).rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        model.delete_adapter(_COMBINED)
        written[label] = target
    return written


def interpolate_adapters(
    model_dir: str | Path,
    from_dir: str | Path,
    to_dir: str | Path,
    alphas: Sequence[float],
    out_dir: str | Path,
    dtype: str = "float32",
) -> dict[float, Path]:
    """Write the adapter of W0 + (1 − α)ΔW_from + αΔW_to for each α under ``out_dir/a<α>/``; α -> directory."""
    grid = check_alphas(alphas)
    weights = {alpha_label(a): (1.0 - a, a) for a in grid}
    written = combine_adapters(model_dir, [from_dir, to_dir], weights, out_dir, dtype)
    return {a: written[alpha_label(a)] for a in grid}


def mix_adapters(
    model_dir: str | Path,
    to_dir: str | Path,
    other_dir: str | Path,
    points: Sequence[tuple[float, float]],
    out_dir: str | Path,
    dtype: str = "float32",
) -> dict[tuple[float, float], Path]:
    """Write the adapter of W0 + α·ΔW_to + b·ΔW_other for each (α, b) under ``out_dir/a<α>_b<b>/``; (α, b) -> dir."""
    points = [(float(a) + 0.0, float(b) + 0.0) for a, b in points]
    check_alphas(sorted({a for a, _ in points}))
    check_other_coefs(sorted({b for _, b in points}))
    if len(set(points)) != len(points):
        raise ValueError(f"points: repeated (α, b) in {points}")
    written = combine_adapters(model_dir, [to_dir, other_dir], {alpha_label(*p): p for p in points}, out_dir, dtype)
    return {p: written[alpha_label(*p)] for p in points}


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
