"""The custom reward: a user's function named in the config, checked when the config loads, its
output checked on every call, its code staged for the reward replicas' runtime environment.

Each test writes its own reward file into ``tmp_path`` (outside the repository), as a user would.
The service path (the file shipped to a real replica, scored over HTTP) is in
``tests/integration/test_reward_service.py``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from polyray.config import load_config
from polyray.config.functions import shipped_package
from polyray.config.run import custom_reward_functions
from polyray.io import ConfigError
from polyray.reward.base import RewardError
from polyray.reward.custom import CustomRewardError, _is_installed, runtime_env
from polyray.reward.scorer import RewardScorer

REWARDS = """
import math

def score(prompts, completions, references, metadata):
    return [len(c) + m.get("bonus", 0) for c, m in zip(completions, metadata)]

def loose(prompts, completions, **kwargs):
    return [0.5] * len(completions)

def short(prompts, completions, **kwargs):
    return [1.0]

def nan(prompts, completions, **kwargs):
    return [math.nan] * len(completions)

def inf(prompts, completions, **kwargs):
    return [math.inf] * len(completions)

def text(prompts, completions, **kwargs):
    return ["0.5"] * len(completions)

def nothing(prompts, completions, **kwargs):
    pass

def boom(prompts, completions, **kwargs):
    return {}["target"]

def arrays(prompts, completions, **kwargs):
    import numpy as np
    return np.arange(len(completions), dtype=np.float32)

def two(prompts, completions):
    return [0.0] * len(completions)

def extra(prompts, completions, references, metadata, scale):
    return [scale] * len(completions)

