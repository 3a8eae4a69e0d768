"""Every config shipped in configs/ loads and validates (run, experiment and eval configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", [CONFIGS / "quickstart.yaml", *sorted((CONFIGS / "gpu").glob("*.yaml"))], ids=str)
def test_run_configs_validate(path):
    from polyray.config import load_config

    run = load_config(path)
    assert run.phases and run.eval.n_samples >= max(run.eval.ks)


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=str)
def test_experiment_configs_validate(path):
    from polyray.experiment import load_experiment

    exp, runs = load_experiment(path, seeds=1)
    assert set(runs) == {(name, 0) for name in exp.runs}


@pytest.mark.parametrize("path", sorted((CONFIGS / "eval").glob("*.yaml")), ids=str)
def test_eval_configs_validate(path):
    from polyray.eval.job import load_eval_config

    assert load_eval_config(path).models
