"""A task's evaluation prompts are a function of its config alone: not of which splits were drawn before,
at what sizes, nor of the process's global random streams. The quickstart's test prompts are pinned to
the digest README's table was measured on, so a change to the generator shows here first."""

from __future__ import annotations

import random

import numpy as np
import pytest

from polyray.config import load_config
from polyray.fingerprint import prompts_digest
from polyray.tasks import build_task

QUICKSTART = "configs/quickstart.yaml"
# README's quickstart table (its fingerprint line): the 128 test prompts it was scored on
QUICKSTART_TEST_PROMPTS = "3ee3c59fa5799ed9"


def _stir_global_streams() -> None:
    import torch

    random.seed(12345)
    random.random()
    np.random.seed(12345)
    np.random.rand(7)
    torch.manual_seed(12345)
    torch.rand(7)


def test_the_quickstart_test_prompts_are_the_published_ones():
    run = load_config(QUICKSTART)
    prompts = build_task(run.task).prompts(run.eval.split)
    assert (run.eval.split, len(prompts)) == ("test", 128)
    assert prompts_digest(prompts) == QUICKSTART_TEST_PROMPTS


@pytest.mark.parametrize("task", ["countdown", "countdown_code"])
def test_test_prompts_ignore_earlier_draws_and_other_split_sizes(task):
    run = load_config(QUICKSTART, [f"task.type={task}"])
    alone = prompts_digest(build_task(run.task).prompts("test"))

    after = build_task(run.task)
    _stir_global_streams()
    after.prompts("train", 5)
    after.prompts("val")
    after.prompts("train")
    assert prompts_digest(after.prompts("test")) == alone

    resized = load_config(QUICKSTART, [f"task.type={task}", "task.n_train=300", "task.n_val=17"])
    assert prompts_digest(build_task(resized.task).prompts("test")) == alone
    # a prefix of the split, not another draw
    assert prompts_digest(build_task(run.task).prompts("test", 16)) == prompts_digest(
        build_task(run.task).prompts("test")[:16]
    )
