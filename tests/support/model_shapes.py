"""Model shapes the memory-plan tests share: the published ``config.json`` values of the presets' models."""

from __future__ import annotations


def qwen3_config(**fields) -> dict:
    """A Qwen3 ``config.json`` mapping with ``fields`` (tied embeddings unless said otherwise)."""
    return {"model_type": "qwen3", "tie_word_embeddings": True, **fields}


QWEN3 = {  # the published config.json values of the presets' models
    "Qwen/Qwen3-0.6B": qwen3_config(
        num_hidden_layers=28,
        hidden_size=1024,
        intermediate_size=3072,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151_936,
    ),
    "Qwen/Qwen3-1.7B": qwen3_config(
        num_hidden_layers=28,
        hidden_size=2048,
        intermediate_size=6144,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151_936,
    ),
    "Qwen/Qwen3-8B": qwen3_config(
        num_hidden_layers=36,
        hidden_size=4096,
        intermediate_size=12288,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151_936,
        tie_word_embeddings=False,
    ),
}
