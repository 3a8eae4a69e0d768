"""The reward service's per-request budgets (polyray/reward/budget.py) and what a request may set.

One request must not hold a replica for hours: caps on what it may set (400 naming the field),
budgets on the work its items add up to (413), NaN and infinity refused, server-only values
neither settable nor shown.
"""

from __future__ import annotations

import json
import math

import pytest

from polyray.config.services import RewardRequestLimits, RewardServiceConfig
from polyray.reward import RewardError
from polyray.reward.budget import RequestTooCostly, check_request
from polyray.reward.scorer import RewardScorer

JUDGE = {"base_url": "http://judge.internal:8000/v1", "model": "judge-7b"}


def _refused(scorer, reward, params, n, limits=None):
    with pytest.raises(RequestTooCostly) as info:
        check_request(scorer, reward, params, n, limits or RewardRequestLimits())
    return info.value


def test_code_exec_timeout_is_capped_and_sandbox_seconds_budgeted():
    scorer = RewardScorer()
    check_request(scorer, "code_exec", {"timeout_s": 30}, 100, RewardRequestLimits())  # 100 x 30 / 4 = 750 s
    err = _refused(scorer, "code_exec", {"timeout_s": 120}, 1)
    assert err.status == 400 and err.field == "params.timeout_s" and "30" in str(err)
    err = _refused(scorer, "code_exec", {"timeout_s": 30}, 1024)  # 1024 sleepers x 30 s / 4 workers
    assert err.status == 413 and err.field == "items" and "sandbox seconds" in str(err)
    # the server's own default counts too: 1024 items x 10 s / 4 workers = 2560 s > 900
    assert _refused(scorer, "code_exec", {}, 1024).status == 413
    err = _refused(scorer, "code_exec", {"timeout_s": math.inf}, 1)
    assert err.status == 400 and err.field == "params.timeout_s"


def test_weighted_sum_components_are_capped_and_summed():
    scorer = RewardScorer()
    many = {"components": [{"name": "length", "weight": 1.0}] * 100_000}
    err = _refused(scorer, "weighted_sum", many, 1)
    assert err.status == 400 and err.field == "params.components" and "100000" in str(err)
    slow = {"components": [{"name": "code_exec", "weight": 1.0, "params": {"timeout_s": 120}}]}
    err = _refused(scorer, "weighted_sum", slow, 1)
    assert err.status == 400 and err.field == "params.components.0.params.timeout_s"
    # each component is within its caps; together they are over the budget
    twice = {"components": [{"name": "code_exec", "weight": 1.0, "params": {"timeout_s": 30}}] * 2}
    check_request(scorer, "weighted_sum", twice, 60, RewardRequestLimits())  # 2 x 60 x 30 / 4 = 900
    assert _refused(scorer, "weighted_sum", twice, 61).status == 413


def test_judge_calls_are_budgeted_and_their_knobs_are_server_only():
    scorer = RewardScorer({"llm_judge": JUDGE})
    check_request(scorer, "llm_judge", {}, 682, RewardRequestLimits())  # 682 x 3 = 2046
    err = _refused(scorer, "llm_judge", {"mode": "pairwise"}, 400)  # 400 x 3 x 2
    assert err.status == 413 and "judge calls" in str(err)
    for knob, value in [("retries", 10), ("timeout_s", 1e9), ("max_concurrency", 256)]:
        with pytest.raises(RewardError, match=f"{knob}.*set by the server"):
            scorer.get("llm_judge", {knob: value}, from_request=True)


def test_nan_and_infinity_are_refused_in_reward_parameters():
    for reward, params in [
        ("llm_judge", {**JUDGE, "unparseable_score": math.nan}),
        ("llm_judge", {**JUDGE, "timeout_s": math.inf}),
        ("length", {"max_length": math.inf}),
        ("code_exec", {"timeout_s": math.nan}),
    ]:
        with pytest.raises(RewardError, match="finite"):
            RewardScorer().get(reward, params)
    with pytest.raises(ValueError, match="max_sandbox_s"):
        RewardServiceConfig.model_validate({"limits": {"max_sandbox_s": "Infinity"}})


def test_rewards_listing_hides_server_only_defaults():
    """GET /v1/rewards: no internal judge URL, key variable, judge model, question template, model path."""
    secret = {"pointwise_prompt": "SERVER-ONLY {prompt} {response}", "pairwise_prompt": "SERVER-ONLY {prompt} {a} {b}"}
    judge = {
        **JUDGE,
        "criteria": ["clarity"],
        "api_key_env": "PATH",
        "model": "judge-internal-7b",
        **secret,
        "templates": {"strict": secret},
        "debug": True,
        "template": "strict",
    }
    scorer = RewardScorer({"llm_judge": judge, "engagement": {"model_path": "/srv/m"}})
    listing = {r["name"]: r for r in scorer.describe()}
    assert listing["llm_judge"]["defaults"] == {"criteria": ["clarity"], "template": "strict"}
    assert listing["engagement"]["defaults"] == {}
    text = json.dumps(listing)
    for value in ("judge.internal", "/srv/m", '"PATH"', "judge-internal-7b", "SERVER-ONLY"):
        assert value not in text, value
