"""LLM-as-judge over any OpenAI-compatible endpoint (a hosted model, or polyray's own generation service).

Two protocols (docs/algorithms.md, "LLM judge"):

- **pointwise**: the judge rates a response on each criterion from 1 to ``scale``; the score is the
  mean over criteria of ``(rating - 1) / (scale - 1)``, in [0, 1].
- **pairwise**: the judge picks the better of two responses to the same prompt, asked twice with
  the order swapped (position-bias mitigation); the score is the candidate's mean win over the two
  orders (win 1, tie 0.5, loss 0), in [0, 1]; ``consistent`` says whether both orders agreed.

Replies are parsed leniently (the first JSON object in the text, else ``criterion: N`` / ``winner: A``
patterns). An unparseable reply is asked again (a new seed) up to ``retries`` times; after that the
item's score is None and its detail says why, so a caller decides (the ``llm_judge`` reward scores it
``unparseable_score``). Transport errors (connection, 429, 5xx) are retried by the ``openai`` client.
With ``structured: true`` the request carries a JSON schema (``response_format``), which servers that
support structured outputs (OpenAI, vLLM) honour.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from polyray.config.judge import JudgeConfig


@dataclass
class Verdict:
    score: float | None  # in [0, 1]; None: no parseable answer after every re-ask
    detail: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ parsing
def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (a reply may wrap it in prose or a code fence)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def parse_ratings(text: str, criteria: list[str], scale: int) -> dict[str, float] | None:
    """{criterion: rating in [1, scale]} for every criterion, else None."""
    obj = _json_object(text) or {}
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    ratings: dict[str, float] = {}
    for name in criteria:
        value = lowered.get(name.lower())
        if value is None:  # prose: "helpfulness: 7" / "Helpfulness = 7/10"
            match = re.search(rf"{re.escape(name)}\W{{0,3}}[:=]\s*([0-9]+(?:\.[0-9]+)?)", text, re.IGNORECASE)
            value = match.group(1) if match else None
        try:
            rating = float(value)
        except (TypeError, ValueError):
            return None
        if not 1 <= rating <= scale:
            return None
        ratings[name] = rating
    return ratings


def parse_winner(text: str) -> Literal["A", "B", "tie"] | None:
    obj = _json_object(text)
    value = obj.get("winner") if obj else None
    if value is None:
        match = re.search(r"winner\W{0,3}[:=]?\s*\W?(A|B|tie)\b", text, re.IGNORECASE)
        value = match.group(1) if match else None
    if not isinstance(value, str):
        return None
    value = value.strip().strip("\"'").lower()
    return {"a": "A", "b": "B", "tie": "tie"}.get(value)


def pointwise_score(ratings: dict[str, float], scale: int) -> float:
    return sum((r - 1) / (scale - 1) for r in ratings.values()) / len(ratings)


def pairwise_score(first: str, second: str) -> float:
    """The candidate's mean win: first asked as A (candidate first), second asked as B (swapped)."""
    win = {"A": 1.0, "tie": 0.5, "B": 0.0}
    return (win[first] + (1.0 - win[second])) / 2


# ------------------------------------------------------------------------------ asking
class LLMJudge:
    def __init__(self, config: JudgeConfig, http_client=None):
        """``http_client``: an ``httpx.Client`` for the ``openai`` client (tests; proxies)."""
        from openai import OpenAI

        self.config = config
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not key:
            raise ValueError(f"api_key_env: the environment variable {config.api_key_env} is not set")
        self.client = OpenAI(base_url=config.base_url, api_key=key or "none", timeout=config.timeout_s, max_retries=2,
                             http_client=http_client)  # fmt: skip

    def pointwise(self, prompts: list[str], responses: list[str]) -> list[Verdict]:
        cfg = self.config
        example = json.dumps({c: cfg.scale // 2 + 1 for c in cfg.criteria})
        schema = {"type": "object", "required": cfg.criteria, "additionalProperties": False,
                  "properties": {c: {"type": "integer", "minimum": 1, "maximum": cfg.scale} for c in cfg.criteria}}

        def one(pair: tuple[str, str]) -> Verdict:
            question = cfg.pointwise_prompt.format(scale=cfg.scale, criteria=", ".join(cfg.criteria), prompt=pair[0],
                                        response=pair[1], example=example)  # fmt: skip
            ratings, replies = self._ask(question, schema, lambda text: parse_ratings(text, cfg.criteria, cfg.scale))
            if ratings is None:
                return Verdict(None, {"error": "no parseable ratings", "replies": replies})
            return Verdict(pointwise_score(ratings, cfg.scale), {"ratings": ratings, "attempts": len(replies)})

        return self._map(one, list(zip(prompts, responses)))

    def pairwise(self, prompts: list[str], candidates: list[str], others: list[str]) -> list[Verdict]:
        cfg = self.config
        schema = {"type": "object", "required": ["winner"], "additionalProperties": False,
                  "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}}  # fmt: skip
        criteria = ", ".join(cfg.criteria)

        def one(triple: tuple[str, str, str]) -> Verdict:
            prompt, candidate, other = triple
            winners, attempts = [], []
            for a, b in ((candidate, other), (other, candidate)):  # both orders
                question = cfg.pairwise_prompt.format(criteria=criteria, prompt=prompt, a=a, b=b)
                winner, replies = self._ask(question, schema, parse_winner)
                if winner is None:
                    return Verdict(None, {"error": "no parseable winner", "replies": replies})
                winners.append(winner)
                attempts.append(len(replies))
            score = pairwise_score(*winners)
            consistent = winners[0] == {"A": "B", "B": "A", "tie": "tie"}[winners[1]]
            return Verdict(score, {"winners": winners, "consistent": consistent, "attempts": attempts})

        return self._map(one, list(zip(prompts, candidates, others)))

    def _ask(self, question: str, schema: dict, parse) -> tuple[Any, list[str]]:
        """(parsed answer or None, every reply): one ask and up to ``retries`` re-asks."""
        cfg = self.config
        replies: list[str] = []
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}}
        for attempt in range(cfg.retries + 1):
            response = self.client.chat.completions.create(
                model=cfg.model, messages=[{"role": "user", "content": question}], temperature=cfg.temperature,
                max_tokens=cfg.max_tokens, seed=cfg.seed + attempt, **(extra if cfg.structured else {}),
            )  # fmt: skip
            text = response.choices[0].message.content or ""
            replies.append(text)
            parsed = parse(text)
            if parsed is not None:
                return parsed, replies
        return None, replies

    def _map(self, fn, items: list) -> list[Verdict]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.config.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))
