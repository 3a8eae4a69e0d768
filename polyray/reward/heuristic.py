"""Reward "length": a cheap length/format heuristic in [0, 1].

score = length_score × repetition_factor, and 0 for an empty (all-whitespace) completion.

- length_score is 1 inside ``[min_length, max_length]`` (in words or characters), falls
  linearly to 0 at length 0 below the range and at ``2 × max_length`` above it.
- repetition_factor is 1 when the share of distinct word n-grams is at least
  ``min_distinct_ratio`` and falls linearly to 0 as it approaches 0; this catches the
  degenerate "the the the ..." loops that sampling at high temperature produces.

It assumes whitespace-separated words (no tokenizer), which is fine for English text
and deliberately crude: it is a shaping signal or a baseline, not a quality judge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from polyray.reward.base import ParameterisedReward, ParamsModel, RewardItem, RewardResult, register


def compute_length_score(length: int, min_length: int, max_length: int) -> float:
    """1 inside [min_length, max_length]; linear to 0 at 0 and at 2 × max_length."""
    if length < min_length:
        return length / min_length
    if length <= max_length:
        return 1.0
    return max(0.0, 1.0 - (length - max_length) / max_length)


def compute_distinct_ratio(words: list[str], n: int) -> float:
    """Distinct n-grams / n-grams (1.0 when there are fewer than n words)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@register("length")
class LengthReward(ParameterisedReward):
    """Prefer completions of a target length that do not loop."""

    class Params(ParamsModel):
        unit: Literal["words", "chars"] = Field("words", description="Measure length in words or characters.")
        min_length: int = Field(5, ge=1, description="Shortest length with full length score.")
        max_length: int = Field(60, ge=1, description="Longest length with full length score.")
        ngram: int = Field(3, ge=1, le=8, description="n of the word n-grams used to detect repetition.")
        min_distinct_ratio: float = Field(
            0.6, ge=0, le=1, description="Distinct n-gram share at or above which repetition is not penalised."
        )

        @model_validator(mode="after")
        def _range(self) -> LengthReward.Params:
            if self.min_length > self.max_length:
                raise ValueError("min_length must be <= max_length")
            return self

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        return [self._score(item.completion) for item in items]

    def _score(self, completion: str) -> RewardResult:
        cfg = self.config
        words = completion.split()
        if not words:
            return RewardResult(score=0.0, detail={"reason": "empty completion", "length": 0})
        length = len(words) if cfg.unit == "words" else len(completion.strip())
        length_score = compute_length_score(length, cfg.min_length, cfg.max_length)
        distinct = compute_distinct_ratio([w.lower() for w in words], cfg.ngram)
        repetition = 1.0 if cfg.min_distinct_ratio == 0 else min(1.0, distinct / cfg.min_distinct_ratio)
        detail = {"length": length, "length_score": length_score, "distinct_ratio": round(distinct, 4)}
        return RewardResult(score=length_score * repetition, detail=detail)
