"""Countdown-style synthetic arithmetic: the embedded default task.

A prompt gives a few small numbers and a target; a completion is an arithmetic
expression that uses each given number at most once and evaluates to the target.
Most prompts have many valid answers (``3+9`` and ``9+3`` already differ), and every
prompt carries one canonical reference: the expression the target was generated from,
which is what SFT imitates.

Splits are disjoint by construction: a prompt's split is a pure function of a hash of
its numbers and target, so the same prompt can never appear in two splits whatever
the seed. The verifier parses with :mod:`ast` and walks a whitelist of nodes over
exact :class:`fractions.Fraction` arithmetic; nothing is ever ``eval``-ed.

Everything countdown lives here but its config (:mod:`polyray.config.tasks`): prompt
generation, the verifier, the :class:`CountdownTask` bound to its config, parsing a problem
back from prompt text (for HTTP reward callers), and the task's own diversity
``countdown_expr``: distinct answers after normalisation (``3+9`` and ``9+3`` differ; ``(3+9)`` and ``3 + 9`` do not).
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from polyray.config.tasks import CountdownTaskConfig
from polyray.io import ConfigError
from polyray.tasks.base import Judgement, Prompt, Task

SPLITS = ("pretrain", "train", "val", "test")
# Share of the prompt space given to each split (hash buckets out of 100).
_SPLIT_BUCKETS = {"pretrain": range(0, 70), "train": range(70, 85), "val": range(85, 90), "test": range(90, 100)}
_OPS = ("+", "-", "*")
_MAX_COMPLETION_CHARS = 64


@dataclass(frozen=True)
class CountdownSpec:
    """Shape of the generated problems (mirrors ``CountdownTaskConfig``)."""

    num_numbers: int = 3
    max_number: int = 16
    min_operands: int = 2
    max_target: int = 99


def format_prompt(numbers: tuple[int, ...], target: int) -> str:
    return f"nums {' '.join(map(str, numbers))} target {target}\nexpr:"


def _split_of(numbers: tuple[int, ...], target: int) -> str:
    key = f"{sorted(numbers)}|{target}".encode()
    bucket = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") % 100
    return next(name for name, rng in _SPLIT_BUCKETS.items() if bucket in rng)


def _random_expression(rng: random.Random, operands: list[int]) -> str:
    """Left-to-right chain ``a op b op c`` (standard precedence applies when judged)."""
    expr = str(operands[0])
    for value in operands[1:]:
        expr += rng.choice(_OPS) + str(value)
    return expr


def _sample_problem(rng: random.Random, spec: CountdownSpec) -> tuple[tuple[int, ...], int, str] | None:
    numbers = tuple(rng.randint(1, spec.max_number) for _ in range(spec.num_numbers))
    n_operands = rng.randint(spec.min_operands, spec.num_numbers)
    operands = rng.sample(list(numbers), n_operands)
    expr = _random_expression(rng, operands)
    value = evaluate_expression(expr)
    if value.denominator != 1 or not 0 < value <= spec.max_target:
        return None
    return numbers, int(value), expr


def generate_prompts(split: str, count: int, seed: int, spec: CountdownSpec = CountdownSpec()) -> list[Prompt]:
    """``count`` distinct prompts of ``split``; deterministic in (split, count, seed, spec)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"countdown:{split}:{seed}")
    seen: set[tuple[tuple[int, ...], int]] = set()
    prompts: list[Prompt] = []
    attempts = 0
    while len(prompts) < count:
        attempts += 1
        if attempts > 200 * count + 10_000:
            raise ConfigError(
                f"{'model.tiny.pretrain_prompts' if split == 'pretrain' else f'task.n_{split}'}: could not generate {count} distinct {split} prompts with numbers up to"
                f" {spec.max_number} (task.max_number) and targets up to {spec.max_target} (task.max_target):"
                f" ask for fewer or widen the range"
            )
        problem = _sample_problem(rng, spec)
        if problem is None:
            continue
        numbers, target, expr = problem
        key = (tuple(sorted(numbers)), target)
        if key in seen or _split_of(numbers, target) != split:
            continue
        seen.add(key)
        prompts.append(
            Prompt(
                text=format_prompt(numbers, target),
                reference=" " + expr,
                meta={"numbers": list(numbers), "target": target},
            )
        )
    return prompts


