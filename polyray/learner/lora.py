"""peft LoRA on the base model: build, extract the adapter (A/B only), save, load.

The KL reference of an RL phase is a second, frozen peft adapter on the same base
(:func:`add_reference_adapter`: the policy at the start of the phase), or the base with
the adapter disabled: no second copy of the base weights either way.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import torch

from polyray.config import LoraConfig


def import_model_libraries() -> None:
    """transformers' model classes and peft, imported without scikit-learn (:func:`polyray.imports.without_sklearn`:
    with scipy.stats and pandas, most of a learner rank's import time)."""
    from polyray.imports import without_sklearn

    with without_sklearn():
        import peft  # noqa: F401 - peft.auto imports transformers' model classes and generation
        from transformers import AutoModelForCausalLM  # noqa: F401


def load_base(model_dir: str, dtype: str = "float32"):
    import_model_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return model, tokenizer


def build_peft_model(
    model_dir: str,
    lora: LoraConfig,
    dtype: str = "float32",
    adapter_dir: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Base model + a fresh LoRA adapter, or the trainable adapter saved in ``adapter_dir``.

    ``gradient_checkpointing``: the decoder layers recompute their activations in the backward pass
    (non-reentrant, so the frozen embeddings need no grad; in train mode only)."""
    import_model_libraries()
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    base, tokenizer = load_base(model_dir, dtype)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter_dir:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    else:
        cfg = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        )
        model = get_peft_model(base, cfg)
    return model, tokenizer


REFERENCE_ADAPTER = "reference"


def add_reference_adapter(model, adapter_dir: str) -> str:
    """Load ``adapter_dir`` as a frozen second adapter (the KL reference); the trainable one stays active."""
    model.load_adapter(adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    model.set_adapter("default")
    return REFERENCE_ADAPTER


_ADAPTER_PARAMETERS: "weakref.WeakKeyDictionary[Any, list[tuple[str, torch.nn.Parameter]]]" = (
    weakref.WeakKeyDictionary()
)


def adapter_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable adapter's (key in adapter_model.safetensors, parameter) pairs, found once per model:
    peft's ``get_peft_model_state_dict`` walks every module and reads the base model's config at each
    call (3 ms of the embedded model's 3.4 ms publish extraction), while its keys and the parameters
    behind them stay the same for the model's life (optimizer steps and loads write into them)."""
    from peft import get_peft_model_state_dict

    found = _ADAPTER_PARAMETERS.get(model)
    if found is None:
        by_storage = {p.data_ptr(): p for p in model.parameters()}
        found = [(key, by_storage[value.data_ptr()]) for key, value in get_peft_model_state_dict(model).items()]
        _ADAPTER_PARAMETERS[model] = found
    return found


def extract_adapter(model) -> dict[str, Any]:
    """{"config": adapter_config.json dict, "tensors": A/B tensors keyed as in adapter_model.safetensors}."""
    # unwrap DDP
    model = getattr(model, "module", model)
    tensors = {k: p.detach().to("cpu", copy=True).contiguous() for k, p in adapter_parameters(model)}
    config = model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = None
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    # plain JSON values (peft_type is peft's enum): unpickling the adapter then imports nothing, where a
    # peft enum made the adapter store import peft and transformers in the run's first publish
    return {"config": json.loads(json.dumps(config)), "tensors": tensors}


def read_adapter(path: str | Path) -> dict[str, Any]:
    """A saved peft adapter directory as :func:`extract_adapter` gives it: {"config", "tensors"}."""

    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    config = {k: (sorted(v) if k == "target_modules" and isinstance(v, list) else v) for k, v in config.items()}
    return {"config": config, "tensors": load_file(str(path / "adapter_model.safetensors"))}


def save_adapter(model, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """The trainable adapter in standard peft format (never the frozen reference), written atomically.

    The files go to a sibling directory first (with ``extra``: file name -> JSON-able content),
    which then replaces ``path``: a process killed mid-save leaves the previous adapter whole.
    """
    import os
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a save killed half-way before this one
    for leftover in path.parent.glob(f".{path.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staging.chmod(0o755)
    getattr(model, "module", model).save_pretrained(str(staging), selected_adapters=["default"])
    for name, content in (extra or {}).items():
        (staging / name).write_text(json.dumps(content))
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
