"""The two-process harness keeps Python's semantics: each (test, solution) pair scores as one program does.

Every case runs twice: in one plain interpreter (the solution, the test, ``check(f)``: the reference) and
through :func:`~polyray.sandbox.calls.run_candidate_tests` (the candidate and the tests in two sandboxes,
what ``code_exec`` and HumanEval use). The outcomes must agree, and agree with the case's expectation, so a
case that only the harness fails (or passes) shows. Three of the failing cases are fakes that passed the
harness before it copied arguments back, kept identity and carried the docstring. Values that cannot cross
(a generator, an open file, a lambda from the test) fail with the reason, even where one program passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from polyray.sandbox import SandboxLimits
from polyray.sandbox.calls import run_candidate_tests

pytestmark = [pytest.mark.slow]

LIMITS = SandboxLimits(timeout_s=20)

# name -> (solution, test, passes in one program); the entry point is always f
CASES = {
    # mutation: what the solution does to its arguments is what the test sees
    "sorts_in_place": (
        "def f(a):\n    a.sort()\n",
        "def check(c):\n    a = [3, 1, 2]\n    assert c(a) is None\n    assert a == [1, 2, 3]\n",
        True,
    ),
    "fake_sorted_copy_left_arg_unchanged": (
        "def f(a):\n    a.sort()\n    return a\n",
        "def check(c):\n    a = [3, 1, 2]\n    assert c(a) == [1, 2, 3]\n    assert a == [3, 1, 2], 'must not mutate'\n",
        False,
    ),
    "dict_filled": (
        "def f(d, k, v):\n    d[k] = v\n",
        "def check(c):\n    d = {'x': 0}\n    c(d, 'a', [1])\n    assert d == {'x': 0, 'a': [1]}\n",
        True,
    ),
    "set_grows": (
        "def f(s):\n    s.add(3)\n    s.discard(1)\n",
        "def check(c):\n    s = {1, 2}\n    c(s)\n    assert s == {2, 3}\n",
        True,
    ),
    "inner_row_keeps_identity": (
        "def f(grid):\n    grid[0][0] = 9\n    grid.append([])\n",
        "def check(c):\n    g = [[1, 2], [3]]\n    row = g[0]\n    c(g)\n"
        "    assert row == [9, 2] and g[0] is row and g == [[9, 2], [3], []]\n",
        True,
    ),
    "bytearray_written": (
        "def f(b):\n    b[0] = 0\n    b.extend(b'!')\n",
        "def check(c):\n    b = bytearray(b'xy')\n    c(b)\n    assert b == bytearray(b'\\x00y!')\n",
        True,
    ),
    "mutated_then_raised": (
        "def f(a):\n    a.append(1)\n    raise ValueError('late')\n",
        "def check(c):\n    a = []\n    try:\n        c(a)\n    except ValueError:\n        pass\n"
        "    assert a == [1]\n",
        True,
    ),
    # aliasing and identity
    "one_list_passed_twice": (
        "def f(a, b):\n    a.append(1)\n    return len(b)\n",
        "def check(c):\n    x = []\n    assert c(x, x) == 1 and x == [1]\n",
        True,
    ),
    "list_holding_itself": (
        "def f(a):\n    a.append(a)\n    return a\n",
        "def check(c):\n    x = []\n    r = c(x)\n    assert r is x and x[0] is x\n",
        True,
    ),
    "fake_returns_its_argument": (
        "def f(a):\n    return a\n",
        "def check(c):\n    a = [1]\n    assert c(a) is not a, 'a new list'\n",
        False,
    ),
    "honest_new_list": (
        "def f(a):\n    return list(a)\n",
        "def check(c):\n    a = [1]\n    r = c(a)\n    assert r is not a and r == a\n",
        True,
    ),
    "returns_the_argument_grown": (
        "def f(a):\n    a.append(1)\n    return a\n",
        "def check(c):\n    a = []\n    assert c(a) is a and a == [1]\n",
        True,
    ),
    "kwarg_dict_mutated": (
        "def f(*, into):\n    into['k'] = 1\n",
        "def check(c):\n    d = {}\n    c(into=d)\n    assert d == {'k': 1}\n",
        True,
    ),
    # the function's own attributes
    "fake_without_a_docstring": (
        "def f():\n    return 1\n",
        "def check(c):\n    assert c.__doc__, 'documented'\n",
        False,
    ),
    "docstring": (
        'def f():\n    """Return one."""\n    return 1\n',
        "def check(c):\n    assert c.__doc__ == 'Return one.' and c() == 1\n",
        True,
    ),
    "name": ("def f():\n    return 1\n", "def check(c):\n    assert c.__name__ == 'f'\n", True),
    "signature_and_defaults": (
        "def f(a, b=2, *args, c, d=(4,), **kw):\n    return a\n",
        "import inspect\ndef check(c):\n    assert str(inspect.signature(c)) == '(a, b=2, *args, c, d=(4,), **kw)'\n"
        "    assert c.__defaults__ == (2,) and c.__kwdefaults__ == {'d': (4,)}\n",
        True,
    ),
    "its_own_default_applies": (
        "def f(x, n=3):\n    return x * n\n",
        "def check(c):\n    assert c('a') == 'aaa' and c('a', n=1) == 'a'\n",
        True,
    ),
    # ints of any size, floats, the immutable containers
    "big_int_returned": ("def f(n):\n    return 7 ** n\n", "def check(c):\n    assert c(10000) == 7 ** 10000\n", True),
    "big_int_argument": (
        "def f(x):\n    return -x, x % 1000\n",
        "def check(c):\n    x = 10 ** 5000 + 7\n    assert c(x) == (-x, 7)\n",
        True,
    ),
    "float_and_bool_exact": (
        "def f():\n    return 0.1 + 0.2, True, (1, frozenset({2}))\n",
        "def check(c):\n    r = c()\n    assert r == (0.30000000000000004, True, (1, frozenset({2})))\n"
        "    assert r[1] is True\n",
        True,
    ),
    # exceptions
    "raises_value_error": (
        "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
        "def check(c):\n    try:\n        c(-1)\n    except ValueError as e:\n"
        "        assert 'negative' in str(e)\n    else:\n        assert False\n",
        True,
    ),
    "raises_the_prompts_exception": (
        "class Invalid(Exception):\n    pass\n\ndef f(x):\n    raise Invalid(x)\n",
        "def check(c):\n    try:\n        c(1)\n    except Invalid:\n        pass\n    else:\n        assert False\n",
        True,
    ),
    "wrong_exception_fails": (
        "def f(x):\n    raise KeyError(x)\n",
        "def check(c):\n    try:\n        c(1)\n    except ValueError:\n        pass\n",
        False,
    ),
    "exception_arguments": (
        "def f(d):\n    return d['x']\n",
        "def check(c):\n    try:\n        c({})\n    except KeyError as e:\n"
        "        assert e.args == ('x',) and str(e) == \"'x'\"\n    else:\n        assert False\n",
        True,
    ),
    "counter_argument_updated": (
        "def f(counts, word):\n    counts[word] += 1\n",
        "from collections import Counter\ndef check(c):\n    n = Counter({'a': 1})\n"
        "    c(n, 'a')\n    assert n == Counter({'a': 2}) and type(n) is Counter\n",
        True,
    ),
    # None returns
    "returns_none": ("def f(x):\n    pass\n", "def check(c):\n    assert c(1) is None\n", True),
    "none_is_not_zero": ("def f(x):\n    pass\n", "def check(c):\n    assert c(1) == 0\n", False),
}
PROMPT_OF = {"raises_the_prompts_exception": "class Invalid(Exception):\n    pass\n"}


def one_program(solution: str, test: str, where: Path) -> bool:
    """The reference: solution, test and ``check(f)`` in one plain interpreter (the solution also as
    ``candidate.py`` in its working directory, as in the candidate's sandbox)."""
    (where / "candidate.py").write_text(solution)
    source = solution + "\n" + test + "\ncheck(f)\n"
    proc = subprocess.run([sys.executable, "-I", "-c", source], cwd=where, capture_output=True, timeout=60)
    return proc.returncode == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_pair_scores_as_one_program_does(name, tmp_path):
    solution, test, expected = CASES[name]
    prompt = PROMPT_OF.get(name, "")
    assert one_program(solution, test, tmp_path) is expected  # the case itself: as written, one program scores this
    result = run_candidate_tests(prompt, solution, test, "f", LIMITS)
    assert result.passed is expected, (result.status, result.stderr[-1500:])


UNCROSSABLE = {
    "a_generator": (
        "def f(n):\n    return (i for i in range(n))\n",
        "def check(c):\n    assert list(c(3)) == [0, 1, 2]\n",
        "generator is not a plain value",
    ),
    "an_open_file": (
        "def f():\n    return open('candidate.py')\n",
        "def check(c):\n    assert c().read()\n",
        "TextIOWrapper is not a plain value",
    ),
    "a_lambda_from_the_test": (
        "def f(xs, key):\n    return sorted(xs, key=key)\n",
        "def check(c):\n    assert c([1, 3], key=lambda x: -x) == [3, 1]\n",
        "function is not a plain value",
    ),
    "caught_by_the_test": (
        "def f():\n    return iter([])\n",
        "def check(c):\n    try:\n        c()\n    except Exception:\n        pass\n",
        "list_iterator is not a plain value",
    ),
    "put_into_an_argument": (
        "def f(a):\n    a.append(object())\n",
        "def check(c):\n    a = []\n    c(a)\n    assert len(a) == 1\n",
        "object is not a plain value",
    ),
}


@pytest.mark.parametrize("name", sorted(UNCROSSABLE))
def test_a_value_that_cannot_cross_fails_with_the_reason(name, tmp_path):
    solution, test, reason = UNCROSSABLE[name]
    assert one_program(solution, test, tmp_path)  # one program passes: only the boundary stops it
    result = run_candidate_tests("", solution, test, "f", LIMITS)
    assert not result.passed and result.status == "failed", result
    assert "cannot be judged" in result.stderr and reason in result.stderr, result.stderr[-1500:]


def test_the_codec_round_trips_graphs_and_refuses_forgeries():
    import json

    from polyray.sandbox.codec import Refs, Uncrossable, copy_back, decode, encode, states

    shared = [1]
    value = [
        1,
        2.5,
        "x",
        None,
        True,
        (1, (2,)),
        {"a": shared},
        {1, 2},
        frozenset({3}),
        b"\x00",
        bytearray(b"y"),
        {(1, 2): "t"},
        shared,
        -(10**5000),
    ]
    out = decode(json.loads(json.dumps(encode(value))))
    assert out == value and out[6]["a"] is out[12] and type(out[10]) is bytearray
    assert type(decode(encode((1,)))) is tuple and type(decode(encode(True))) is bool
    with pytest.raises(Uncrossable):
        encode(object())
    for forged in ({"x": 1}, {"l": 1}, {"d": [[1]]}, {"l": [{"evil": 1}]}, {"r": 0}, {"i": 5}):
        with pytest.raises(ValueError):
            decode(forged)
    # one call: the caller's containers numbered, the callee's copies changed, their contents copied back
    caller = Refs()
    a = [[0], {}]
    sent = json.loads(json.dumps([encode(a, caller)]))
    callee = Refs()
    (copy,) = [decode(x, callee) for x in sent]
    copy[0].append(copy[1])
    copy[1]["me"] = copy
    inner = a[0]
    copy_back(caller, 3, json.loads(json.dumps(states(callee, 3))))
    assert a[0] is inner and inner == [0, {"me": a}] and inner[1] is a[1] and a[1]["me"] is a
    lone = Refs()
    encode([], lone)
    with pytest.raises(ValueError):  # an argument's state of another type
        copy_back(lone, 1, [{"d": []}])


def test_a_reply_the_tests_process_cannot_hold_fails_the_item():
    """A forged reply under the line cap that decodes past the tests sandbox's memory: the item fails, even
    where the test catches MemoryError (before, the MemoryError reached the test, which passed)."""
    solution = (
        "import os, time\n"
        "def f():\n"
        '    line = \'{"state": [], "ok": {"l": [\' + \'{"l": []},\' * 1_300_000 + \'{"l": []}]}}\\n\'\n'
        "    os.write(4, line.encode())\n"
        "    time.sleep(60)\n"
    )
    test = "def check(c):\n    try:\n        c()\n    except MemoryError:\n        pass\n"
    result = run_candidate_tests("", solution, test, "f", SandboxLimits(timeout_s=30, memory_mb=256))
    assert not result.passed and "cannot be judged" in result.stderr, (result.status, result.stderr[-1500:])
