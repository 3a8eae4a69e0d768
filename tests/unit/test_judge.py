"""The LLM judge (polyray/judge.py): parsing, scores, both orders, re-asks, and the llm_judge reward.

The judge endpoint here is an ``httpx.MockTransport`` answering OpenAI's chat protocol with scripted
replies; tests/integration/test_generation_service.py runs the judge against polyray's own
generation service."""

from __future__ import annotations

import json

import httpx
import pytest

from polyray.config.judge import JudgeConfig
from polyray.judge import LLMJudge, pairwise_score, parse_ratings, parse_winner, pointwise_score

CRITERIA = ["helpfulness", "specificity"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"helpfulness": 7, "specificity": 3}', {"helpfulness": 7.0, "specificity": 3.0}),
        ('Sure!\n```json\n{"Helpfulness": "8", "specificity": 10}\n```', {"helpfulness": 8.0, "specificity": 10.0}),
        ("Helpfulness: 6/10\nSpecificity = 2", {"helpfulness": 6.0, "specificity": 2.0}),
        ('{"helpfulness": 7}', None),  # a criterion missing
        ('{"helpfulness": 11, "specificity": 3}', None),  # off the scale
        ('{"helpfulness": 0, "specificity": 3}', None),
        ('{"helpfulness": "good", "specificity": 3}', None),
        ("{not json} helpfulness", None),
        ("", None),
    ],
)
def test_parse_ratings(text, expected):
    assert parse_ratings(text, CRITERIA, 10) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{"winner": "A"}', "A"), ('I think {"winner": "b"}', "B"), ("Winner: tie.", "tie"), ("winner = A", "A"),
     ('{"winner": "C"}', None), ("A is better", None), ("", None)],
)  # fmt: skip
def test_parse_winner(text, expected):
    assert parse_winner(text) == expected


def test_scores_by_hand():
    assert pointwise_score({"a": 1, "b": 10}, 10) == pytest.approx(0.5)  # (0 + 1) / 2
    assert pointwise_score({"a": 4}, 7) == pytest.approx(0.5)
    # candidate asked first as A, then as B
    assert pairwise_score("A", "B") == 1.0  # won both orders
    assert pairwise_score("B", "A") == 0.0
    assert pairwise_score("A", "A") == 0.5  # position bias: the first slot won both times
    assert pairwise_score("tie", "B") == 0.75
    assert pairwise_score("tie", "tie") == 0.5


def _judge(replies, **config) -> tuple[LLMJudge, list[dict]]:
    """A judge whose endpoint answers with ``replies(request_body)``; returns it and the requests seen."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        text = replies(body)
        if isinstance(text, int):
            return httpx.Response(text, json={"error": {"message": "busy", "type": "x", "code": text}})
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        })  # fmt: skip

    cfg = JudgeConfig(base_url="http://judge.test/v1", model="judge", criteria=CRITERIA, **config)
    return LLMJudge(cfg, http_client=httpx.Client(transport=httpx.MockTransport(handler))), seen


def test_pointwise_re_asks_malformed_replies_with_new_seeds():
    answers = iter(["I'd say pretty good", '{"helpfulness": 9}', '{"helpfulness": 9, "specificity": 5}'])
    judge, seen = _judge(lambda body: next(answers), retries=2)
    (verdict,) = judge.pointwise(["prompt"], ["response"])
    assert verdict.score == pytest.approx((8 / 9 + 4 / 9) / 2)
    assert verdict.detail == {"ratings": {"helpfulness": 9.0, "specificity": 5.0}, "attempts": 3}
    assert [b["seed"] for b in seen] == [0, 1, 2] and "response" in seen[0]["messages"][0]["content"]
    assert "response_format" not in seen[0]


def test_pointwise_gives_up_after_the_retries():
    judge, seen = _judge(lambda body: "no idea", retries=1)
    (verdict,) = judge.pointwise(["p"], ["r"])
    assert verdict.score is None and verdict.detail["replies"] == ["no idea", "no idea"] and len(seen) == 2


def test_transport_errors_are_retried_by_the_client():
    calls = iter([503, '{"helpfulness": 2, "specificity": 2}'])
    judge, seen = _judge(lambda body: next(calls), retries=0)
    assert judge.pointwise(["p"], ["r"])[0].score == pytest.approx(1 / 9) and len(seen) == 2


def test_pairwise_asks_both_orders():
    def prefer_the_sky(body):  # a judge that picks whichever response mentions the sky
        text = body["messages"][0]["content"]
        a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        return '{"winner": "A"}' if "sky" in a else '{"winner": "B"}'

    judge, seen = _judge(prefer_the_sky, structured=True)
    verdicts = judge.pairwise(["p", "p"], ["the sky", "the sea"], ["the sea", "the sky"])
    assert [v.score for v in verdicts] == [1.0, 0.0] and all(v.detail["consistent"] for v in verdicts)
    assert len(seen) == 4 and seen[0]["response_format"]["json_schema"]["schema"]["required"] == ["winner"]
    biased, _ = _judge(lambda body: '{"winner": "A"}')  # always the first slot
    (v,) = biased.pairwise(["p"], ["x"], ["y"])
    assert v.score == 0.5 and v.detail["consistent"] is False


def test_llm_judge_reward(monkeypatch):
    from polyray.reward import RewardError, RewardItem, build_reward
    from polyray.reward.scorer import RewardScorer

    with pytest.raises(RewardError, match="base_url"):
        build_reward("llm_judge", model="m")
    with pytest.raises(RewardError, match="POLYRAY_NO_SUCH_KEY"):
        build_reward("llm_judge", base_url="http://x/v1", model="m", api_key_env="POLYRAY_NO_SUCH_KEY")
    reward = build_reward("llm_judge", base_url="http://x/v1", model="m", criteria=CRITERIA, unparseable_score=-1.0)
    reward.judge, _ = _judge(lambda body: "?" if "bad" in body["messages"][0]["content"] else
                             '{"helpfulness": 10, "specificity": 10}', retries=0)  # fmt: skip
    items = [RewardItem(prompt="p", completion="good"), RewardItem(prompt="p", completion="bad")]
    assert [r.score for r in reward.score_batch(items)] == [1.0, -1.0]
    with pytest.raises(RewardError, match=r"\[.base_url.\] .* set by the server"):  # a request cannot redirect it
        RewardScorer().resolve_params("llm_judge", {"base_url": "http://evil/v1"}, from_request=True)
    pairwise = build_reward("llm_judge", base_url="http://x/v1", model="m", mode="pairwise")
    with pytest.raises(RewardError, match="reference"):
        pairwise.score_batch(items)
