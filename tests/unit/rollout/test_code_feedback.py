"""The ``code_feedback`` environment (polyray/envs/code_feedback.py) in episodes of a scripted model, every
test run in the real sandbox: the model is shown the public tests' failure and nothing of the hidden
tests, whose verdict alone is the reward; a pass of the public tests ends the episode, the last turn
runs no public test, and a batch's sandboxes stay within the task's ``max_workers``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from polyray.config.envs import CodeFeedbackEnvConfig
from polyray.config.tasks import CodeTaskConfig, CountdownCodeTaskConfig
from polyray.envs import code_feedback, env_factory
from polyray.envs.code_feedback import failure_report
from polyray.rollout.episodes import DONE, MAX_TURNS, TurnSample, plain_observations, run_episodes, turn_seed
from polyray.sandbox.calls import checker_source
from polyray.tasks.code import CodeTask, CountdownCodeTask, doctest_check
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check

EMBEDDED = next((Path(__file__).resolve().parents[3] / "polyray" / "models" / "embedded").iterdir())

CLAMP = 'def clamp(x, lo, hi):\n    """Return x limited to [lo, hi].\n    >>> clamp(5, 0, 3)\n    3\n    """\n'
# the hidden tests hold a case the docstring's example does not
HIDDEN = "def check(candidate):\n    assert candidate(5, 0, 3) == 3\n    assert candidate(-1, 0, 3) == 0\n"
RIGHT, IDENTITY, HALF = "    return max(lo, min(x, hi))\n", "    return x\n", "    return min(x, hi)\n"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(EMBEDDED)


def code_task(tmp_path: Path, **row) -> CodeTask:
    base = {"task_id": "clamp", "prompt": CLAMP, "test": HIDDEN, "entry_point": "clamp", "canonical_solution": RIGHT}
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(base | row) + "\n")
    return CodeTask(CodeTaskConfig(path=str(path), timeout_s=5.0, max_workers=2))


class Scripted:
    """Answers turn t of episode j with ``scripts[j][t]``, found by its sampling seed."""

    def __init__(self, tokenizer, scripts: list[list[str]], seed: int):
        self.tokenizer, self.seen = tokenizer, []
        self.by_seed = {turn_seed(seed, j, t): text for j, turns in enumerate(scripts) for t, text in enumerate(turns)}

    def __call__(self, histories, seeds, max_tokens):
        out = []
        for history, seed in zip(histories, seeds):
            self.seen.append(self.tokenizer.decode(history))
            ids = self.tokenizer(self.by_seed[seed], add_special_tokens=False)["input_ids"]
            text = self.tokenizer.decode(ids)
            out.append(TurnSample(token_ids=ids, logprobs=[-1.0] * len(ids), version=1, finished=True, text=text))
        return out


def episodes(task, tokenizer, scripts, *, config=None, prompt=None):
    config = config or CodeFeedbackEnvConfig(max_turns=3, max_tokens=64, max_total_tokens=1024)
    model = Scripted(tokenizer, scripts, seed=5)
    (group,) = run_episodes(
        [prompt or task.prompts("all")[0]],
        len(scripts),
        make_env=env_factory(config, task),
        limits=config,
        generate=model,
        encode_prompt=lambda text: tokenizer(text)["input_ids"],
        encode_observation=plain_observations(tokenizer),
        seeds=[5],
    )
    return group, model


def test_the_public_failure_is_shown_and_the_hidden_tests_alone_reward(tmp_path, tokenizer):
    task = code_task(tmp_path)
    (fooled, fixed), model = episodes(task, tokenizer, [[IDENTITY, HALF], [IDENTITY, RIGHT]])

    # turn 1 failed the docstring's example: the model read which call, what it returned, what was expected
    seen = model.seen[-1]
    assert "# The tests failed:\n# assert same(got, 3)" in seen, seen
    assert "# AssertionError: clamp(5, 0, 3) returned 5, expected 3\n" + CLAMP in seen, seen
    assert "candidate(-1, 0, 3)" not in seen  # nothing of the hidden tests
    # turn 2 of the first passed the public example, not the hidden case: it ends, rewarded 0
    assert (fooled.end, fooled.reward, [t.reward for t in fooled.turns]) == (DONE, 0.0, [0.0, 0.0])
    assert (fixed.end, fixed.reward, fixed.rewards_by_turn(3)) == (DONE, 1.0, [0.0, 1.0, 1.0])
    assert fixed.final_text == RIGHT


def test_the_problems_public_test_is_used_and_its_failing_line_shown(tmp_path, tokenizer):
    public = "def check(candidate):\n    assert candidate(2, 0, 3) == 2\n    assert candidate(-7, 0, 3) == 0\n"
    task = code_task(tmp_path, public_test=public)
    # the JSONL's public test replaces the docstring's example, and never reaches the reward service
    assert task.public_test(task.prompts("all")[0]) == public
    assert "public_test" not in task.reward_item(task.prompts("all")[0], RIGHT)["metadata"]
    (episode,), model = episodes(task, tokenizer, [[HALF, RIGHT]])
    # the line of the public test that failed (its number counts in the prompt the tests sandbox prepends)
    assert "# assert candidate(-7, 0, 3) == 0\n# AssertionError\n" in model.seen[-1], model.seen[-1]
    assert (episode.end, episode.reward, len(episode.turns)) == (DONE, 1.0, 2)


def test_no_public_tests_is_one_turn_and_the_last_turn_runs_no_public_test(tmp_path, tokenizer, monkeypatch):
    bare = code_task(tmp_path, prompt='def clamp(x, lo, hi):\n    """Return x limited to [lo, hi]."""\n')
    assert bare.public_test(bare.prompts("all")[0]) is None
    (episode,), _ = episodes(bare, tokenizer, [[IDENTITY, RIGHT]])
    assert (episode.end, len(episode.turns), episode.reward) == (DONE, 1, 0.0)

    runs = []
    real = code_feedback.run_humaneval_check
    monkeypatch.setattr(
        code_feedback, "run_humaneval_check", lambda *a, **kw: runs.append(a[0]["test"]) or real(*a, **kw)
    )
    task = code_task(tmp_path)
    (right, wrong), _ = episodes(task, tokenizer, [[IDENTITY, IDENTITY, RIGHT], [IDENTITY, IDENTITY, HALF]])
    assert (right.end, right.rewards_by_turn(3)) == (DONE, [0.0, 0.0, 1.0])
    assert (wrong.end, wrong.rewards_by_turn(3)) == (MAX_TURNS, [0.0, 0.0, 0.0])
    # the public example after turns 1 and 2 of each; the third answers met the hidden tests only
    assert len(runs) == 4


def test_a_public_test_the_reference_fails_is_not_shown(tmp_path):
    wrong = "def check(candidate):\n    assert candidate(5, 0, 3) == 4\n"
    task = code_task(tmp_path, public_test=wrong)
    assert task.public_test(task.prompts("all")[0]) is None
    # the docstring's example, which the reference passes, is used when the JSONL gives none
    task = code_task(tmp_path)
    assert "clamp(5, 0, 3)" in task.public_test(task.prompts("all")[0])


def test_the_observation_keeps_to_max_observation_chars(tmp_path, tokenizer):
    task = code_task(tmp_path)
    long = "    raise ValueError('x' * 400)\n"
    fits = CodeFeedbackEnvConfig(max_turns=2, max_tokens=64, max_total_tokens=2048, max_observation_chars=400)
    (episode,), model = episodes(task, tokenizer, [[long, RIGHT]], config=fits)
    assert episode.error is None, episode.error
    shown = model.seen[-1][model.seen[-1].index("# The tests failed") - 1 :]
    assert (episode.end, episode.reward) == (DONE, 1.0) and " ... " in shown and len(shown) <= 400, shown
    tight = fits.model_copy(update={"max_observation_chars": len(CLAMP) + 40})
    (episode,), _ = episodes(task, tokenizer, [[long, RIGHT]], config=tight)
    assert episode.end == "error" and "env.max_observation_chars" in episode.error, episode.error


def test_countdown_codes_whole_test_is_its_feedback(tokenizer, monkeypatch):
    runs = []
    real = code_feedback.run_humaneval_check
    monkeypatch.setattr(code_feedback, "run_humaneval_check", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    task = CountdownCodeTask(CountdownCodeTaskConfig(timeout_s=5.0))
    prompt = next(p for p in task.prompts("val", 32) if p.meta["target"] not in p.meta["numbers"])
    config = CodeFeedbackEnvConfig(max_turns=2, max_tokens=16, max_total_tokens=512)
    wrong = " " + " + ".join(map(str, prompt.meta["numbers"][:2]))
    (episode,), model = episodes(task, tokenizer, [[wrong, prompt.reference]], config=config, prompt=prompt)
    value = sum(prompt.meta["numbers"][:2])
    assert f"# AssertionError: evaluates to {value}, target {prompt.meta['target']}\n" in model.seen[-1]
    assert model.seen[-1].endswith(prompt.text)  # the function again, for the model to complete
    assert (episode.end, episode.reward) == (DONE, 1.0)
    assert len(runs) == 1  # turn 1's one run told the public and the hidden verdict; turn 2 was judged


def test_a_batch_keeps_to_the_tasks_sandbox_workers(tmp_path, tokenizer, monkeypatch):
    task = code_task(tmp_path)
    task.config = task.config.model_copy(update={"max_workers": 1})
    live, most, lock = [0], [0], threading.Lock()
    real = code_feedback.run_humaneval_check

    def counted(*args, **kwargs):
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(code_feedback, "run_humaneval_check", counted)
    group, _ = episodes(task, tokenizer, [[IDENTITY, RIGHT]] * 4)
    assert [e.reward for e in group] == [1.0] * 4
    assert most[0] == 1


def test_failure_reports_of_a_timeout_and_of_a_long_error(tmp_path):
    task = code_task(tmp_path)
    prompt = task.prompts("all")[0]
    public = task.public_test(prompt)
    problem = {"prompt": CLAMP, "test": public, "entry_point": "clamp"}
    hung = run_humaneval_check(problem, "    while True:\n        pass\n", timeout=1.0, memory_mb=256)
    assert failure_report(hung, checker_source(CLAMP, public), 600) == "timeout: wall-clock timeout after 1s"
    long = run_humaneval_check(problem, "    raise ValueError('x' * 300)\n", timeout=5.0, memory_mb=256)
    report = failure_report(long, checker_source(CLAMP, public), 120)
    assert len(report) <= 120 and report.startswith("got = clamp(5, 0, 3)\nValueError: xxx") and " ... " in report


def test_docstring_examples_as_public_tests_of_humaneval():
    problems = humaneval_problems()
    with_examples = [t for t, p in problems.items() if doctest_check(p["prompt"], p["entry_point"])]
    assert len(with_examples) == 70  # the others give examples in prose: one turn, nothing to show
    results = {}
    for task_id in ("HumanEval/0", "HumanEval/2", "HumanEval/47"):
        p = problems[task_id]
        check = doctest_check(p["prompt"], p["entry_point"])
        results[task_id] = run_humaneval_check({**p, "test": check}, p["canonical_solution"], 10.0, 512)
    assert results["HumanEval/0"].passed and results["HumanEval/2"].passed
    # HumanEval/47's docstring expects 15.0 where its own canonical median is 8.0: the example is wrong
    assert "median([-10, 4, 6, 1000, 10, 20]) returned 8.0, expected 15.0" in results["HumanEval/47"].stderr


def test_examples_that_cannot_be_checked_are_left_out():
    prompt = (
        'def f(x):\n    """\n    >>> f(1)\n    <object at 0x1>\n    >>> g(2)\n    4\n'
        "    >>> f(\n    >>> [f(1), f(2)]\n    [1, 2]  # two\n    >>> f(3)  # doctest: +SKIP\n    3\n"
        '    >>> f(4)\n    [4, ...]\n    """\n'
    )
    check = doctest_check(prompt, "f")
    # the list of calls only, its comment gone; the skipped example and the wildcard one left out
    assert check.count("assert same(") == 1 and "same(got, [1, 2])" in check, check
    compile(check, "check", "exec")
    assert doctest_check('def f(x):\n    """Return x."""\n', "f") is None
    assert doctest_check('def f(x):\n    """\n    >>>f(1)\n    1\n    """\n', "f") is None  # not doctest's form