def sample_solution(rng: random.Random, numbers: tuple[int, ...], target: int, tries: int = 200) -> str | None:
    """A random valid expression for (numbers, target), used to pretrain the base model."""
    for _ in range(tries):
        k = rng.randint(2, len(numbers))
        operands = rng.sample(list(numbers), k)
        expr = _random_expression(rng, operands)
        if evaluate_expression(expr) == target:
            return expr
    return None


def sample_wrong_expression(rng: random.Random, numbers: tuple[int, ...], target: int) -> str:
    """A random expression over ``numbers`` whose value is not ``target``."""
    while True:
        expr = _random_expression(rng, rng.sample(list(numbers), rng.randint(2, len(numbers))))
        if evaluate_expression(expr) != target:
            return expr


# what countdown_retry answers a wrong answer with: the judge's reason, then the prompt's own answer cue
RETRY_FEEDBACK = "\n{reason}\nexpr:"


def retry_feedback(reason: str) -> str:
    """The observation after a wrong answer the judge gave ``reason`` for (polyray.envs.countdown_retry)."""
    return RETRY_FEEDBACK.format(reason=reason)


def retry_dialogue(rng: random.Random, numbers: tuple[int, ...], target: int, *, answer: str, eos: str) -> str:
    """A pretraining completion: one or two wrong answers, each ended by ``eos`` and answered with
    :func:`retry_feedback`, then ``answer`` (with its leading space)."""
    text = ""
    for _ in range(rng.randint(1, 2)):
        wrong = sample_wrong_expression(rng, numbers, target)
        text += f" {wrong}{eos}{retry_feedback(judge(wrong, numbers, target).reason)}"
    return text + answer


def generator_key(config: CountdownTaskConfig) -> dict:
    """What determines the generated problems of ``config`` (and its type): an embedded model's corpus key."""
    return config.model_dump(
        mode="json", include={"type", "num_numbers", "max_number", "min_operands", "max_target", "seed"}
    )


def pretrain_solutions(
    spec: CountdownSpec, prompt_seed: int, n_prompts: int, noise: float, seed: int
) -> list[tuple[Prompt, str]]:
    """Two (prompt, expression) pairs per ``pretrain``-split prompt: random valid solutions (never
    the references), or with probability ``noise`` a random expression over the prompt's numbers
    that misses the target, as a web corpus holds wrong answers beside right ones. The
    ``pretrain`` split is disjoint from train, val and test by construction."""
    rng = random.Random(seed)
    pairs = []
    for p in generate_prompts("pretrain", n_prompts, prompt_seed, spec):
        numbers, target = tuple(p.meta["numbers"]), p.meta["target"]
        for _ in range(2):
            if rng.random() < noise:
                sol = sample_wrong_expression(rng, numbers, target)
            else:
                sol = sample_solution(rng, numbers, target) or p.reference.strip()
            pairs.append((p, sol))
    return pairs


class UnsafeExpression(ValueError):
    """The text is not a plain arithmetic expression over integer literals."""


