"""The LLM judge's settings: where the judge model is and how it is asked (:mod:`polyray.judge` asks it).

Used by the JSONL tasks' ``judge`` (quality ``llm_judge``) and the ``llm_judge`` reward's
parameters. The default questions are here because they are the defaults of two fields.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

POINTWISE = (
    "You are judging a response to a prompt. Rate the response on each criterion from 1 (worst) to {scale} (best).\n"
    "Criteria: {criteria}.\n\nPrompt:\n{prompt}\n\nResponse:\n{response}\n\n"
    'Answer with one JSON object and nothing else, e.g. {example}.'
)
PAIRWISE = (
    "You are comparing two responses to the same prompt on: {criteria}.\n\nPrompt:\n{prompt}\n\n"
    "Response A:\n{a}\n\nResponse B:\n{b}\n\n"
    'Which response is better? Answer with one JSON object and nothing else: {{"winner": "A"}}, {{"winner": "B"}}'
    ' or {{"winner": "tie"}}.'
)


class JudgeConfig(BaseModel):
    """Where the judge is and how it is asked (NaN and infinity are refused: no bound holds against them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_url: str = Field(..., description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(..., description="The judge's model id at that endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoint's API key.")
    mode: Literal["pointwise", "pairwise"] = Field("pointwise", description="Rate alone, or against the reference.")
    criteria: list[str] = Field(
        default_factory=lambda: ["helpfulness", "specificity", "engagement"], min_length=1,
        description="What the judge rates (pointwise: one rating each; pairwise: named in the question).",
    )  # fmt: skip
    scale: int = Field(10, ge=2, le=100, description="Pointwise ratings run from 1 to scale.")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature.")
    max_tokens: int = Field(128, ge=1, le=4096, description="Longest judge reply.")
    retries: int = Field(2, ge=0, le=10, description="Re-asks after an unparseable reply (transport retries apart).")
    timeout_s: float = Field(60.0, gt=0, le=600, description="Per-request timeout (seconds).")
    max_concurrency: int = Field(8, ge=1, le=256, description="Judge requests in flight at once.")
    structured: bool = Field(False, description="Send a JSON schema as response_format (servers with structured outputs).")
    seed: int = Field(0, description="Seed of the first ask; re-asks use the next ones.")
    pointwise_prompt: str = Field(
        POINTWISE, description="Pointwise question: {prompt}, {response}; optional {criteria}, {scale}, {example}."
    )
    pairwise_prompt: str = Field(PAIRWISE, description="Pairwise question: {prompt}, {a}, {b}; optional {criteria}.")

    @field_validator("pointwise_prompt", "pairwise_prompt")
    @classmethod
    def _placeholders(cls, v: str, info: ValidationInfo) -> str:
        needed = ("{prompt}", "{response}") if info.field_name == "pointwise_prompt" else ("{prompt}", "{a}", "{b}")
        missing = [p for p in needed if p not in v]
        if missing:
            raise ValueError(f"must contain {', '.join(missing)}")
        try:
            v.format(prompt="", response="", a="", b="", criteria="", scale=10, example="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"not a format string over the documented placeholders: {exc}") from None
        return v

    @field_validator("criteria")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_ -]{0,40}", c)]
        if bad:
            raise ValueError(f"criteria must be short names (letters, digits, _ - space): {bad}")
        return v
