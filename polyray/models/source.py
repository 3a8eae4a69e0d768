"""Resolve ``model.source`` to a local Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from polyray.config import ModelConfig


class ModelSourceError(ValueError):
    """The configured model cannot be found or built."""


def resolve_model_dir(model: ModelConfig, task, progress: Callable[[int, int, float], None] | None = None) -> Path:
    if model.source == "embedded":
        if task.type != "countdown":
            raise ModelSourceError(f"model.source: the embedded model is pretrained on 'countdown', not {task.type!r}")
        from polyray.models.tiny import build_tiny_model

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
