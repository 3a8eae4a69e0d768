"""Reward "llm_judge": a judge model behind an OpenAI-compatible endpoint rates each completion
(:mod:`polyray.judge`): pointwise on several criteria, or pairwise against the item's reference with
both orders averaged. Scores are in [0, 1].

The judge is the server's instrument, asked with the operator's key, so what it is asked and how
it answers are the server's:

- The endpoint, its key, the judge model and the question templates are server-only parameters:
  an HTTP request cannot point the server at another URL, read another environment variable or
  replace the judge's prompt. It may pick one of the server's named ``templates`` by name
  (``template``). So are what bounds the time one request takes (``retries``, ``timeout_s``,
  ``max_concurrency``, the outage back-off): the service counts a request's judge calls against
  its budget (:mod:`polyray.reward.budget`) from the server's values.
- An item the judge never answered parseably has no score (``score`` None): the learner leaves it
  out of its group's advantages (:func:`polyray.objectives.advantages.compute_advantages`) instead of
  teaching that the completion was worth 0. A server may score it ``unparseable_score`` instead.
- When the endpoint is out (after the judge's bounded back-off), ``on_outage`` decides: ``fail``
  the request (HTTP 503, the learner's step fails), ``skip`` the item (no score, as unparseable) or
  score it ``neutral_score``.
- The judge's raw replies stay on the server unless it sets ``debug``: a caller learns the verdict
  and the attempts, not text the judge was steered into writing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from polyray.config.judge import JudgeConfig, JudgePrompts
from polyray.judge import LLMJudge, Verdict
from polyray.reward.base import ParameterisedReward, RewardError, RewardItem, RewardResult, register


class JudgeOutage(RewardError):
    """The judge endpoint was unavailable and the policy is ``fail``: HTTP 503 (``status``)."""

    status, field, code = 503, None, "judge_unavailable"


@register("llm_judge")
class LLMJudgeReward(ParameterisedReward):
    """A judge LLM's rating of each completion (pointwise) or preference over the reference (pairwise)."""

    server_only_params = (
        "base_url",
        "api_key_env",
        "model",
        "retries",
        "timeout_s",
        "max_concurrency",
        "pointwise_prompt",
        "pairwise_prompt",
        "system_prompt",
        "templates",
        "outage_retries",
        "backoff_s",
        "max_backoff_s",
        "on_outage",
        "neutral_score",
        "debug",
    )

    class Params(JudgeConfig):
        template: str = Field(
            "default",
            description="Which of the server's question templates to ask: 'default' (pointwise_prompt,"
            " pairwise_prompt) or a name in templates.",
        )
        templates: dict[str, JudgePrompts] = Field(
            default_factory=dict, description="Named question templates the server offers (a request picks by name)."
        )
        unparseable_score: float | None = Field(
            None,
            description="Score of an item the judge never answered parseably; None: no score (the learner"
            " leaves it out of the advantages).",
        )
        on_outage: Literal["fail", "skip", "neutral"] = Field(
            "fail",
            description="When the endpoint stays out after the back-off: fail the request (503), skip the"
            " item (no score) or score it neutral_score.",
        )
        neutral_score: float = Field(
            0.5, ge=0, le=1, description="Score of an item the judge could not be asked (on_outage: neutral)."
        )
        debug: bool = Field(False, description="Return the judge's raw replies in each result's detail.")

        @model_validator(mode="after")
        def _known_template(self):
            if self.template != "default" and self.template not in self.templates:
                known = ", ".join(["default", *sorted(self.templates)])
                raise ValueError(f"template: unknown template {self.template!r}; this server has: {known}")
            return self

    def __init__(self, **params):
        super().__init__(**params)
        cfg = self.config
        chosen = cfg.templates[cfg.template].model_dump() if cfg.template != "default" else {}
        judge_fields = set(JudgeConfig.model_fields)
        try:
            self.judge = LLMJudge(JudgeConfig(**{**cfg.model_dump(include=judge_fields), **chosen}))
        except ValueError as exc:
            raise RewardError(f"bad parameters for reward 'llm_judge': {exc}") from None

    def score_batch(self, items: list[RewardItem]) -> list[RewardResult]:
        prompts = [item.prompt for item in items]
        completions = [item.completion for item in items]
        if self.config.mode == "pairwise":
            missing = [i for i, item in enumerate(items) if not item.reference]
            if missing:
                raise RewardError(f"llm_judge pairwise compares with the item's reference; items {missing} have none")
            references = [item.reference for item in items]
            verdicts = self.judge.pairwise(prompts, completions, references, on_outage="verdict")
        else:
            verdicts = self.judge.pointwise(prompts, completions, on_outage="verdict")
        if self.config.on_outage == "fail":
            down = next((v for v in verdicts if v.outage), None)
            if down is not None:
                raise JudgeOutage(f"llm_judge: the judge endpoint is unavailable ({down.detail['error']})")
        return [self._result(v) for v in verdicts]

    def _result(self, verdict: Verdict) -> RewardResult:
        cfg = self.config
        detail = dict(verdict.detail)
        if not cfg.debug:
            detail.pop("replies", None)
        if verdict.outage:
            score = cfg.neutral_score if cfg.on_outage == "neutral" else None
            return RewardResult(score=score, detail={**detail, "outage": cfg.on_outage})
        return RewardResult(score=cfg.unparseable_score if verdict.score is None else verdict.score, detail=detail)