NOT_A_FUNCTION = 3
"""

ITEMS = [{"prompt": "p", "completion": "abc"}, {"prompt": "p", "completion": "abcdef", "metadata": {"bonus": 1}}]


@pytest.fixture
def rewards_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return path


QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"  # phases: sft, grpo


def custom(ref: str, *more: str):
    return load_config(QUICKSTART, ["reward.name=custom", f"reward.params.function={ref}", *more])


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_relative_file_is_made_absolute_when_the_config_loads(rewards_file):
    run = custom("my_rewards.py:score")
    assert run.reward.params["function"] == f"{rewards_file}:score"


@pytest.mark.parametrize(
    "ref, needle",
    [
        ("nope.py:score", "no file"),
        ("my_rewards.py:missing", "has no attribute 'missing'"),
        ("my_rewards.py:NOT_A_FUNCTION", "is not callable"),
        ("my_rewards.py:two", "takes no references, metadata"),
        ("my_rewards.py:extra", "requires scale"),
        ("my_rewards", "is not 'module:name'"),
        ("no_such_module_anywhere:score", "No module named 'no_such_module_anywhere'"),
    ],
)
def test_a_function_that_cannot_be_used_is_one_line_naming_the_field(rewards_file, ref, needle):
    message = config_error("reward.name=custom", f"reward.params.function={ref}")
    assert message.startswith(f"{QUICKSTART}: reward.params: function: ") and needle in message


def test_an_import_error_in_the_users_file_names_its_line(tmp_path, monkeypatch):
    (tmp_path / "broken.py").write_text("x = 1\nraise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)
    message = config_error("reward.name=custom", "reward.params.function=broken.py:score")
    assert "RuntimeError: no GPU here at broken.py:2" in message


def test_custom_without_a_function_and_inside_a_weighted_sum_or_a_phase(rewards_file):
    assert "reward.params: function: required" in config_error("reward.name=custom")
    components = "[{name: length, weight: 1}, {name: custom, weight: 2, params: {function: gone.py:score}}]"
    message = config_error("reward.name=weighted_sum", f"reward.params.components={components}")
    assert "reward.params: components.1.params.function: " in message and "no file" in message
    message = config_error("phases.1.reward={name: custom, params: {function: my_rewards.py:nope}}")
    assert message.startswith(f"{QUICKSTART}: phases.1.reward.params: function: ")


def test_every_custom_function_of_a_run_is_listed_for_the_replicas(rewards_file):
    components = "[{name: custom, weight: 1, params: {function: my_rewards.py:loose}}]"
    run = custom("my_rewards.py:score", f"phases.1.reward={{name: weighted_sum, params: {{components: {components}}}}}")
    assert custom_reward_functions(run) == [f"{rewards_file}:loose"]  # the grpo phase scores with its own reward
    run = custom("my_rewards.py:score")
    assert custom_reward_functions(run, run) == [f"{rewards_file}:score"]


def test_scores_are_the_functions_in_item_order(rewards_file):
    results = RewardScorer().score("custom", ITEMS, {"function": "my_rewards.py:score"})
    assert [r.score for r in results] == [3.0, 7.0]
    arrays = RewardScorer().score(
        "custom", ITEMS * 2, {"function": "my_rewards.py:arrays"}
    )  # numpy scalars are numbers
    assert [r.score for r in arrays] == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "name, needle",
    [
        ("short", "returned 1 scores for 2 items"),
        ("nan", "item 0 scored nan; each score must be finite"),
        ("inf", "item 0 scored inf"),
        ("text", "item 0 scored '0.5' (str); each score must be a number"),
        ("nothing", "returned a NoneType"),
        ("boom", "raised KeyError: 'target' at my_rewards.py:26"),
    ],
)
def test_bad_output_is_a_clear_error_naming_the_function(rewards_file, name, needle):
    with pytest.raises(CustomRewardError) as info:
        RewardScorer().score("custom", ITEMS, {"function": f"my_rewards.py:{name}"})
    message = str(info.value)
    assert message.startswith(f"custom reward my_rewards.py:{name}") and needle in message, message
    assert str(rewards_file.parent) not in message  # an HTTP caller never sees the server's paths
    assert info.value.__context__ is None or info.value.__suppress_context__  # not the user's traceback


def test_a_request_may_not_name_the_function(rewards_file):
    scorer = RewardScorer({"custom": {"function": "my_rewards.py:score"}})
    assert [r.score for r in scorer.score("custom", ITEMS, from_request=True)] == [3.0, 7.0]  # the server's own
    with pytest.raises(RewardError, match="set by the server"):
        scorer.score("custom", ITEMS, {"function": "my_rewards.py:loose"}, from_request=True)


def test_a_file_is_staged_as_a_package_of_its_own(rewards_file, tmp_path):
    env = runtime_env(
        [f"{rewards_file}:score", "my_rewards.py:loose"], staging=tmp_path / "stage", upload=False
    )  # one file, once
    (package,) = env["py_modules"]
    assert Path(package).name == shipped_package(rewards_file)
    assert (Path(package) / "my_rewards.py").read_text() == REWARDS and (Path(package) / "__init__.py").is_file()
    assert runtime_env([]) == {}


def test_a_local_module_ships_its_package_and_an_installed_one_does_not(tmp_path, monkeypatch):
    (tmp_path / "myteam").mkdir()
    (tmp_path / "myteam" / "__init__.py").write_text("")
    (tmp_path / "myteam" / "scoring.py").write_text(
        "def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = runtime_env(["myteam.scoring:score"], upload=False)  # local, whether or not an earlier test left Ray up
    assert [m.__name__ for m in env["py_modules"]] == ["myteam"]
    assert not _is_installed("myteam.scoring") and _is_installed("numpy.linalg") and _is_installed("json")


def test_a_replica_prefers_the_copy_shipped_with_it(rewards_file, tmp_path, monkeypatch):
    """On a replica the driver's file may be missing or different: the shipped copy is what it runs."""
    shipped = tmp_path / "runtime_resources"
    package = shipped / shipped_package(rewards_file)
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "my_rewards.py").write_text(
        "def score(prompts, completions, references, metadata):\n    return [-1.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(shipped))  # what py_modules does on the replica's node
    rewards_file.unlink()
    results = RewardScorer().score("custom", ITEMS, {"function": f"{rewards_file}:score"})
    assert [r.score for r in results] == [-1.0, -1.0]
    sys.modules.pop(f"{package.name}.my_rewards", None)
    sys.modules.pop(package.name, None)


def test_finite_numbers_only_at_the_boundary():
    from polyray.reward.custom import check_scores

    assert check_scores("f.py:g", [1, True, np.float64(0.25)], 3) == [1.0, 1.0, 0.25]
    with pytest.raises(CustomRewardError, match="item 1 scored -inf"):
        check_scores("f.py:g", [0.0, -math.inf], 2)
    with pytest.raises(CustomRewardError, match="returned a str"):
        check_scores("f.py:g", "ab", 2)


def test_the_command_shows_a_users_reward_error_from_inside_ray_as_one_line(capsys):
    """Scored in a Ray Train worker (rank 0) or a reward replica, the error reaches the driver wrapped
    by Ray; the CLI prints the user's one line (exit status 2), and keeps a bug's traceback."""
    import typer
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from polyray.cli.common import user_errors

    mistake = CustomRewardError("custom reward my_rewards.py:score: item 3 scored nan; each score must be finite")
    in_task = RayTaskError("score", "Traceback (most recent call last): ...", mistake).as_instanceof_cause()
    in_train = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(in_task, "Traceback ...")})
    for raised in (mistake, in_task, in_train):
        with pytest.raises(typer.Exit) as info, user_errors():
            raise raised
        assert info.value.exit_code == 2
        assert capsys.readouterr().err == f"error: {mistake}\n"
    bug = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(ZeroDivisionError("x"), "Traceback ...")})
    with pytest.raises(WorkerGroupError), user_errors():
        raise bug
