"""A user's Python function named in a config: ``module:function`` or ``path/to/file.py:function``.

The custom reward (``reward: {name: custom, params: {function: ...}}``) names its scoring function
this way. A file reference is made absolute against the working directory when the config loads,
like the data paths (``task.path``), so the saved config and every Ray worker see the same file; a
module reference is imported as is (an installed package, or one on ``PYTHONPATH``).

:func:`load_function` imports it once per process and checks that the attribute is a callable
taking the keywords :data:`REWARD_KEYWORDS`; every failure is one :class:`FunctionRefError` line
naming the reference. A file is imported as a module of its own (``sys.modules`` key private to
polyray), so a user file called ``json.py`` shadows nothing; it may import installed packages,
not the files beside it (only the file itself is shipped to the reward service's replicas).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REWARD_KEYWORDS = ("prompts", "completions", "references", "metadata")
"""The keywords a custom reward function is called with (one list each, one entry per item)."""

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# absolute file path or module name -> module
_LOADED: dict[str, ModuleType] = {}
_LOCK = threading.Lock()


class FunctionRefError(ValueError):
    """A function reference that cannot be used; the message names it and says why."""


def split_ref(ref: str) -> tuple[str, str]:
    """``(module or file path, attribute)`` of ``module:function`` / ``file.py:function``."""
    where, sep, attr = str(ref).rpartition(":")
    if not sep or not where or not _MODULE.match(attr) or "." in attr:
        raise FunctionRefError(f"{ref!r} is not 'module:name' or 'path/to/file.py:name' (e.g. my_rewards.py:score)")
    if not is_file_ref(where) and not _MODULE.match(where):
        raise FunctionRefError(f"{ref!r}: {where!r} is neither a .py file nor a dotted module name")
    return where, attr


def is_file_ref(where: str) -> bool:
    return where.endswith(".py")


def resolve_ref(ref: str) -> str:
    """``ref`` with a file path made absolute (against the working directory, ``~`` expanded)."""
    where, attr = split_ref(ref)
    if is_file_ref(where):
        where = str(Path(where).expanduser().resolve())
    return f"{where}:{attr}"


def _import_file(path: Path) -> ModuleType:
    name = (
        f"_polyray_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FunctionRefError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # dataclasses and pickling look their module up here
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def shipped_package(path: str | Path) -> str:
    """The package a copy of the file ``path`` travels in to Ray workers (one name per absolute path)."""
    return f"_polyray_fn_{hashlib.sha1(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:12]}"


def _shipped_copy(path: Path) -> ModuleType | None:
    """The copy of ``path`` shipped with this Ray worker (its runtime environment's ``py_modules``), if any."""
    package = shipped_package(path)
    if importlib.util.find_spec(package) is None:
        return None
    return importlib.import_module(f"{package}.{path.stem}")


def import_module_of(ref: str) -> ModuleType:
    """The module ``ref`` points into, imported once per process: a file from the copy shipped with this
    Ray worker when there is one (the driver's file may be on another node), else from its path."""
    where, _ = split_ref(ref)
    key = str(Path(where).expanduser().resolve()) if is_file_ref(where) else where
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        try:
            if is_file_ref(where):
                module = _shipped_copy(Path(key))
                if module is None and not Path(key).is_file():
                    raise FunctionRefError(f"{ref!r}: no file {key}")
                module = module or _import_file(Path(key))
            else:
                module = importlib.import_module(where)
        except FunctionRefError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's module failed to import: say where
            raise FunctionRefError(f"{ref!r}: importing it raised {describe_exception(exc)}") from None
        _LOADED[key] = module
        return module


def load_function(ref: str, keywords: tuple[str, ...] = REWARD_KEYWORDS) -> Callable:
    """The callable ``ref`` names, checked to accept ``keywords`` (by name or through ``**kwargs``)."""
    module = import_module_of(ref)
    where, attr = split_ref(ref)
    fn = getattr(module, attr, None)
    if fn is None:
        raise FunctionRefError(f"{ref!r}: {where} has no attribute {attr!r}")
    if not callable(fn):
        raise FunctionRefError(f"{ref!r}: {attr!r} is not callable (its type is {type(fn).__name__})")
    check_keywords(ref, fn, keywords)
    return fn


def check_keywords(ref: str, fn: Callable, keywords: tuple[str, ...]) -> None:
    try:
        sig = inspect.signature(fn)
    # a builtin without a signature: the first call will tell
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names = set(keywords)
    else:
        names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [k for k in keywords if k not in names]
    required = [
        p.name
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in keywords
    ]
    if missing or required:
        shown = f"takes no {', '.join(missing)}" if missing else f"requires {', '.join(required)}"
        raise FunctionRefError(
            f"{ref!r} {shown}; define it as def f({', '.join(keywords)}) (or take **kwargs for those it ignores)"
        )


def describe_exception(exc: BaseException) -> str:
    """``Type: message at file.py:line`` on one line (the innermost frame: the user's line that raised)."""
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        # not the import machinery
        if not filename.startswith("<") and "importlib" not in Path(filename).parts:
            where = f" at {Path(filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"
