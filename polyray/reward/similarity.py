"""Reward "reference_similarity": how close a completion is to its prompt's reference, in [0, 1] (or
[-1, 1] for the embedding cosine).

The reward for data that has references and nothing else (a plain ``{prompt, response}`` or chat
file): GRPO then pulls samples toward what the references say, scored the way the JSONL task's
quality is (:mod:`polyray.tasks.quality`: ROUGE F-measure from ``rouge-score``, stemmed, or the cosine
of the shipped MiniLM sentence embeddings). Graded, not binary: pass@k advantages refuse it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polyray.reward.base import ParameterisedReward, ParamsModel, RewardError, RewardItem, RewardResult, register

SIMILARITY_METRICS = ("rougeL", "rouge1", "rouge2", "embedding")


@register("reference_similarity")
class ReferenceSimilarityReward(ParameterisedReward):
    """Similarity of each completion to its item's ``reference``."""

    class Params(ParamsModel):
        metric: Literal["rougeL", "rouge1", "rouge2", "embedding"] = Field(
            "rougeL", description="ROUGE F-measure (stemmed) or embedding cosine against the reference."
        )

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        from polyray.tasks.quality import compute_embedding_similarity, compute_rouge

        missing = [i for i, item in enumerate(items) if not item.reference]
        if missing:
            raise RewardError(f"reference_similarity: item {missing[0]} has no reference (the reward compares with it)")
        preds, refs = [item.completion for item in items], [item.reference for item in items]
        metric = self.config.metric
        if metric == "embedding":
            scores = compute_embedding_similarity(preds, refs, aggregate=False)
        else:
            scores = compute_rouge(preds, refs, aggregate=False)[metric]
        return [RewardResult(score=float(s), detail={"metric": metric}) for s in scores]
