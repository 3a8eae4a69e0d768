"""Reward "weighted_sum" (polyray/reward/weighted.py) and how the RewardScorer runs it."""

from __future__ import annotations

import pytest

from polyray.reward import RewardError, RewardItem, build_reward, known_rewards
from polyray.reward.scorer import RewardScorer, ScoreJob, score_jobs
from polyray.tasks import countdown as cd

LENGTH = {"unit": "chars", "min_length": 4, "max_length": 8}


@pytest.fixture(scope="module")
def items() -> list[RewardItem]:
    prompts = cd.generate_prompts("test", 6, seed=2)
    completions = [" " + "9" * 12, " 1000*1000", "", " 12", "+", " 7 - 2 * 1"]
    out = [RewardItem(prompt=p.text, completion=p.reference, metadata=p.meta) for p in prompts]
    out += [RewardItem(prompt=p.text, completion=c, metadata=p.meta) for p, c in zip(prompts, completions)]
    return out


def weighted(*components) -> dict:
    return {"components": [dict(zip(("name", "weight", "params"), c)) for c in components]}


def separately(name: str, items, params=None) -> list[float]:
    return [r.score for r in build_reward(name, **(params or {})).score_batch(items)]


def test_registered():
    assert "weighted_sum" in known_rewards()
    assert any(d["name"] == "weighted_sum" for d in RewardScorer().describe())


def test_score_is_the_float64_weighted_sum_of_the_components(items):
    results = RewardScorer().score("weighted_sum", items, weighted(("length", 0.3, LENGTH), ("countdown", 2.0, {})))
    length, verified = separately("length", items, LENGTH), separately("countdown", items)
    assert [r.score for r in results] == [0.3 * a + 2.0 * b for a, b in zip(length, verified)]
    assert len({r.score for r in results}) > 2  # the items really differ
    assert results[0].detail == {
        "components": {"length": length[0], "countdown": verified[0]},
        "weights": {"length": 0.3, "countdown": 2.0},
    }


def test_negative_weights_and_repeated_names(items):
    scorer = RewardScorer()
    params = weighted(("countdown", 1.0, {}), ("length", -0.5, LENGTH), ("length", 0.25, {}))
    results = scorer.score("weighted_sum", items, params)
    verified, short, plain = (
        separately("countdown", items),
        separately("length", items, LENGTH),
        separately("length", items),
    )
    assert [r.score for r in results] == [1.0 * v - 0.5 * s + 0.25 * p for v, s, p in zip(verified, short, plain)]
    assert results[1].detail["weights"] == {"countdown": 1.0, "length#1": -0.5, "length#2": 0.25}
    assert set(results[1].detail["components"]) == {"countdown", "length#1", "length#2"}
    assert any(r.score < 0 for r in results)
    assert scorer.score("weighted_sum", [], params) == []


@pytest.mark.parametrize(
    "params, message",
    [
        (weighted(("weighted_sum", 1.0, {})), "components.0.name: .*cannot contain another weighted_sum"),
        (
            weighted(("length", 1.0, {}), ("nope", 1.0, {})),
            "components.1.name: .*unknown reward 'nope'; known: .*countdown",
        ),
        (weighted(("length", 0.0, {})), "components.0.weight: .*non-zero"),
        (weighted(("length", float("inf"), {})), "components.0.weight: .*finite"),
        (
            weighted(("length", 1.0, {"max_lenght": 3})),
            r"components.0: .*\['max_lenght'\] are not parameters of reward 'length'",
        ),
        ({"components": []}, "components: .*at least 1"),
        ({}, "components: Field required"),
    ],
)
def test_bad_components_are_refused_when_built(params, message):
    with pytest.raises(RewardError, match=message):
        build_reward("weighted_sum", **params)
    with pytest.raises(RewardError, match=message):
        RewardScorer().score("weighted_sum", [RewardItem(prompt="p", completion="c")], params)


def test_it_needs_a_scorer(items):
    fn = build_reward("weighted_sum", **weighted(("length", 1.0, {})))
    with pytest.raises(RewardError, match="RewardScorer"):
        fn.score_batch(items)


def test_the_scorers_defaults_reach_the_components(items):
    scorer = RewardScorer(defaults={"length": LENGTH})
    got = scorer.score("weighted_sum", items, weighted(("length", 1.0, {})))
    assert [r.score for r in got] == separately("length", items, LENGTH)
    # a component's params are overlaid on the defaults
    got = scorer.score("weighted_sum", items, weighted(("length", 1.0, {"max_length": 20})))
    assert [r.score for r in got] == separately("length", items, {**LENGTH, "max_length": 20})
    # the weighted sum itself can be configured by the server
    served = RewardScorer(defaults={"weighted_sum": weighted(("length", 2.0, LENGTH))})
    assert [r.score for r in served.score("weighted_sum", items)] == [
        2.0 * s for s in separately("length", items, LENGTH)
    ]


@pytest.mark.parametrize(
    "component", [("code_exec", 1.0, {"memory_mb": 16384}), ("engagement", 1.0, {"model_path": "/etc"})]
)
def test_a_request_cannot_set_a_components_server_only_params(component):
    item = RewardItem(prompt="p", completion="c", metadata={"no": "test"})
    scorer = RewardScorer()
    params = weighted(("length", 1.0, {}), component)
    with pytest.raises(RewardError, match=f"of reward '{component[0]}' are set by the server"):
        scorer.score("weighted_sum", [item], params, from_request=True)
    [outcome] = score_jobs(scorer, [ScoreJob("weighted_sum", [item], params, from_request=True)])
    assert isinstance(outcome, RewardError) and "set by the server" in str(outcome)
    if component[0] == "code_exec":  # in-cluster callers may (an item without a test scores 0, no sandbox)
        [result] = scorer.score("weighted_sum", [item], params, from_request=False)
        assert result.detail["components"]["code_exec"] == 0.0


def test_server_configured_components_keep_their_server_only_params():
    """A request that only names weighted_sum gets the server's components, server-only params included."""
    item = RewardItem(prompt="p", completion="some words here", metadata={"no": "test"})
    scorer = RewardScorer(
        defaults={"weighted_sum": weighted(("code_exec", 1.0, {"memory_mb": 256}), ("length", 1.0, {}))}
    )
    [result] = scorer.score("weighted_sum", [item], None, from_request=True)
    assert result.detail["components"] == {"code_exec": 0.0, "length": pytest.approx(0.6)}
