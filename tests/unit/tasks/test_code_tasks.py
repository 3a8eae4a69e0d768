"""The code tasks that train (polyray/tasks/code.py): ``code`` from the user's JSONL and
``countdown_code``, both judged by running a test in the real sandbox.

About 130 sandbox runs in all (a few seconds): the countdown_code test is checked against
countdown's own verifier, the independent reference, on many kinds of completion.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from polyray.config.tasks import CodeTaskConfig, CountdownCodeTaskConfig
from polyray.reward import RewardItem, build_reward
from polyray.tasks import countdown as cd
from polyray.tasks.base import Prompt, TaskError
from polyray.tasks.code import (
    CodeDataError,
    CodeTask,
    CountdownCodeTask,
    as_code_prompt,
)
from polyray.tasks.humaneval import HUMANEVAL_STOPS

# name, signature, docstring, body, one assertion (x, y are the arguments)
_FUNCS = [
    ("add", "a, b", "Return a + b.", "a + b", "candidate(2, 3) == 5"),
    ("sub", "a, b", "Return a - b.", "a - b", "candidate(7, 3) == 4"),
    ("mul", "a, b", "Return a * b.", "a * b", "candidate(4, 3) == 12"),
    ("biggest", "a, b", "Return the larger of a and b.", "max(a, b)", "candidate(4, 9) == 9"),
    ("smallest", "a, b", "Return the smaller of a and b.", "min(a, b)", "candidate(4, 9) == 4"),
    ("magnitude", "x", "Return the absolute value of x.", "abs(x)", "candidate(-5) == 5"),
    ("square", "x", "Return x squared.", "x * x", "candidate(6) == 36"),
    ("is_even", "n", "Return True when n is even.", "n % 2 == 0", "candidate(4) and not candidate(3)"),
    ("negate", "x", "Return -x.", "-x", "candidate(5) == -5"),
    ("double", "x", "Return twice x.", "2 * x", "candidate(21) == 42"),
    ("inc", "x", "Return x + 1.", "x + 1", "candidate(1) == 2"),
    ("first", "xs", "Return the first item of xs.", "xs[0]", "candidate([7, 8]) == 7"),
]


def problem_row(name, sig, doc, body, check, **extra):
    return {
        "task_id": f"toy/{name}",
        "prompt": f'def {name}({sig}):\n    """{doc}"""\n',
        "canonical_solution": f"    return {body}\n",
        "test": f"def check(candidate):\n    assert {check}\n",
        "entry_point": name,
        **extra,
    }


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def problems_file(tmp_path) -> Path:
    rows = [problem_row(*f) for f in _FUNCS]
    del rows[11]["task_id"]  # line 12 gets the default id
    del rows[10]["canonical_solution"]  # a problem without a reference
    return write_jsonl(tmp_path / "problems.jsonl", rows)


@pytest.fixture
def task(problems_file) -> CodeTask:
    return CodeTask(CodeTaskConfig(path=str(problems_file), max_workers=2))


# --------------------------------------------------------------------------------- code
def test_path_is_made_absolute(problems_file, monkeypatch):
    monkeypatch.chdir(problems_file.parent)
    cfg = CodeTaskConfig(path=problems_file.name)
    assert cfg.path == str(problems_file.resolve())
    assert len(CodeTask(cfg).prompts("all")) == len(_FUNCS)


def test_splits_are_disjoint_and_cover_every_problem(task):
    splits = {s: [p.text for p in task.prompts(s)] for s in ("train", "val", "test")}
    seen = [t for texts in splits.values() for t in texts]
    assert len(seen) == len(set(seen)) == len(_FUNCS)
    assert sorted(seen) == sorted(p.text for p in task.prompts("all"))
    assert min(len(v) for v in splits.values()) >= 2
    assert [p.text for p in task.prompts("train", 3)] == splits["train"][:3]


def test_split_depends_on_the_seed_and_n_limits_it(problems_file):
    a = CodeTask(CodeTaskConfig(path=str(problems_file), seed=0)).prompts("test")
    b = CodeTask(CodeTaskConfig(path=str(problems_file), seed=1)).prompts("test")
    assert [p.text for p in a] != [p.text for p in b]
    limited = CodeTask(CodeTaskConfig(path=str(problems_file), n_train=3, n_test=1))
    assert len(limited.prompts("train")) == 3 and len(limited.prompts("test")) == 1
    with pytest.raises(ValueError, match="pretrain"):
        limited.prompts("pretrain")


def test_prompt_text_reference_and_meta(task, problems_file):
    by_id = {p.meta["task_id"]: p for p in task.prompts("all")}
    add = by_id["toy/add"]
    assert add.text == 'def add(a, b):\n    """Return a + b."""\n'
    assert add.reference == "    return a + b\n"
    assert set(add.meta) == {"test", "entry_point", "task_id"} and add.meta["entry_point"] == "add"
    assert "line12" in by_id and by_id["line12"].meta["entry_point"] == "first"  # default task_id
    assert by_id["toy/inc"].reference == ""  # no canonical_solution
    json.dumps([p.meta for p in by_id.values()])
    assert task.stop_sequences == HUMANEVAL_STOPS and not task.supports_few_shot
    assert task.reward_name == "code_exec"
    assert task.reward_defaults() == {"code_exec": {"timeout_s": 10.0}}  # memory and workers: the server's


def test_judge_runs_the_tests_in_the_sandbox(task):
    by_id = {p.meta["task_id"]: p for p in task.prompts("all")}
    add, biggest = by_id["toy/add"], by_id["toy/biggest"]
    assert task.judge(add, add.reference).reward == 1.0
    assert task.judge(add, "    return a - b\n").reward == 0.0
    assert task.judge(biggest, "    return min(a, b)\n").reward == 0.0
    # cut at a stop sequence: what follows the function never runs
    assert task.judge(add, "    return a + b\n\ndef add(a, b):\n    return 0\n").reward == 1.0
    groups = task.judge_groups([add, biggest], [[add.reference, "    return 0\n"], [biggest.reference]])
    assert [[j.reward for j in g] for g in groups] == [[1.0, 0.0], [1.0]]


def test_code_exec_reward_agrees_with_the_judge(task):
    by_id = {p.meta["task_id"]: p for p in task.prompts("all")}
    cases = [
        (by_id["toy/mul"], by_id["toy/mul"].reference),
        (by_id["toy/mul"], "    return a + b\n"),
        (by_id["toy/square"], "    return x ** 2\n"),
        (by_id["toy/square"], "    return x * 2\n\nif True:\n    pass\n"),
    ]
    judged = [task.judge(p, c).reward for p, c in cases]
    items = [RewardItem(**task.reward_item(p, c)) for p, c in cases]
    scored = [r.score for r in build_reward("code_exec", **task.reward_defaults()["code_exec"]).score_batch(items)]
    assert scored == judged == [1.0, 0.0, 1.0, 0.0]
    assert items[3].completion == "    return x * 2\n"  # cut at "\nif", as the judge cuts it


@pytest.mark.parametrize(
    "line, field",
    [
        ('{"prompt": "def f(", "test"', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"prompt": "def f():\\n", "entry_point": "f"}', "missing 'test'"),
        ('{"prompt": "  ", "test": "def check(c): pass", "entry_point": "f"}', "'prompt' must be a non-empty string"),
        ('{"prompt": "def f():\\n", "test": 3, "entry_point": "f"}', "'test' must be a non-empty string"),
        ('{"prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f()"}', "'entry_point' must be"),
        ('{"prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "class"}', "'entry_point' must be"),
        (
            '{"prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f", "canonical_solution": 1}',
            "'canonical_solution' must be a string",
        ),
        ('{"prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f", "task_id": 7}', "'task_id'"),
        (
            '{"prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f", "public_test": "assert 1"}',
            "'public_test' must be a string defining check(candidate)",
        ),
        (json.dumps(problem_row(*_FUNCS[0])), "'prompt' repeats line 1's"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [problem_row(*_FUNCS[0]), "", line, problem_row(*_FUNCS[1])])
    with pytest.raises(CodeDataError) as info:
        CodeTask(CodeTaskConfig(path=str(path)))
    assert f"{path}:3: " in str(info.value) and field in str(info.value)


def test_bad_lines_can_be_skipped_and_are_reported(tmp_path):
    rows = [problem_row(*f) for f in _FUNCS] + ['{"prompt": 1}']
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = CodeTask(CodeTaskConfig(path=str(path), skip_bad_lines=True))
    assert len(task.prompts("all")) == len(_FUNCS)
    assert task.data_warning and f"{path}:13" in task.data_warning


def test_empty_or_small_files_are_refused_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CodeDataError, match=f"{empty}: no rows"):
        CodeTask(CodeTaskConfig(path=str(empty)))
    small = write_jsonl(tmp_path / "small.jsonl", [problem_row(*f) for f in _FUNCS[:9]])
    task = CodeTask(CodeTaskConfig(path=str(small)))
    assert len(task.prompts("all")) == 9  # all is fine
    with pytest.raises(CodeDataError, match=f"{small}: 9 problems are too few.*at least 10"):
        task.prompts("train")


def test_pretrain_corpus_is_the_train_splits_canonical_solutions(task, problems_file):
    pairs = task.pretrain_corpus(n_prompts=1000, noise=0.3, seed=0)
    train = {p.text: p.reference for p in task.prompts("train")}
    assert pairs and all(train[prompt] == solution and solution for prompt, solution in pairs)
    assert len(pairs) == sum(1 for r in train.values() if r)
    held_out = {p.text for s in ("val", "test") for p in task.prompts(s)}
    assert not held_out & {prompt for prompt, _ in pairs}
    assert len(task.pretrain_corpus(n_prompts=2, noise=0.0, seed=0)) == 2

    rows = [{k: v for k, v in problem_row(*f).items() if k != "canonical_solution"} for f in _FUNCS]
    bare = write_jsonl(problems_file.parent / "bare.jsonl", rows)
    with pytest.raises(TaskError, match=f"{bare}: no problem of the train split has a 'canonical_solution'"):
        CodeTask(CodeTaskConfig(path=str(bare))).pretrain_corpus(100, 0.0, 0)


def test_corpus_key_follows_the_file_bytes_and_seed(task, problems_file):
    key = task.corpus_key()
    assert key["type"] == "code" and key["seed"] == 0 and len(key["sha256"]) == 64
    assert CodeTask(CodeTaskConfig(path=str(problems_file), n_train=2)).corpus_key() == key
    assert CodeTask(CodeTaskConfig(path=str(problems_file), seed=3)).corpus_key()["seed"] == 3
    problems_file.write_text(problems_file.read_text() + "\n")
    assert CodeTask(CodeTaskConfig(path=str(problems_file))).corpus_key()["sha256"] != key["sha256"]


# ------------------------------------------------------------------------ countdown_code
@pytest.fixture(scope="module")
def cc_task() -> CountdownCodeTask:
    return CountdownCodeTask(CountdownCodeTaskConfig(max_workers=2))


def judge_all(task, cases: list[tuple[Prompt, str]]) -> list[float]:
    groups = task.judge_groups([p for p, _ in cases], [[c] for _, c in cases])
    return [g[0].reward for g in groups]


def test_prompt_shape(cc_task):
    p = as_code_prompt(Prompt(cd.format_prompt((3, 4, 9), 12), " 3*4", {"numbers": [3, 4, 9], "target": 12}))
    assert p.text == 'def solve():\n    """Use each of 3, 4, 9 at most once with + - * to make 12."""\n    return'
    assert p.reference == " 3*4"
    assert set(p.meta) == {"test", "entry_point", "numbers", "target"} and p.meta["entry_point"] == "solve"
    assert p.meta["test"].lstrip().startswith("def check(candidate):")
    json.dumps(p.meta)
    assert cc_task.stop_sequences == ("\n",) and cc_task.reward_name == "code_exec"
    assert cc_task.reward_defaults() == {"code_exec": {"timeout_s": 5.0}}
    assert len(cc_task.prompts("val")) == 32 and len(cc_task.prompts("test", 5)) == 5


def _cheats(p: Prompt, rng: random.Random) -> list[str]:
    """Completions that must fail: the target as a literal, a number used twice, a number not given,
    a wrong value over the given numbers."""
    numbers, target = p.meta["numbers"], p.meta["target"]
    once = next(n for n in numbers if numbers.count(n) == 1)
    return [
        f" {target}",
        f" {once} + {once} - {once} + ({p.reference.strip()}) - {once}",
        f" {target + 101} - 101",
        " " + cd.sample_wrong_expression(rng, tuple(numbers), target),
    ]


def test_reference_passes_and_cheats_fail(cc_task):
    rng = random.Random(0)
    prompts = [p for p in cc_task.prompts("test", 40) if p.meta["target"] not in p.meta["numbers"]][:30]
    assert len(prompts) == 30
    cases = [(p, p.reference) for p in prompts]
    cases += [(p, _cheats(p, rng)[i % 4]) for i, p in enumerate(prompts)]  # each cheat on 7-8 prompts
    rewards = judge_all(cc_task, cases)
    assert rewards[:30] == [1.0] * 30
    assert rewards[30:] == [0.0] * 30
    # the independent reference agrees on every one of them
    assert rewards == [cd.judge(c, p.meta["numbers"], p.meta["target"]).reward for p, c in cases]


def _problem(numbers, target) -> Prompt:
    return as_code_prompt(Prompt("", "", {"numbers": list(numbers), "target": target}))


def test_agrees_with_the_countdown_verifier_on_odd_completions(cc_task):
    p, z = _problem((3, 4, 6), 2), _problem((3, 3, 6), 2)
    long_ok = " " + "(" * 30 + "6" + ")" * 30 + "/ 3"  # 64 characters: allowed
    long_bad = " " + "(" * 30 + "6" + ")" * 30 + "/  3"  # 65 characters: too long
    cases = [
        (p, " 6/3"),
        (p, " 4/6*3"),
        (p, "(6/3)"),
        (p, "  6 / 3   "),
        (p, " 6/3  # comment"),
        (p, " 6/3\nimport sys\nsys.exit(0)"),
        (p, " 6-4"),
        (p, long_ok),
        (p, long_bad),
        (p, " 6/3;"),
        (p, " -4+6"),
        (p, " 6 // 3"),
        (p, " 2.0"),
        (p, " True+1"),
        (p, " 6/3 if 1 else 0"),
        (p, " (lambda: 2)()"),
        (p, " 6/3 \\"),
        (p, ""),
        (p, "   "),
        (p, " 6 /"),
        (p, " 3**2-4-3"),
        (z, " 6/(3-3)"),
        (z, " (3-3)/6"),
        (z, " 3/(6/3-6/3)"),
        (z, " 6/3"),
        (z, " (3+3)/3"),
        (z, " 6/3/3*3"),
    ]
    rewards = judge_all(cc_task, cases)
    expected = [cd.judge(c, q.meta["numbers"], q.meta["target"]).reward for q, c in cases]
    assert rewards == expected
    assert sum(expected) == 9  # both kinds are exercised
    assert [cd.judge(c, z.meta["numbers"], 2).reason for c in (" 6/(3-3)", " 3/(6/3-6/3)")] == [
        "not an expression (division by zero)"
    ] * 2


def test_only_the_prompts_function_counts(cc_task):
    """The check reads the program's own text; a completion cannot swap in another solve() or exit early."""
    p = _problem((3, 4, 6), 2)
    hostile = [
        " 7\ndef solve():\n    return 6/3",
        " 7\nimport sys\nsys.exit(0)",
    ]
    assert judge_all(cc_task, [(p, c) for c in hostile]) == [0.0, 0.0]
    # the reward sees the completion cut at the stop, as the judge does; uncut, an early exit would pass
    items = [RewardItem(**cc_task.reward_item(p, c)) for c in hostile]
    assert [i.completion for i in items] == [" 7", " 7"]
    fn = build_reward("code_exec", **cc_task.reward_defaults()["code_exec"])
    assert [r.score for r in fn.score_batch(items)] == [0.0, 0.0]
    # uncut: the check itself refuses a second solve() (it must be the function on line 1), and an
    # early exit at module level ends the program before check() runs, without the sandbox's token
    raw = [RewardItem(prompt=p.text, completion=c, metadata=p.meta) for c in hostile]
    assert [r.score for r in fn.score_batch(raw)] == [0.0, 0.0]


