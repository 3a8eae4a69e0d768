"""LLM-as-judge over any OpenAI-compatible endpoint (a hosted model, or polyray's own generation service).

Two protocols (docs/algorithms.md, "LLM judge"):

- **pointwise**: the judge rates a response on each criterion from 1 to ``scale``; the score is the
  mean over criteria of ``(rating - 1) / (scale - 1)``, in [0, 1].
- **pairwise**: the judge picks the better of two responses to the same prompt, asked twice with
  the order swapped (position-bias mitigation); the score is the candidate's mean win over the two
  orders (win 1, tie 0.5, loss 0), in [0, 1]; ``consistent`` says whether both orders agreed.

The judge is an instrument, not a proxy for whoever sends it text to grade:

- **Delimited data.** Every question is asked under the server's system message (``system_prompt``,
  by default :data:`SYSTEM <polyray.config.judge.SYSTEM>`) that declares the text between ``<prompt>``, ``<candidate>``,
  ``<response_a>`` and ``<response_b>`` tags data to grade, not instructions. The judge puts each
  piece between its tags itself (a question template cannot leave one bare), after neutralising any
  of those tags written inside the piece (``<`` becomes ``&lt;``), so a completion cannot close its
  own tag and speak as the question.
- **The last verdict counts.** With ``structured: true`` the request carries a JSON schema
  (``response_format``, which servers with structured outputs such as OpenAI and vLLM honour) and the
  reply must be that one JSON object. Otherwise the verdict is the *last* JSON object in the reply (a
  reply that quotes the response, and a verdict the response wrote for itself, before its own verdict
  does not win), else the last ``criterion: N`` / ``winner: A`` written after it.
- **Re-asks are new draws.** An unparseable reply is asked again up to ``retries`` times, each with
  a new seed and temperature ``retry_temperature`` (> 0), not the same T = 0 request again; after that
  the item's score is None and its detail says why (the ``llm_judge`` reward leaves it out of the
  advantages, or scores it ``unparseable_score``).
- **Bounded outages.** A connection error, timeout, 429 or 5xx is asked again ``outage_retries``
  times, waiting ``backoff_s`` and then twice as long each time, at most ``max_backoff_s``; then the
  judge is unavailable for that item (:class:`JudgeUnavailable`, or with ``on_outage="verdict"`` a
  verdict that says so, for a caller with its own policy). Other refusals (400, 401, 404) are not
  retried.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from polyray.config.judge import JudgeConfig

TAGS = ("prompt", "candidate", "response_a", "response_b")
_TAG = re.compile(rf"<(?=\s*/?\s*(?:{'|'.join(TAGS)})\b)", re.IGNORECASE)


class JudgeUnavailable(RuntimeError):
    """The judge endpoint did not answer (after the bounded back-off) or refused every request (401, 403,
    404: the judge's settings are wrong)."""


def _server_message(exc) -> str:
    """The error message an OpenAI-compatible server sent (its ``error.message``), else the exception's."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if message is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    return str(message or exc)[:500]


class JudgeRefusedItem(RuntimeError):
    """The judge endpoint refused one item's question as a bad request (400: e.g. longer than the judge's
    context): that item has no score, the others are judged."""


@dataclass
class Verdict:
    # in [0, 1]; None: no parseable answer after every re-ask, or no answer at all
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    # no answer: the endpoint was unavailable (detail["error"] says how)
    outage: bool = False


# ------------------------------------------------------------------------------ delimiting
def delimit(tag: str, text: str) -> str:
    """``text`` between ``<tag>`` tags, any of the judge's tags inside it neutralised (``<`` -> ``&lt;``),
    so the piece cannot end its own tag early or open another."""
    return f"<{tag}>\n{_TAG.sub('&lt;', text)}\n</{tag}>"


# ------------------------------------------------------------------------------ parsing
def _json_objects(text: str) -> list[tuple[int, int, dict[str, Any]]]:
    """(start, end, object) of each top-level JSON object in ``text``, in order (prose and code fences between)."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while (start := text.find("{", pos)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(obj, dict):
            out.append((start, end, obj))
        pos = end
    return out


def _strict_object(text: str) -> dict[str, Any] | None:
    """The reply as one JSON object (structured outputs), else None."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _ratings_of(obj: dict[str, Any], criteria: list[str], scale: int) -> dict[str, float] | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    return _checked({name: lowered.get(name.lower()) for name in criteria}, scale)


def _checked(values: dict[str, Any], scale: int) -> dict[str, float] | None:
    ratings: dict[str, float] = {}
    for name, value in values.items():
        try:
            rating = float(value)
        except (TypeError, ValueError):
            return None
        if not 1 <= rating <= scale:
            return None
        ratings[name] = rating
    return ratings


def parse_ratings(text: str, criteria: list[str], scale: int, strict: bool = False) -> dict[str, float] | None:
    """{criterion: rating in [1, scale]} for every criterion, else None.

    ``strict``: the whole reply must be one JSON object (structured outputs). Otherwise the last JSON
    object that rates every criterion, unless prose ratings (``helpfulness: 7``) for every criterion
    come after it, then the last of those.
    """
    if strict:
        obj = _strict_object(text.strip())
        return None if obj is None else _ratings_of(obj, criteria, scale)
    found = [(end, r) for _, end, obj in _json_objects(text) if (r := _ratings_of(obj, criteria, scale)) is not None]
    json_end, ratings = found[-1] if found else (-1, None)
    prose: dict[str, Any] = {}
    prose_start = len(text)
    # "helpfulness: 7" / "Helpfulness = 7/10": the last one written
    for name in criteria:
        matches = list(re.finditer(rf"{re.escape(name)}\W{{0,3}}[:=]\s*([0-9]+(?:\.[0-9]+)?)", text, re.IGNORECASE))
        if not matches:
            return ratings
        prose[name] = matches[-1].group(1)
        prose_start = min(prose_start, matches[-1].start())
    return _checked(prose, scale) if prose_start >= json_end else ratings


_WINNERS = {"a": "A", "b": "B", "tie": "tie"}


def _winner_of(value: Any) -> Literal["A", "B", "tie"] | None:
    return _WINNERS.get(value.strip().strip("\"'").lower()) if isinstance(value, str) else None


def parse_winner(text: str, strict: bool = False) -> Literal["A", "B", "tie"] | None:
    """ "A", "B" or "tie", else None: ``strict`` as :func:`parse_ratings`; otherwise the last JSON object
    naming a winner, unless a prose ``winner: A`` comes after it."""
    if strict:
        obj = _strict_object(text.strip())
        return None if obj is None else _winner_of(obj.get("winner"))
    found = [(end, w) for _, end, obj in _json_objects(text) if (w := _winner_of(obj.get("winner"))) is not None]
    last_json_end, winner = found[-1] if found else (-1, None)
    matches = list(re.finditer(r"winner\W{0,3}[:=]?\s*\W?(A|B|tie)\b", text, re.IGNORECASE))
    if matches and matches[-1].start() >= last_json_end:
        return _winner_of(matches[-1].group(1))
    return winner


def pointwise_score(ratings: dict[str, float], scale: int) -> float:
    return sum((r - 1) / (scale - 1) for r in ratings.values()) / len(ratings)


def pairwise_score(first: str, second: str) -> float:
    """The candidate's mean win: first asked as A (candidate first), second asked as B (swapped)."""
    win = {"A": 1.0, "tie": 0.5, "B": 0.0}
    return (win[first] + (1.0 - win[second])) / 2


# ------------------------------------------------------------------------------ asking
class LLMJudge:
    def __init__(self, config: JudgeConfig, http_client=None, sleep: Callable[[float], None] = time.sleep):
        """``http_client``: an ``httpx.Client`` for the ``openai`` client (tests; proxies); ``sleep``: how
        the back-off waits (tests record it)."""
        from openai import OpenAI

        self.config = config
        self.sleep = sleep
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not key:
            raise ValueError(f"api_key_env: the environment variable {config.api_key_env} is not set")
        # max_retries=0: the judge's own bounded back-off (outage_retries, backoff_s) does the retrying
        self.client = OpenAI(
            base_url=config.base_url,
            api_key=key or "none",
            timeout=config.timeout_s,
            max_retries=0,
            http_client=http_client,
        )

    def pointwise(
        self, prompts: list[str], responses: list[str], on_outage: Literal["raise", "verdict"] = "raise"
    ) -> list[Verdict]:
        """One verdict per response. ``on_outage``: raise :class:`JudgeUnavailable` when the endpoint is
        unavailable for an item, or give that item a verdict with ``outage`` set."""
        cfg = self.config
        example = json.dumps({c: cfg.scale // 2 + 1 for c in cfg.criteria})
        schema = {
            "type": "object",
            "required": cfg.criteria,
            "additionalProperties": False,
            "properties": {c: {"type": "integer", "minimum": 1, "maximum": cfg.scale} for c in cfg.criteria},
        }

        def one(pair: tuple[str, str]) -> Verdict:
            question = cfg.pointwise_prompt.format(
                scale=cfg.scale,
                criteria=", ".join(cfg.criteria),
                prompt=delimit("prompt", pair[0]),
                response=delimit("candidate", pair[1]),
                example=example,
            )
            parse = lambda text: parse_ratings(text, cfg.criteria, cfg.scale, cfg.structured)  # noqa: E731
            ratings, replies = self._ask(question, schema, parse)
            if ratings is None:
                return Verdict(None, {"error": "no parseable ratings", "attempts": len(replies), "replies": replies})
            return Verdict(pointwise_score(ratings, cfg.scale), {"ratings": ratings, "attempts": len(replies)})

        return self._map(one, list(zip(prompts, responses)), on_outage)

    def pairwise(
        self,
        prompts: list[str],
        candidates: list[str],
        others: list[str],
        on_outage: Literal["raise", "verdict"] = "raise",
    ) -> list[Verdict]:
        """One verdict per candidate against the other response, both orders asked (``on_outage`` as
        :meth:`pointwise`)."""
        cfg = self.config
        schema = {
            "type": "object",
            "required": ["winner"],
            "additionalProperties": False,
            "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
        }
        criteria = ", ".join(cfg.criteria)

        def one(triple: tuple[str, str, str]) -> Verdict:
            prompt, candidate, other = triple
            winners, attempts = [], []
            # both orders
            for a, b in ((candidate, other), (other, candidate)):
                question = cfg.pairwise_prompt.format(
                    criteria=criteria,
                    prompt=delimit("prompt", prompt),
                    a=delimit("response_a", a),
                    b=delimit("response_b", b),
                )
                winner, replies = self._ask(question, schema, lambda text: parse_winner(text, cfg.structured))
                attempts.append(len(replies))
                if winner is None:
                    return Verdict(None, {"error": "no parseable winner", "attempts": attempts, "replies": replies})
                winners.append(winner)
            score = pairwise_score(*winners)
            consistent = winners[0] == {"A": "B", "B": "A", "tie": "tie"}[winners[1]]
            return Verdict(score, {"winners": winners, "consistent": consistent, "attempts": attempts})

        return self._map(one, list(zip(prompts, candidates, others)), on_outage)

    def _ask(self, question: str, schema: dict, parse) -> tuple[Any, list[str]]:
        """(parsed answer or None, every reply): one ask and up to ``retries`` re-asks, each a new draw
        (the next seed, temperature ``retry_temperature``)."""
        cfg = self.config
        replies: list[str] = []
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}}
        messages = [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": question}]
        for attempt in range(cfg.retries + 1):
            response = self._create(
                model=cfg.model,
                messages=messages,
                max_tokens=cfg.max_tokens,
                seed=cfg.seed + attempt,
                temperature=cfg.temperature if attempt == 0 else cfg.retry_temperature,
                **(extra if cfg.structured else {}),
            )
            text = response.choices[0].message.content or ""
            replies.append(text)
            parsed = parse(text)
            if parsed is not None:
                return parsed, replies
        return None, replies

    def _create(self, **request):
        """One chat completion, asked again with exponential back-off while the endpoint is out
        (connection error, timeout, 429, 5xx); :class:`JudgeUnavailable` after ``outage_retries``."""
        import openai

        cfg = self.config
        for attempt in range(cfg.outage_retries + 1):
            try:
                return self.client.chat.completions.create(**request)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                if attempt == cfg.outage_retries:
                    raise JudgeUnavailable(f"no answer after {attempt + 1} tries: {type(exc).__name__}") from exc
                self.sleep(min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt))
            # this question: asking it again would not help
            except openai.BadRequestError as exc:
                raise JudgeRefusedItem(_server_message(exc)) from exc
            # 401, 403, 404: no question will be answered
            except openai.APIStatusError as exc:
                raise JudgeUnavailable(f"refused: HTTP {exc.status_code}: {_server_message(exc)}") from exc
        raise AssertionError("unreachable")

    def _map(self, fn, items: list, on_outage: str) -> list[Verdict]:
        def guarded(item) -> Verdict:
            try:
                return fn(item)
            except JudgeRefusedItem as exc:
                return Verdict(None, {"error": f"the judge endpoint refused the question (HTTP 400): {exc}"})
            except JudgeUnavailable as exc:
                if on_outage == "raise":
                    raise
                return Verdict(None, {"error": f"judge unavailable: {exc}"}, outage=True)

        if len(items) <= 1:
            return [guarded(item) for item in items]
        with ThreadPoolExecutor(min(self.config.max_concurrency, len(items))) as pool:
            return list(pool.map(guarded, items))
