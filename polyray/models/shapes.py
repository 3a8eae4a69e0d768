"""The published ``config.json`` fields of the models polyray's GPU presets name, so that the memory plan
(:mod:`polyray.learner.memory`) can size a run on them before anything is downloaded (``polyray check``).

Only what the plan reads: sizes, heads, vocabulary, tied embeddings and the model type. A model not
listed is planned from its ``config.json`` once at hand: a local directory, the Hugging Face cache, or
``polyray check --model-config DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_QWEN3 = {
    "model_type": "qwen3",
    "head_dim": 128,
    "num_key_value_heads": 8,
    "vocab_size": 151_936,
    "max_position_embeddings": 40_960,
    "attention_bias": False,
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-0.6B": {
        **_QWEN3,
        "num_hidden_layers": 28,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-1.7B": {
        **_QWEN3,
        "num_hidden_layers": 28,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_attention_heads": 16,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-4B": {
        **_QWEN3,
        "num_hidden_layers": 36,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_attention_heads": 32,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-8B": {
        **_QWEN3,
        "num_hidden_layers": 36,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_attention_heads": 32,
        "tie_word_embeddings": False,
    },
}


def read_model_config(where: str) -> dict[str, Any]:
    """A model's ``config.json`` mapping from ``where``: a directory holding one, the file itself, or a model
    id of :data:`KNOWN_CONFIGS`. Raises ValueError naming what was looked for."""
    if where in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[where])
    path = Path(where).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        known = ", ".join(KNOWN_CONFIGS)
        raise ValueError(
            f"{where}: neither a directory holding config.json, a config.json file, nor a known model ({known})"
        )
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a readable config.json ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: not a config.json mapping")
    return config
