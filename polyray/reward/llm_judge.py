"""Reward "llm_judge": a judge model behind an OpenAI-compatible endpoint rates each completion
(:mod:`polyray.judge`): pointwise on several criteria, or pairwise against the item's reference with
both orders averaged. Scores are in [0, 1]; an item the judge never answered parseably scores
``unparseable_score`` and says so in its detail.

The endpoint, its key and the judge model are server-only parameters: an HTTP request to the reward
service cannot point the server at another URL or read another environment variable. So are what
bounds the time one request takes (``retries``, ``timeout_s``, ``max_concurrency``): the service counts
a request's judge calls against its budget (:mod:`polyray.reward.budget`) from the server's values.
"""

from __future__ import annotations

from pydantic import Field

from polyray.config.judge import JudgeConfig
from polyray.judge import LLMJudge
from polyray.reward.base import ParameterisedReward, RewardError, RewardItem, RewardResult, register


@register("llm_judge")
class LLMJudgeReward(ParameterisedReward):
    """A judge LLM's rating of each completion (pointwise) or preference over the reference (pairwise)."""

    server_only_params = ("base_url", "api_key_env", "model", "retries", "timeout_s", "max_concurrency")

    class Params(JudgeConfig):
        unparseable_score: float = Field(0.0, description="Score of an item the judge never answered parseably.")

    def __init__(self, **params):
        super().__init__(**params)
        try:
            self.judge = LLMJudge(JudgeConfig(**self.config.model_dump(exclude={"unparseable_score"})))
        except ValueError as exc:
            raise RewardError(f"bad parameters for reward 'llm_judge': {exc}") from None

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        prompts = [item.prompt for item in items]
        completions = [item.completion for item in items]
        if self.config.mode == "pairwise":
            missing = [i for i, item in enumerate(items) if not item.reference]
            if missing:
                raise RewardError(f"llm_judge pairwise compares with the item's reference; items {missing} have none")
            verdicts = self.judge.pairwise(prompts, completions, [item.reference for item in items])
        else:
            verdicts = self.judge.pointwise(prompts, completions)
        return [
            RewardResult(score=self.config.unparseable_score if v.score is None else v.score, detail=v.detail)
            for v in verdicts
        ]
