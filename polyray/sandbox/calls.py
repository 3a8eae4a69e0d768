"""Run a candidate function and its tests in two sandboxes, so the candidate cannot fake a pass.

One program can always lie about itself: run in a single process with its tests, a
candidate can exit 0 early, patch ``assert`` or the builtins, read a pass token from its
own file or from the module's constants, or return an object whose ``__eq__`` says True.
So the candidate and the tests never share a process:

- the *candidate* sandbox runs ``candidate.py`` (the prompt and the completion, nothing
  else) under a small server that answers calls to ``entry_point``;
- the *tests* sandbox runs the prompt (its helpers, e.g. HumanEval's ``poly``) and the
  test source, then ``check(candidate)`` with a proxy ``candidate`` whose calls travel
  over two pipes to the candidate sandbox.

Only plain values cross: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and
lists, tuples, dicts, sets and frozensets of them, as tagged JSON. The tests side decodes
them with :data:`CODEC`'s ``decode``, which builds exact builtins only (anything else is
refused), so every comparison runs builtin ``==`` on the trusted side. An exception the
candidate raised comes back as a builtin ``Exception`` subclass of the same name (never
``SystemExit``). The verdict is the tests process's exit status; the candidate cannot
reach that process (another PID namespace and root, in the namespace modes), and no
secret sits in its program. The tests module's ``entry_point`` name is the proxy too (some
HumanEval tests call the function by name, as one program would let them). ``candidate.__code__`` gives ``co_filename`` (a copy of
``candidate.py`` beside the tests), ``co_firstlineno`` and ``co_name``, for tests that
read the candidate's source (countdown_code's). A prompt that does not compile on its
own (it ends inside a statement) is left out of the tests program.
"""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any

from polyray.sandbox import Isolation, SandboxLimits, SandboxResult, run_python

# Shared by both sides (standard library only). ``decode`` is the trust boundary: it
# accepts json.loads output of the tagged form and builds exact builtins only.
CODEC = r'''
import json as _json

_MAX_LINE = 1 << 24

def encode(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int.__int__(x)  # an int subclass crosses as its plain value
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, (bytes, bytearray)):
        return {"b": bytes(x).hex()}
    if isinstance(x, list):
        return {"l": [encode(v, depth + 1) for v in list.__iter__(x)]}
    if isinstance(x, tuple):
        return {"t": [encode(v, depth + 1) for v in tuple.__iter__(x)]}
    if isinstance(x, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]}
    if isinstance(x, frozenset):
        return {"f": [encode(v, depth + 1) for v in frozenset.__iter__(x)]}
    if isinstance(x, set):
        return {"s": [encode(v, depth + 1) for v in set.__iter__(x)]}
    raise TypeError("%s is not a plain value (None, bool, int, float, str, bytes and containers of them)"
                    % type(x).__name__)

def decode(x, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is dict and len(x) == 1:
        (tag, v), = x.items()
        if tag == "b" and type(v) is str:
            return bytes.fromhex(v)
        if type(v) is list:
            if tag == "l":
                return [decode(i, depth + 1) for i in v]
            if tag == "t":
                return tuple(decode(i, depth + 1) for i in v)
            if tag == "s":
                return set(decode(i, depth + 1) for i in v)
            if tag == "f":
                return frozenset(decode(i, depth + 1) for i in v)
            if tag == "d":
                out = {}
                for pair in v:
                    if type(pair) is not list or len(pair) != 2:
                        raise ValueError("malformed dict item")
                    out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
                return out
    raise ValueError("not a plain value")

def send(stream, message):
    stream.write(_json.dumps(message) + "\n")
    stream.flush()

def receive(stream):
    line = stream.readline(_MAX_LINE)
    if not line.endswith("\n"):
        raise RuntimeError("the candidate's process ended, or sent a message over %d bytes" % _MAX_LINE)
    return _json.loads(line)
'''

# The candidate sandbox: load candidate.py, say whether the entry point exists, answer calls.
# Everything here is the candidate's to tamper with; nothing it sends is trusted.
_CANDIDATE_SERVER = CODEC + r'''
import os, sys, traceback
_in = open(3, "r", encoding="utf-8")
_out = open(4, "w", encoding="utf-8")
try:
    with open("candidate.py") as _f:
        _code = compile(_f.read(), "candidate.py", "exec")
    _globals = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(_code, _globals)
    _fn = _globals[ENTRY_POINT]
    if not callable(_fn):
        raise TypeError("%s is not a function" % ENTRY_POINT)
except BaseException as _exc:  # SystemExit too: exiting while loading is not a candidate
    traceback.print_exc()
    send(_out, {"fatal": "%s: %s" % (type(_exc).__name__, _exc)})
    os._exit(1)
send(_out, {"ready": True})
while True:
    _line = _in.readline(_MAX_LINE)
    if not _line:
        os._exit(0)
    try:
        _call = _json.loads(_line)
        _args = [decode(a) for a in _call["args"]]
        _kwargs = {k: decode(v) for k, v in _call["kwargs"].items()}
        _reply = {"ok": encode(_fn(*_args, **_kwargs))}
    except BaseException as _exc:
        try:
            _reply = {"raise": [type(_exc).__name__, str(_exc)[:2000]]}
        except BaseException:
            _reply = {"raise": ["RuntimeError", "unprintable exception"]}
    send(_out, _reply)
'''