def test_the_checks_numbers_are_close_and_everything_else_equal():
    from types import FunctionType

    namespace: dict = {}
    exec(doctest_check('def f():\n    """\n    >>> f()\n    0.5\n    """\n', "f"), namespace)
    code = next(c for c in namespace["check"].__code__.co_consts if getattr(c, "co_name", "") == "same")
    same = FunctionType(code, {})
    assert same(0.5 + 1e-9, 0.5) and same(1, 1.0) and not same(0.6, 0.5)
    assert not same([0.5], 0.5) and not same("0.5", 0.5) and same([1, 2], [1, 2])


def test_code_feedback_runs_on_code_tasks_only_and_the_docs_config_is_valid():
    import re

    import yaml
    from pydantic import ValidationError

    from polyray.config import RunConfig

    docs = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text()
    block = re.search(r"<!-- code-feedback-config -->\n```yaml\n(.*?)```\n<!-- /code-feedback-config -->", docs, re.S)
    run = RunConfig.model_validate(yaml.safe_load(block.group(1)))
    assert (run.env.type, run.task.type, run.env.max_feedback_chars) == ("code_feedback", "code", 600)

    with pytest.raises(ValidationError, match="env.type 'code_feedback' runs on a task of type 'code' or"):
        RunConfig.model_validate({"task": {"type": "countdown"}, "env": {"type": "code_feedback"}})


def test_a_host_below_the_sandbox_policy_stops_the_run_before_it_starts(monkeypatch):
    import polyray.sandbox as sb
    from polyray.config import RunConfig
    from polyray.drivers.preflight import check_inputs
    from polyray.io import ConfigError

    monkeypatch.setattr(sb, "detect_isolation", lambda: "rlimits")
    run = RunConfig.model_validate(
        {"task": {"type": "countdown_code"}, "env": {"type": "code_feedback"}, "rollout": {"max_model_len": 512}}
    )
    with pytest.raises(ConfigError, match="task.sandbox.min_isolation is 'userns' but this host offers only"):
        check_inputs(run)