def exact_value(node: ast.AST, literals: list[int]) -> Fraction:
    """The exact value of an expression's AST node over integer literals, ``+ - * /`` and parentheses,
    appending each literal to ``literals``; ValueError on other syntax or a division by zero.

    The one evaluator of countdown: the countdown_code task's sandboxed test runs this function's own
    source (:mod:`polyray.tasks.code`), so it uses only ``ast`` and ``Fraction``, which both places import."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        left, right = exact_value(node.left, literals), exact_value(node.right, literals)
        if type(node.op) is ast.Add:
            return left + right
        if type(node.op) is ast.Sub:
            return left - right
        if type(node.op) is ast.Mult:
            return left * right
        if right == 0:
            raise ValueError("division by zero")
        return left / right
    raise ValueError("disallowed syntax: " + type(node).__name__)


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Value and integer literals of an arithmetic expression (``+ - * /``, parentheses)."""
    if len(text) > _MAX_COMPLETION_CHARS:
        raise UnsafeExpression(f"longer than {_MAX_COMPLETION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"syntax error: {exc.msg}") from None
    literals: list[int] = []
    try:
        return exact_value(tree.body, literals), literals
    except ValueError as exc:
        raise UnsafeExpression(str(exc)) from None


def evaluate_expression(text: str) -> Fraction:
    return parse_expression(text)[0]


def judge(completion: str, numbers: list[int] | tuple[int, ...], target: int) -> Judgement:
    """Reward 1.0 for a valid expression equal to ``target`` using each number at most once."""
    expr = completion.strip().split("\n", 1)[0].strip()
    if not expr:
        return Judgement(0.0, "empty completion")
    try:
        value, literals = parse_expression(expr)
    except UnsafeExpression as exc:
        return Judgement(0.0, f"not an expression ({exc})")
    missing = Counter(literals) - Counter(numbers)
    if missing:
        return Judgement(0.0, f"uses numbers not given: {sorted(missing.elements())}")
    if value != target:
        return Judgement(0.0, f"evaluates to {value}, target {target}")
    return Judgement(1.0, "correct")


_PROMPT_RE = re.compile(r"nums\s+(?P<numbers>\d+(?:\s+\d+)*)\s+target\s+(?P<target>-?\d+)")


def parse_prompt(text: str) -> tuple[list[int], int] | None:
    """(numbers, target) of a prompt in :func:`format_prompt`'s format, or None."""
    match = _PROMPT_RE.search(text)
    if match is None:
        return None
    return [int(n) for n in match["numbers"].split()], int(match["target"])


def normalise_expression(completion: str) -> str:
    """Canonical text of a completion: ``"(1 + 2)"`` and ``"1+2"`` both give ``"1 + 2"``.

    First line, stripped, checked against the verifier's whitelist and unparsed
    (``ast.unparse`` prints canonical spacing and only the parentheses precedence needs);
    anything that is not a valid expression keeps its stripped text.
    """
    text = completion.strip().split("\n", 1)[0].strip()
    try:
        parse_expression(text)
        return ast.unparse(ast.parse(text, mode="eval"))
    except (UnsafeExpression, SyntaxError, ValueError, RecursionError):
        return text


def compute_countdown_expr_diversity(texts: list[str]) -> float:
    """Distinct normalised expressions / number of texts, in [1/n, 1]; 0.0 for fewer than two texts."""
    if len(texts) < 2:
        return 0.0
    return len({normalise_expression(t) for t in texts}) / len(texts)


class CountdownTask(Task):
    """The countdown task bound to its config: prompt splits and the exact verifier."""

    name = "countdown"
    # the answer continues the prompt's "expr:" line: a chat reply cannot
    chat_format_ok = False

    def __init__(self, config: CountdownTaskConfig, reward_model=None):
        self.config = config
        self.spec = CountdownSpec(
            num_numbers=config.num_numbers,
            max_number=config.max_number,
            min_operands=config.min_operands,
            max_target=config.max_target,
        )

    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        return generate_prompts(
            split, self.split_size(split) or 0 if count is None else count, self.config.seed, self.spec
        )

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        return [
            (p.text, " " + sol) for p, sol in pretrain_solutions(self.spec, self.config.seed, n_prompts, noise, seed)
        ]

    def corpus_key(self) -> dict:
        return generator_key(self.config)

    def with_retries(self, pairs: list[tuple[str, str]], share: float, seed: int, eos: str) -> list[tuple[str, str]]:
        rng = random.Random(f"retries:{seed}")
        out = []
        for prompt, completion in pairs:
            numbers, target = parse_prompt(prompt)
            right = judge(completion, numbers, target).reward == 1.0
            if right and rng.random() < share:
                completion = retry_dialogue(rng, tuple(numbers), target, answer=completion, eos=eos)
            out.append((prompt, completion))
        return out

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        return judge(completion, prompt.meta["numbers"], prompt.meta["target"])
