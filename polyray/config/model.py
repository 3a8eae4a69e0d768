"""Which base model a run fine-tunes (``model``), and the recipe of the embedded tiny model.

Resolving ``source`` (building the tiny model, a local directory, a hub download) is
:mod:`polyray.models.source`'s and :mod:`polyray.models.tiny`'s work; this module only says
what may be asked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from polyray.io import StrictModel


class TinyModelConfig(StrictModel):
    """The embedded base model polyray builds and pretrains itself (Qwen3 architecture)."""

    vocab_size: int = Field(384, ge=300, le=65536, description="BPE vocabulary size (byte-level, 256 base symbols).")
    hidden_size: int = Field(128, ge=32, description="Transformer width.")
    num_layers: int = Field(4, ge=1, le=48, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Query heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(32, ge=32, description="Per-head width; vLLM's CPU attention needs >= 32.")
    intermediate_size: int = Field(384, ge=16, description="MLP inner width.")
    max_positions: int = Field(128, ge=32, description="Maximum sequence length.")
    pretrain_steps: int = Field(1500, ge=0, description="Full fine-tuning steps on the task's pretrain split.")
    pretrain_batch_size: int = Field(64, ge=1, description="Sequences per pretraining step.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate for pretraining.")
    pretrain_noise: float = Field(0.5, ge=0, lt=1, description="Share of pretraining completions that miss the target.")
    pretrain_prompts: int = Field(5000, ge=100, description="Distinct prompts in the pretraining corpus.")
    pretrain_retries: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of pretraining answers given as retry dialogues: one or two wrong answers, each followed"
        " by the feedback of the task's multi-turn environment (env), then the answer (countdown only).",
    )
    seed: int = Field(0, description="Seed for tokenizer corpus, init and pretraining order.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class ModelConfig(StrictModel):
    """Which base model to fine-tune."""

    source: str = Field(
        "embedded",
        description="'embedded' (build/cached tiny model), a local HF model directory, or a Hugging Face id.",
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig, description="Build settings when source is 'embedded'."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights dtype of the learner, and of the engines unless rollout.dtype says otherwise."
    )
    prompt_format: Literal["auto", "plain"] = Field(
        "auto",
        description="auto: prompts go through the tokenizer's chat template when it has one (instruct models);"
        " plain: the task's own template.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the chat template, e.g. {enable_thinking: false} (Qwen3).",
    )
