"""``polyray eval`` on a ``code`` task: config -> task -> planned units -> sandbox judgements, no Ray or vLLM.

The evaluation job's task entries come from the one task registry (polyray.config.eval), so a
task a run trains on can be evaluated. Here a 6-problem human-eval-format JSONL goes through
the job's own steps: load the config, build the task, plan the units (prompt fitting, stop
sequences) and judge known-right and known-wrong completions through ``units.judge_unit``.
"""

from __future__ import annotations

import json

import pytest

from polyray.config.eval_job import load_eval_config, task_name
from polyray.drivers.evaluate.models import ResolvedModel
from polyray.drivers.evaluate.plan import plan_units
from polyray.drivers.evaluate.units import judge_unit
from polyray.rollout.worker import Sample
from polyray.tasks import build_task
from polyray.tasks.humaneval import HUMANEVAL_STOPS
from support.char_tokenizer import CharTokenizer

PROBLEMS = [  # name, signature, docstring, right body, test
    ("add", "a, b", "Return a + b.", "a + b", "candidate(2, 3) == 5"),
    ("sub", "a, b", "Return a - b.", "a - b", "candidate(7, 3) == 4"),
    ("mul", "a, b", "Return a * b.", "a * b", "candidate(4, 3) == 12"),
    ("square", "x", "Return x squared.", "x * x", "candidate(6) == 36"),
    ("negate", "x", "Return -x.", "-x", "candidate(5) == -5"),
    ("first", "xs", "Return the first item of xs.", "xs[0]", "candidate([7, 8]) == 7"),
]


@pytest.fixture
def eval_config(tmp_path):
    rows = [
        {
            "task_id": f"toy/{name}",
            "prompt": f'def {name}({sig}):\n    """{doc}"""\n',
            "canonical_solution": f"    return {body}\n",
            "test": f"def check(candidate):\n    assert {check}\n",
            "entry_point": name,
        }
        for name, sig, doc, body, check in PROBLEMS
    ]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "eval.yaml"
    config.write_text(
        "name: code-eval\n"
        "models: [{name: base}]\n"
        f"tasks: [{{type: code, path: {data}, split: all, n_prompts: 6, max_workers: 2, timeout_s: 20}}]\n"
        "n_samples: 2\nks: [1, 2]\n"
        "rollout: {max_model_len: 256}\n"
        "sampling: {max_tokens: 32}\n"
    )
    return config


def test_a_code_task_is_planned_and_judged_as_the_job_does(eval_config):
    cfg = load_eval_config(eval_config)
    entry = cfg.tasks[0]
    assert type(entry).__name__ == "EvalCodeTaskConfig" and entry.split == "all"
    tasks = {task_name(t): (t, build_task(t)) for t in cfg.tasks}  # as the job's driver builds them
    units = plan_units(cfg, [ResolvedModel("base", "base")], list(tasks.values()), CharTokenizer())
    assert len(units) == 1
    unit = units[0]
    assert unit.skip_reason is None and unit.task_type == "code"
    assert unit.prompt_ids == [f"toy/{p[0]}" for p in PROBLEMS] and not unit.skipped_ids
    assert set(HUMANEVAL_STOPS) <= set(unit.sampling.stop)

    # per problem: its right body, then a wrong one (a wrong value, or an error)
    wrong = ["    return None\n", "    raise ValueError('no')\n"]
    unit.samples = [
        [
            Sample(i, f"    return {body}\n", [], [1, 2], [-0.1, -0.2], 0, True),
            Sample(i, wrong[i % 2], [], [1, 2], [-0.3, -0.4], 0, True),
        ]
        for i, (_, _, _, body, _) in enumerate(PROBLEMS)
    ]
    done = []
    judge_unit(unit, tasks[unit.task_name][1], done.append)
    assert sum(done) == 2 * len(PROBLEMS)
    assert unit.judged.counts == [(2, 1)] * len(PROBLEMS)
    assert [list(r) for r in unit.judged.rewards] == [[1.0, 0.0]] * len(PROBLEMS)


def test_every_task_type_is_an_evaluation_task(tmp_path):
    """The job takes each task of the registry, with its own splits (countdown_code: no 'all')."""
    from polyray.io import ConfigError

    (tmp_path / "eval.yaml").write_text("models: [{name: base}]\ntasks: [{type: countdown_code, split: val}]\n")
    assert load_eval_config(tmp_path / "eval.yaml").tasks[0].type == "countdown_code"
    with pytest.raises(ConfigError, match="tasks.0.split: Input should be 'train', 'val' or 'test'"):
        load_eval_config(tmp_path / "eval.yaml", ["tasks.0.split=all"])
