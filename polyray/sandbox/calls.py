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

Only plain values cross (:mod:`.codec`): ``None``, ``bool``, ``int`` of any size, ``float``, ``str``,
``bytes``, ``bytearray`` and lists, tuples, dicts, sets and frozensets of them, as tagged JSON. The
tests side decodes them into exact builtins only (anything else is refused), so every comparison runs
builtin ``==`` on the trusted side. Python's semantics hold across the boundary: an argument the
candidate mutates is mutated in the test's own object (its new contents are copied back after the call,
even when the call raised), an argument passed twice is one object to the candidate, and a returned
argument is the test's same object. A value that cannot cross (a generator, an open file, a lambda
passed by the test) fails the item at once with the reason, whatever the test would catch. An exception
the candidate raised comes back as the builtin ``Exception`` subclass of the same name, or the prompt's
or tests' own class of that name (never ``SystemExit``).

The verdict is the tests process's exit status; the candidate cannot reach that process (another PID
namespace and root, in the namespace modes), and no secret sits in its program. The tests module's
``entry_point`` name is the stand-in too (some HumanEval tests call the function by name, as one program
would let them). The stand-in carries the candidate's ``__name__``, ``__doc__``, signature and
defaults (a default that cannot cross is a placeholder equal to nothing; annotations are not carried);
``candidate.__code__`` gives ``co_filename`` (a copy of ``candidate.py`` beside the tests),
``co_firstlineno`` and ``co_name``, for tests that read the candidate's source (countdown_code's). A
prompt that does not compile on its own (it ends inside a statement) is left out of the tests program.
"""

from __future__ import annotations

import contextvars
import os
import threading
from pathlib import Path

from polyray.sandbox import Isolation, SandboxLimits, SandboxResult, codec, run_python

# Shared by both sides: the codec module's own source (standard library only) heads both programs.
CODEC = Path(codec.__file__).read_text(encoding="utf-8")

# The candidate sandbox: load candidate.py, describe the entry point, answer calls. Everything here is the
# candidate's to tamper with; nothing it sends is trusted.
_CANDIDATE_SERVER = r"""
import inspect, os, sys, traceback
_in = open(3, "r", encoding="utf-8")
_out = open(4, "w", encoding="utf-8")

def _describe(fn):
    # what the tests' stand-in carries: the docstring, and the signature with its defaults
    doc = getattr(fn, "__doc__", None)
    meta = {"doc": doc if type(doc) is str else None, "params": None}
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return meta
    meta["params"] = []
    for p in parameters:
        param = {"name": p.name, "kind": int(p.kind)}
        if p.default is not p.empty:
            try:
                param["default"] = encode(p.default)
            except (TypeError, ValueError, RecursionError):
                param["uncrossable"] = type(p.default).__name__
        meta["params"].append(param)
    return meta

try:
    with open("candidate.py") as _f:
        _code = compile(_f.read(), "candidate.py", "exec")
    _globals = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(_code, _globals)
    _fn = _globals[ENTRY_POINT]
    if not callable(_fn):
        raise TypeError("%s is not a function" % ENTRY_POINT)
    _meta = _describe(_fn)
except BaseException as _exc:  # SystemExit too: exiting while loading is not a candidate
    traceback.print_exc()
    send(_out, {"fatal": "%s: %s" % (type(_exc).__name__, _exc)})
    os._exit(1)
send(_out, {"ready": True, "meta": _meta})
while True:
    _line = _in.readline(_MAX_LINE)
    if not _line:
        os._exit(0)
    _refs = Refs()
    _call = _json.loads(_line)
    _args = [decode(a, _refs) for a in _call["args"]]
    _kwargs = {k: decode(v, _refs) for k, v in _call["kwargs"].items()}
    _count = len(_refs.objects)  # the arguments' containers: their contents go back after the call
    try:
        _returned, _raised = _fn(*_args, **_kwargs), None
    except BaseException as _exc:
        _returned, _raised = None, _exc
    try:
        _reply = {"state": states(_refs, _count)}
    except (TypeError, ValueError, RecursionError) as _exc:
        send(_out, {"uncrossable": "after the call, an argument holds a value that cannot cross: %s" % _exc})
        continue
    if _raised is None:
        try:
            _reply["ok"] = encode(_returned, _refs)
        except (TypeError, ValueError, RecursionError) as _exc:
            send(_out, {"uncrossable": "the candidate returned a value that cannot cross: %s" % _exc})
            continue
    else:
        try:
            _reply["raise"] = [type(_raised).__name__, str(_raised)[:2000]]
        except BaseException:
            _reply["raise"] = ["RuntimeError", "unprintable exception"]
        try:  # its arguments too, where they are plain values (KeyError('x').args[0] is 'x')
            _reply["raise"].append(encode(list(_raised.args)))
        except BaseException:
            pass
    send(_out, _reply)
"""

# The tests sandbox: trusted code only (the prompt's helpers, the test, this harness).
_TESTS_HARNESS = r"""
import ast, builtins, inspect, os, sys, traceback, types
_in = open(3, "r", encoding="utf-8")
_out = open(4, "w", encoding="utf-8")
_globals = {"__name__": "__main__", "__builtins__": builtins}

