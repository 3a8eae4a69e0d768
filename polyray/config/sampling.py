"""Sampling settings of one generation request: shared by phases, evaluations and the evaluation job."""

from __future__ import annotations

from pydantic import Field

from polyray.io import StrictModel


class SamplingConfig(StrictModel):
    temperature: float = Field(1.0, ge=0, description="Softmax temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(24, ge=1, description="Maximum new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the completion).")