def test_pretrain_corpus_never_holds_test_val_or_train_problems(cc_task):
    pairs = cc_task.pretrain_corpus(n_prompts=300, noise=0.25, seed=0)
    assert len(pairs) == 600 and all(c.startswith(" ") and "\n" not in c for _, c in pairs)
    assert all(prompt.startswith("def solve():\n") and prompt.endswith("    return") for prompt, _ in pairs)
    held_out = {p.text for s in ("train", "val", "test") for p in cc_task.prompts(s)}
    assert not held_out & {prompt for prompt, _ in pairs}

    def problem(numbers, target):
        return (tuple(sorted(numbers)), target)

    test_problems = {problem(p.meta["numbers"], p.meta["target"]) for p in cc_task.prompts("test")}
    assert len(test_problems) == 64
    assert not test_problems & {problem(*_numbers_target(prompt)) for prompt, _ in pairs}
    wrong = sum(1 for prompt, c in pairs if cd.judge(c, *_numbers_target(prompt)).reward == 0.0)
    assert 0.1 < wrong / len(pairs) < 0.4  # about the noise share
    assert cc_task.pretrain_corpus(n_prompts=300, noise=0.25, seed=0) == pairs
    assert cc_task.pretrain_corpus(n_prompts=300, noise=0.25, seed=1) != pairs


