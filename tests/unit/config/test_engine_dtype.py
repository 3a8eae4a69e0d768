"""``rollout.dtype``: the engines' weights dtype, model.dtype unless set, as every engine a run starts takes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyray.config import RunConfig


@pytest.mark.parametrize(
    ("model", "rollout", "engine"),
    [("float32", "auto", "float32"), ("bfloat16", "auto", "bfloat16"), ("float32", "bfloat16", "bfloat16")],
)
def test_engines_take_rollout_dtype_else_the_models(model, rollout, engine):
    from polyray.drivers.warm import pool_key
    from polyray.generation.service import run_generation_args

    run = RunConfig.model_validate({"model": {"dtype": model}, "rollout": {"dtype": rollout}})
    assert run.engine_dtype == engine
    assert run_generation_args(run, Path("runs/x"), "model", named=False)["dtype"] == engine
    same_model = RunConfig.model_validate({"model": {"dtype": model}})
    # a sweep's shared engines serve a trial only in the dtype it asked for
    assert (pool_key(run, "model") == pool_key(same_model, "model")) == (engine == model)
    said = RunConfig.model_validate({"model": {"dtype": model}, "rollout": {"dtype": engine}})
    assert pool_key(said, "model") == pool_key(run, "model")  # auto and its value: one engine


def test_unknown_engine_dtype_is_refused_by_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rollout.dtype"):
        RunConfig.model_validate({"rollout": {"dtype": "float16"}})
