"""Which reward applications a run deploys (polyray/reward/service.py ``plan_reward_apps``): the learner
always scores through a handle-only app of its own, the public HTTP app is a separate one."""

from __future__ import annotations

import pytest

from polyray.config import RewardConfig
from polyray.config.services import RewardServiceConfig
from polyray.reward.service import learner_app_name, plan_reward_apps

RUN_ARGS = {"num_cpus": 0.5, "functions": ["/home/u/my_rewards.py:score"], "resources": {}}


def _plan(running=(), public_args=None, **cfg):
    apps, warning = plan_reward_apps(RewardConfig(endpoint=True, **cfg), RUN_ARGS, set(running), public_args)
    return {a.name: a for a in apps}, warning


def test_the_learner_app_is_named_from_the_public_one():
    assert learner_app_name("reward") == "reward-learner"
    assert learner_app_name("scorer") == "scorer-learner" != "scorer"


def test_without_http_port_only_the_learners_app_is_deployed_and_without_a_route():
    apps, warning = _plan()
    assert list(apps) == ["reward-learner"] and warning is None
    assert apps["reward-learner"].route_prefix is None and apps["reward-learner"].args == RUN_ARGS


@pytest.mark.parametrize("app_name", ["reward", "scorer"])
def test_with_http_port_the_public_app_is_separate(app_name):
    apps, warning = _plan(http_port=8000, app_name=app_name)
    learner = f"{app_name}-learner"
    assert set(apps) == {app_name, learner} and warning is None
    assert apps[app_name].route_prefix == "/" and apps[learner].route_prefix is None
    assert apps[app_name].args == apps[learner].args == RUN_ARGS


def test_running_apps_are_reused():
    assert _plan(running=["reward-learner"]) == ({}, None)
    assert _plan(running=["reward", "reward-learner"], http_port=8000) == ({}, None)
    apps, _ = _plan(running=["reward-learner"], http_port=8000)  # only the public one is missing
    assert list(apps) == ["reward"] and apps["reward"].route_prefix == "/"
    apps, _ = _plan(running=["reward-learner", "other"], app_name="other")  # another app's learner is not this one's
    assert list(apps) == ["other-learner"]


def test_beside_an_operators_public_app_the_learner_copies_its_config():
    public = {
        "num_replicas": 4,
        "num_cpus": 2,
        "api_key_env": "REWARD_KEY",
        "max_ongoing_requests": 8,
        "functions": ["/srv/theirs.py:f", "/home/u/my_rewards.py:score"],
        "rewards": {"code_exec": {"timeout_s": 3}},
        "sandbox": {"allow_weak_sandbox": True},
        "resources": {"reward_node": 1.0},
    }
    for http_port in (None, 8000):  # the running public app is reused either way
        apps, warning = _plan(running=["reward"], public_args=public, http_port=http_port)
        assert list(apps) == ["reward-learner"] and warning is None
        args = apps["reward-learner"].args
        assert apps["reward-learner"].route_prefix is None
        assert args == {
            "num_cpus": 0.5,
            "max_ongoing_requests": 8,
            "rewards": {"code_exec": {"timeout_s": 3}},
            "sandbox": {"allow_weak_sandbox": True},
            "resources": {"reward_node": 1.0},
            "functions": ["/srv/theirs.py:f", "/home/u/my_rewards.py:score"],
        }
        config = RewardServiceConfig.model_validate(args)
        assert config.num_replicas == 1 and config.api_key_env is None and config.sandbox.allow_weak_sandbox
    run_args = {**RUN_ARGS, "resources": {"gpu_node": 1.0}}
    apps, _ = plan_reward_apps(RewardConfig(endpoint=True), run_args, {"reward"}, public)
    assert apps[0].args["resources"] == {"gpu_node": 1.0}  # the run's placement wins where it has one


def test_beside_a_public_app_of_unknown_args_the_learner_gets_the_runs_and_a_warning():
    apps, warning = _plan(running=["reward"])
    assert list(apps) == ["reward-learner"] and apps["reward-learner"].args == RUN_ARGS
    assert warning.startswith("reward.app_name: ") and "'reward-learner'" in warning and "\n" not in warning


def test_reserved_cpus_count_one_replica_per_app_the_run_deploys():
    assert RewardConfig(endpoint=False, http_port=8000).service_cpus() == 0.0
    assert RewardConfig(endpoint=True, num_cpus=0.5).service_cpus() == 0.5
    assert RewardConfig(endpoint=True, num_cpus=0.5, http_port=8000).service_cpus() == 1.0