def _numbers_target(prompt: str) -> tuple[list[int], int]:
    doc = prompt.split('"""')[1]  # "Use each of 3, 4, 9 at most once with + - * to make 12."
    numbers = [int(n) for n in doc.split("Use each of ")[1].split(" at most")[0].split(", ")]
    return numbers, int(doc.rsplit("make ", 1)[1].rstrip("."))


def test_corpus_key_is_stable_and_follows_the_generator():
    a = CountdownCodeTask(CountdownCodeTaskConfig()).corpus_key()
    assert a == CountdownCodeTask(CountdownCodeTaskConfig(n_train=8, timeout_s=2)).corpus_key()
    assert a == {
        "type": "countdown_code",
        "num_numbers": 3,
        "max_number": 16,
        "min_operands": 2,
        "max_target": 99,
        "seed": 0,
    }
    assert CountdownCodeTask(CountdownCodeTaskConfig(seed=1)).corpus_key() != a
    assert CountdownCodeTask(CountdownCodeTaskConfig(max_number=20)).corpus_key() != a


@pytest.mark.parametrize("exit_call", ["__import__('sys').exit(0)", "__import__('os')._exit(0)"])
def test_exiting_zero_before_the_tests_finish_is_not_a_pass(exit_call):
    from polyray.tasks.humaneval import run_humaneval_check

    problem = {
        "prompt": "def f():\n",
        "test": "def check(candidate):\n    assert candidate() == 1\n",
        "entry_point": "f",
    }
    assert run_humaneval_check(problem, "    return 1\n").passed
    result = run_humaneval_check(problem, f"    {exit_call}\n")
    assert not result.passed and result.status == "failed", result
