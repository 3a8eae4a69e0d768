"""Resolve ``model.source`` to a local Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from polyray.io import StrictModel, make_progress
from polyray.models.tiny import TinyModelConfig


class ModelConfig(StrictModel):
    """Which base model to fine-tune."""

    source: str = Field(
        "embedded",
        description="'embedded' (build/cached tiny model), a local HF model directory, or a Hugging Face id.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Build settings when source is 'embedded'.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype for learner and rollouts.")


class ModelSourceError(ValueError):
    """The configured model cannot be found or built."""


def resolve_model_dir(model: ModelConfig, task, progress: Callable[[int, int, float], None] | None = None) -> Path:
    if model.source == "embedded":
        if task.type != "countdown":
            raise ModelSourceError(f"model.source: the embedded model is pretrained on 'countdown', not {task.type!r}")
        from polyray.models.tiny import build_tiny_model  # heavy: torch, tokenizers

        return build_tiny_model(model.tiny, task, progress=progress)
    path = Path(model.source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.source: {path} is not a Hugging Face model directory (no config.json)")
        return path.resolve()
    looks_like_hub_id = model.source.count("/") == 1 and not model.source.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelSourceError(f"model.source: model directory not found: {path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model.source))
    except Exception as exc:  # offline, unknown id, no access: one line, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(f"model.source: cannot fetch {model.source!r} from the hub ({reason})") from None


def prepare_model_dir(model: ModelConfig, task) -> Path:
    """:func:`resolve_model_dir` with a progress bar while the embedded model is built (first use only)."""
    from polyray.models.tiny import cached_model_dir

    if model.source == "embedded" and not (cached_model_dir(model.tiny, task) / "build_info.json").exists():
        with make_progress() as bar:
            task_id = bar.add_task("build tiny model", total=model.tiny.pretrain_steps, info="")
            return resolve_model_dir(
                model, task, progress=lambda s, n, loss: bar.update(task_id, completed=s, info=f"loss {loss:.3f}")
            )
    return resolve_model_dir(model, task)
