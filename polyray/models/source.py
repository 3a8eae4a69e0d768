"""Resolve ``model.source`` to a local Hugging Face model directory, and format prompts for that model.

The settings (:class:`~polyray.config.model.ModelConfig`) are in :mod:`polyray.config.model`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from polyray.config.model import ModelConfig
from polyray.io import make_progress
from polyray.tasks.base import Task, with_prompt_format


class ModelSourceError(ValueError):
    """The configured model cannot be found or built."""


def resolve_model_dir(model: ModelConfig, task, progress: Callable[[int, int, float], None] | None = None) -> Path:
    if model.source == "embedded":
        # heavy: torch, tokenizers
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
    # offline, unknown id, no access: one line, not a traceback
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(f"model.source: cannot fetch {model.source!r} from the hub ({reason})") from None


def offline_model_dir(model: ModelConfig, task) -> Path | None:
    """``model.source`` resolved without building or downloading anything: the embedded model's cache
    entry once built, a local model directory, a hub id's snapshot in the Hugging Face cache; else None."""
    if model.source == "embedded":
        from polyray.models.tiny import cached_model_dir

        built = cached_model_dir(model.tiny, task)
        return built if (built / "build_info.json").is_file() else None
    path = Path(model.source).expanduser()
    if path.exists():
        return path.resolve() if (path / "config.json").is_file() else None
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(model.source, local_files_only=True))
    # not in the cache (or not a hub id): known once resolve_model_dir fetches it
    except Exception:
        return None
    return cached if (cached / "config.json").is_file() else None


def model_config(model: ModelConfig, model_dir: Path | None) -> dict | None:
    """The model's ``config.json`` as a mapping: from ``model_dir``, else the embedded model's settings
    (:func:`~polyray.models.tiny.tiny_model_config`); None for another model not at hand yet."""
    import json

    if model_dir is not None:
        return json.loads((Path(model_dir) / "config.json").read_text())
    if model.source == "embedded":
        from polyray.models.tiny import tiny_model_config

        return tiny_model_config(model.tiny)
    return None


def prepare_model_dir(model: ModelConfig, task) -> Path:
    """:func:`resolve_model_dir` with a progress bar while the embedded model is built (first use only)."""
    from polyray.models.tiny import cached_model_dir, shipped_model_dir

    if (
        model.source == "embedded"
        and not (cached_model_dir(model.tiny, task) / "build_info.json").exists()
        and shipped_model_dir(model.tiny, task) is None
    ):
        with make_progress() as bar:
            task_id = bar.add_task("build tiny model", total=model.tiny.pretrain_steps, info="")
            return resolve_model_dir(
                model, task, progress=lambda s, n, loss: bar.update(task_id, completed=s, info=f"loss {loss:.3f}")
            )
    return resolve_model_dir(model, task)


@functools.lru_cache(maxsize=8)
def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def model_tokenizer(model_dir: str | Path):
    """The model's own (transformers) tokenizer, loaded once per directory."""
    return _tokenizer(str(model_dir))


def token_counter(model_dir: str | Path) -> Callable[[list[str]], list[int]]:
    """``count(texts)``: each text's length in the model's tokens, special tokens not added. From the model's
    ``tokenizer.json`` through ``tokenizers`` (the fast tokenizer's own backend: the same ids) where it has one,
    which spares a driver the import of transformers; else through transformers' tokenizer."""
    path = Path(model_dir) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(path))
        # as transformers' tokenizer calls it: no padding or truncation a tokenizer.json may configure
        backend.no_padding()
        backend.no_truncation()
        return lambda texts: [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    tokenizer = _tokenizer(str(model_dir))
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def format_for_model(task: Task, model: ModelConfig, model_dir: str | Path) -> Task:
    """``task`` with prompts as ``model`` expects them: through its tokenizer's chat template when
    it has one, ``prompt_format`` is auto (instruct models) and the task's answers can be chat
    replies (not countdown's, which continue the prompt's line), else the task's own template.

    A prompt with a system prompt or earlier turns (``meta["messages"]``) is rendered as that
    conversation: the system prompt is the template's own ``system`` turn, not text glued before
    the user's. A template that refuses a system turn (some raise on one) gets the prompt's text
    with the system prompt before it, as a plain-text model sees it."""
    if model.prompt_format != "auto" or not task.chat_format_ok:
        return task
    tokenizer = _tokenizer(str(model_dir))
    if not getattr(tokenizer, "chat_template", None):
        return task
    kwargs = dict(model.chat_template_kwargs)

    def apply(turns: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **kwargs)

    def render(text: str, messages: list[dict[str, str]] | None = None) -> str:
        if messages:
            from jinja2 import TemplateError

            try:
                return apply(messages)
            # e.g. "System role not supported": the system prompt goes in the text
            except TemplateError:
                pass
        return apply([{"role": "user", "content": text}])

    return with_prompt_format(task, render)
