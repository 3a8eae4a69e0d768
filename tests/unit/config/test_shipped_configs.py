"""Every config shipped in configs/ loads and validates (run, experiment and eval configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("*.yaml")), *sorted((CONFIGS / "gpu").glob("*.yaml"))], ids=str)
def test_run_configs_validate(path):
    from polyray.config import load_config

    run = load_config(path)
    assert run.phases and run.eval.n_samples >= max(run.eval.ks)


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=str)
def test_experiment_configs_validate(path):
    from polyray.drivers.experiment import load_experiment

    exp, runs = load_experiment(path, seeds=1)
    assert set(runs) == {(name, 0) for name in exp.runs}


@pytest.mark.parametrize("path", sorted((CONFIGS / "eval").glob("*.yaml")), ids=str)
def test_eval_configs_validate(path):
    from polyray.drivers.evaluate import load_eval_config

    assert load_eval_config(path).models


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("*.yaml")), *sorted((CONFIGS / "gpu").glob("*.yaml"))], ids=str)
def test_run_config_rewards_check_out_on_its_task(path, tmp_path):
    """Every phase's reward is a registry reward with valid parameters once the task supplies its
    defaults; a preset's user data, when not in the repo, is stood in for by a fixture of the same format."""
    import json

    from polyray.config import load_config
    from polyray.reward.plan import plan
    from polyray.tasks import build_task

    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f"def f{i}():\n",
                    "test": f"def check(c):\n    assert c() == {i}\n",
                    "entry_point": f"f{i}",
                    "canonical_solution": f"    return {i}\n",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    stand_in = {"code": problems, "replies": CONFIGS.parent / "tests" / "fixtures" / "engagement.jsonl"}
    run = load_config(path)
    if run.task.type in stand_in and not Path(run.task.path).is_file():  # (a preset's data the user brings)
        run = load_config(path, [f"task.path={stand_in[run.task.type]}"])
    rewards = plan(run, build_task(run.task)).rewards
    assert [r.phase for r in rewards] == [p.name for p in run.phases if p.type == "grpo"]


def test_set_changes_every_run_of_an_experiment():
    from polyray.drivers.experiment import load_experiment
    from polyray.io import ConfigError

    path = CONFIGS / "experiments" / "two_phase.yaml"
    _, runs = load_experiment(path, seeds=2, overrides=["learner.threads=2"])
    assert {run.learner.threads for run in runs.values()} == {2}
    with pytest.raises(ConfigError, match="learner.threads"):
        load_experiment(path, seeds=1, overrides=["learner.threads=0"])
