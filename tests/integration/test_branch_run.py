"""A run started from a saved adapter (``init_adapter``, what an experiment's branch run gets) publishes
it as version 1 of its own store and evaluates it as its 'base': the same samples as the same adapter
published to another pool under another version, since evaluation seeds depend on the run's seed only.
Resumed, it finds version 1 in its store and does not publish it again."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def test_run_from_a_saved_adapter_evaluates_it_as_base(pool, model_dir, run_config, tmp_path):
    from support.phase_harness import random_lora_policy

    from polyray.config import RunConfig
    from polyray.eval.policy_eval import evaluate_policy
    from polyray.learner.lora import extract_adapter, save_adapter
    from polyray.eval.policy_eval import build_eval_task
    from polyray.drivers.run import run_pipeline
    from polyray.drivers.sweep import merge

    model = random_lora_policy(model_dir, run_config.learner.lora, seed=21, std=0.05)[0]
    saved = save_adapter(model, tmp_path / "root" / "adapters" / "sft")
    patch = {
        "name": "branch",
        "phases": [],
        "init_adapter": str(saved),
        "task": {"n_test": 8},
        "eval": {"n_samples": 4, "ks": [1, 4]},
        "dynamics": {"every": 0},
    }
    run = RunConfig.model_validate(merge(run_config.model_dump(mode="json"), patch))
    out = tmp_path / "branch"
    base = run_pipeline(run, out).evaluations["base"]

    version = pool.newest_version() + 1  # the session's pool: another store, another version id
    pool.publish(version, extract_adapter(model))
    task = build_eval_task(run, model_dir)
    direct = evaluate_policy(pool, task, task.prompts("test"), run.eval, version=version, seed=run.seed)
    assert base.per_prompt == direct.per_prompt and base.pass_at_k[1] == direct.pass_at_k[1]
    before = evaluate_policy(pool, task, task.prompts("test"), run.eval, version=None, seed=run.seed)
    assert before.per_prompt != base.per_prompt  # the adapter, not the base model, was evaluated

    store = out / "adapter_store"
    record = (store / "v000001" / "record.json").read_text()
    assert sorted(p.name for p in store.glob("v*")) == ["v000001"]
    assert json.loads(record)["phase"] == "init"
    run_pipeline(run, out, resume=True)  # finds version 1 in the store: it is not published again
    assert (store / "v000001" / "record.json").read_text() == record
    assert sorted(p.name for p in store.glob("v*")) == ["v000001"]
