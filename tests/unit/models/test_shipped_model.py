"""The quickstart's embedded model ships built (polyray/models/embedded/): a first run copies it instead of
pretraining, and the shipped bytes are what the builder makes from the recipe, on a machine whose kernels
and libraries match those it was built with."""

from __future__ import annotations

import hashlib
import json

import pytest

from polyray.config import load_config
from polyray.models import tiny

QUICKSTART = "configs/quickstart.yaml"
COMPARED = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def _digests(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in COMPARED}


def _quickstart():
    run = load_config(QUICKSTART)
    return run.model.tiny, run.task


def test_the_quickstart_model_ships_for_its_recipe():
    model, task = _quickstart()
    shipped = tiny.shipped_model_dir(model, task)
    assert shipped is not None, f"no shipped build for key {tiny.build_key(model, task)}: rebuild and ship it"
    info = json.loads((shipped / "build_info.json").read_text())
    assert info["build_key"] == tiny.build_key(model, task)
    assert info["tiny"] == tiny.recipe(model) and info["task"] == task.model_dump(mode="json")
    assert {"kernel_flags", "libraries"} <= set(info["built_with"])


def test_a_first_run_copies_the_shipped_model_without_building(tmp_path, monkeypatch):
    from polyray.models.source import prepare_model_dir

    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiny, "_build", lambda *a: pytest.fail("the shipped model was built again"))
    run = load_config(QUICKSTART)
    model_dir = prepare_model_dir(run.model, run.task)
    assert model_dir == tiny.cached_model_dir(run.model.tiny, run.task) and model_dir.is_relative_to(tmp_path)
    assert _digests(model_dir) == _digests(tiny.shipped_model_dir(run.model.tiny, run.task))
    # the copy is whole: no staging directory left beside it
    assert sorted(p.name for p in model_dir.parent.iterdir() if p.is_dir()) == [model_dir.name]


def _shipped_build_info():
    model, task = _quickstart()
    shipped = tiny.shipped_model_dir(model, task)
    info = json.loads((shipped / "build_info.json").read_text())
    if tiny.built_with() != info["built_with"]:
        pytest.skip(f"this machine builds with {tiny.built_with()}, the shipped model with {info['built_with']}")
    return model, task, shipped, info


@pytest.mark.slow
def test_a_rebuild_takes_the_shipped_builds_path(tmp_path):
    """The builder's first steps, under the full schedule, reach the weights the shipped build recorded there,
    from the same tokenizer (the whole rebuild is the next test's, in ``make test-slow``)."""
    import torch

    model, task, shipped, info = _shipped_build_info()
    torch.set_num_threads(1)
    [(steps, recorded)] = info["trajectory"].items()
    digest, tokenizer = tiny.pretrain_prefix(model, task, int(steps))
    assert digest == recorded, f"after {steps} steps the builder's weights are {digest}, the shipped build's {recorded}"
    tokenizer.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.redundant
def test_the_shipped_bytes_are_what_the_builder_makes(tmp_path):
    import torch

    model, task, shipped, info = _shipped_build_info()
    torch.set_num_threads(1)
    rebuilt = tiny.build_tiny_model(model, task, out_dir=tmp_path / "m", use_shipped=False)
    assert _digests(rebuilt) == _digests(shipped)
    assert json.loads((rebuilt / "build_info.json").read_text())["trajectory"] == info["trajectory"]


def test_readme_names_the_shipped_weights_and_the_test_prompts(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from polyray.fingerprint import prompts_digest, weights_digest
    from polyray.tasks import build_task

    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path))
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    weights, prompts = re.search(r"model weights ([0-9a-f]{16}), eval prompts ([0-9a-f]{16})", readme).groups()
    model, task = _quickstart()
    assert weights == weights_digest(tiny.shipped_model_dir(model, task))
    run = load_config(QUICKSTART)
    assert prompts == prompts_digest(build_task(run.task).prompts(run.eval.split))