# The tests sandbox: trusted code only (the prompt's helpers, the test, this harness).
_TESTS_HARNESS = CODEC + r'''
import ast, builtins, os, sys, traceback, types
_in = open(3, "r", encoding="utf-8")
_out = open(4, "w", encoding="utf-8")

def _exception(name, message):
    cls = getattr(builtins, name, None) if type(name) is str else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        return cls(message)
    except Exception:
        return RuntimeError("%s: %s" % (name, message))

class Candidate:
    """Stands in for the candidate function: each call runs in the candidate's sandbox."""

    __name__ = __qualname__ = ENTRY_POINT

    def __call__(self, *args, **kwargs):
        send(_out, {"args": [encode(a) for a in args], "kwargs": {str(k): encode(v) for k, v in kwargs.items()}})
        reply = receive(_in)
        if type(reply) is dict and set(reply) == {"ok"}:
            return decode(reply["ok"])
        if type(reply) is dict and set(reply) == {"raise"} and type(reply["raise"]) is list and len(reply["raise"]) == 2:
            name, message = reply["raise"]
            raise _exception(name, message if type(message) is str else "")
        raise RuntimeError("malformed reply from the candidate")

    @property
    def __code__(self):
        path = os.path.abspath("candidate.py")
        with open(path) as f:
            tree = ast.parse(f.read())
        defs = [n.lineno for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == ENTRY_POINT]
        return types.SimpleNamespace(co_filename=path, co_firstlineno=defs[-1] if defs else 0, co_name=ENTRY_POINT)

try:
    _hello = receive(_in)
    if _hello != {"ready": True}:
        _why = _hello.get("fatal") if type(_hello) is dict else None
        print("the candidate did not load: %s" % (_why if type(_why) is str else "no answer"), file=sys.stderr)
        os._exit(1)
    with open("prompt.py") as _f:
        _prompt = _f.read()
    with open("tests.py") as _f:
        _tests = _f.read()
    try:
        _code = compile(_prompt + "\n" + _tests, "tests.py", "exec")
    except SyntaxError:  # the prompt ends inside a statement: its helpers cannot be had
        _code = compile(_tests, "tests.py", "exec")
    _globals = {"__name__": "__main__", "__builtins__": builtins}
    exec(_code, _globals)
    _globals[ENTRY_POINT] = _candidate = Candidate()  # as in one program: a test may name the function
    _globals["check"](_candidate)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
'''


def run_candidate_tests(
    prompt: str,
    candidate_source: str,
    tests: str,
    entry_point: str,
    limits: SandboxLimits = SandboxLimits(),
    isolation: Isolation | str = "auto",
) -> SandboxResult:
    """Run ``check(candidate)`` from ``tests`` (and ``prompt``'s helpers) against ``entry_point`` of
    ``candidate_source``, in two sandboxes; the result is the tests sandbox's, passed iff it exited 0.

    The candidate's own stderr (a traceback while loading, say) is appended to the result's."""
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point {entry_point!r} is not a Python identifier")
    header = f"ENTRY_POINT = {entry_point!r}\n"
    to_candidate_r, to_candidate_w = os.pipe()
    to_tests_r, to_tests_w = os.pipe()
    tests_done = threading.Event()
    candidate_result: list[SandboxResult] = []

    def candidate() -> None:
        candidate_result.append(
            run_python(
                header + _CANDIDATE_SERVER,
                limits,
                isolation,  # type: ignore[arg-type]
                files={"candidate.py": candidate_source},
                channel_fds={3: to_candidate_r, 4: to_tests_w},
                cancel=tests_done,
            )
        )

    # in this context: an enclosing cancelled_by stops the candidate's sandbox too
    thread = threading.Thread(target=contextvars.copy_context().run, args=(candidate,), name="sandbox-candidate",
                              daemon=True)  # fmt: skip
    thread.start()
    try:
        result = run_python(
            header + _TESTS_HARNESS,
            limits,
            isolation,  # type: ignore[arg-type]
            files={"prompt.py": prompt, "tests.py": tests, "candidate.py": candidate_source},
            channel_fds={3: to_tests_r, 4: to_candidate_w},
        )
    finally:
        tests_done.set()
        thread.join()
    if candidate_result and candidate_result[0].stderr and not result.passed:
        stderr = "[candidate]\n" + candidate_result[0].stderr[-2000:] + "\n[tests]\n" + result.stderr
        result = result.model_copy(update={"stderr": stderr})
    return result


def plain_values() -> dict[str, Any]:
    """The codec as functions of this process (``encode``, ``decode``), for tests and tools."""
    namespace: dict[str, Any] = {}
    exec(CODEC, namespace)
    return {"encode": namespace["encode"], "decode": namespace["decode"]}