def _fail(reason):
    # the item fails whatever the test catches: a call that cannot cross faithfully never passes
    print("the candidate cannot be judged: %s" % reason, file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)

def _exception(name, message, args=None):
    # the builtin of that name, or an exception class the prompt or the tests define, with the candidate's
    # arguments where they crossed (else its message)
    cls = _globals.get(name, getattr(builtins, name, None)) if type(name) is str else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    try:
        return cls(*args) if type(args) is list else cls(message)
    except Exception:
        return RuntimeError("%s: %s" % (name, message))

_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL,
          inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)  # int(kind) on the candidate's side

class _Uncrossed:
    # a default of the candidate's that cannot cross: equal to nothing but itself
    def __init__(self, kind):
        self.kind = kind
    def __repr__(self):
        return "<a %s default, which cannot cross>" % self.kind

class Candidate:
    # stands in for the candidate function: each call runs in the candidate's sandbox

    __name__ = __qualname__ = ENTRY_POINT

    def __init__(self, meta):
        doc = meta.get("doc")
        if doc is not None and type(doc) is not str:
            raise ValueError("doc")
        self.__doc__ = doc
        if meta.get("params") is None:
            return
        parameters = []
        for p in meta["params"]:
            name, kind = p["name"], p["kind"]
            if type(name) is not str or not name.isidentifier() or type(kind) is not int or not 0 <= kind <= 4:
                raise ValueError("parameter")
            if "default" in p:
                default = decode(p["default"])
            elif "uncrossable" in p:
                default = _Uncrossed(str(p["uncrossable"])[:100])
            else:
                default = inspect.Parameter.empty
            parameters.append(inspect.Parameter(name, _KINDS[kind], default=default))
        self.__signature__ = inspect.Signature(parameters)
        defaults = tuple(p.default for p in parameters if p.kind <= 1 and p.default is not p.empty)
        kwdefaults = {p.name: p.default for p in parameters if p.kind == 3 and p.default is not p.empty}
        self.__defaults__, self.__kwdefaults__ = defaults or None, kwdefaults or None

    def __call__(self, *args, **kwargs):
        refs = Refs()
        try:
            call = {"args": [encode(a, refs) for a in args], "kwargs": {str(k): encode(v, refs) for k, v in kwargs.items()}}
        except (TypeError, ValueError, RecursionError) as exc:
            _fail("the test passed a value that cannot cross to the candidate: %s" % exc)
        count = len(refs.objects)
        try:
            send(_out, call)
            reply = receive(_in)
        except Exception as exc:  # its process ended, or a reply this process cannot hold (MemoryError)
            _fail("the candidate's process ended during a call, or its reply could not be read (%r)" % exc)
        if type(reply) is dict and type(reply.get("uncrossable")) is str:
            _fail(reply["uncrossable"][:2000])
        try:  # the arguments' new contents first: the reply numbered its containers after theirs
            if type(reply) is not dict or len(reply) != 2:
                raise ValueError("keys")
            copy_back(refs, count, reply["state"])
            if "ok" in reply:
                return decode(reply["ok"], refs)
            name, message, *args = reply["raise"]
            if len(args) > 1:
                raise ValueError("raise")
            error = _exception(name, message if type(message) is str else "", decode(args[0]) if args else None)
        except Exception as exc:  # whatever it was (MemoryError too), never one the test could catch
            _fail("malformed reply from the candidate (%r)" % exc)
        raise error

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
    if type(_hello) is not dict or _hello.get("ready") is not True:
        _why = _hello.get("fatal") if type(_hello) is dict else None
        print("the candidate did not load: %s" % (_why if type(_why) is str else "no answer"), file=sys.stderr)
        os._exit(1)
    try:
        _candidate = Candidate(_hello["meta"])
    except (KeyError, TypeError, ValueError, RecursionError) as _exc:
        _fail("a malformed description of the candidate (%r)" % _exc)
    with open("prompt.py") as _f:
        _prompt = _f.read()
    with open("tests.py") as _f:
        _tests = _f.read()
    try:
        _code = compile(_prompt + "\n" + _tests, "tests.py", "exec")
    except SyntaxError:  # the prompt ends inside a statement: its helpers cannot be had
        _code = compile(_tests, "tests.py", "exec")
    exec(_code, _globals)
    _globals[ENTRY_POINT] = _candidate  # as in one program: a test may name the function
    _globals["check"](_candidate)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
"""


def checker_source(prompt: str, tests: str) -> str:
    """The source the tests sandbox runs as ``tests.py`` (what its tracebacks' line numbers count in): the
    prompt's helpers and the tests, or the tests alone when the prompt does not compile on its own."""
    try:
        compile(prompt + "\n" + tests, "tests.py", "exec")
    except (SyntaxError, ValueError):
        return tests
    return prompt + "\n" + tests


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
    header = CODEC + f"\nENTRY_POINT = {entry_point!r}\n"
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
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(candidate,), name="sandbox-candidate", daemon=True
    )
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
