"""Task-aware diversity: distinct Countdown expressions.

Two completions that differ only in spacing or redundant parentheses are the same
answer; ``3+9`` and ``9+3`` are not (the Countdown task counts them as different
answers, see :mod:`polyray.tasks.countdown`). Normalisation mirrors the verifier:
first line, stripped, parsed with :mod:`ast` against the task's arithmetic whitelist
and unparsed (``ast.unparse`` prints canonical spacing and only the parentheses that
precedence needs). Anything that is not a valid expression keeps its stripped text.
Nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast

from polyray.tasks.countdown import UnsafeExpression, parse_expression


def normalise_expression(completion: str) -> str:
    """Canonical text of a Countdown completion: ``"(1 + 2)"`` and ``"1+2"`` both give ``"1 + 2"``."""
    text = completion.strip().split("\n", 1)[0].strip()
    try:
        parse_expression(text)  # whitelist check (arithmetic over int literals, length cap)
        return ast.unparse(ast.parse(text, mode="eval"))
    except (UnsafeExpression, SyntaxError, ValueError, RecursionError):
        return text


def compute_countdown_expr_diversity(texts: list[str]) -> float:
    """Distinct normalised expressions / number of texts, in [1/n, 1]; 0.0 for fewer than two texts."""
    if len(texts) < 2:
        return 0.0
    return len({normalise_expression(t) for t in texts}) / len(texts)
