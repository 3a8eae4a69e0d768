"""The bottom layer: strict config models, YAML/``--set`` loading, JSONL and JSON files, the console.

Everything above imports from here; this module imports nothing of polyray's.

- :class:`StrictModel`: the pydantic base of every config (unknown keys fail, assignment
  is validated); :func:`load_yaml_model` reads YAML, applies ``--set a.b=c`` overrides to
  the raw mapping and validates, raising :class:`ConfigError` with the dotted field path.
- :func:`iter_jsonl_objects`: JSONL whose every line must be an object; errors name
  ``file:line``. :func:`write_json_atomic`: a reader never sees half a file.
- :func:`make_console`: rich consoles for progress and errors that never fold a line,
  whatever the terminal width or path length (a one-line error stays one line);
  :func:`make_progress` the progress bars of long work, :class:`Timer` stage timings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the reason."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- YAML configs


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: ``source: a.b: reason (got x); c: reason``."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        reason = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        parts.append(f"{path}: {reason}{shown}")
    return f"{source}: " + "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml-parsed c)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. phases.0.lr=1e-4")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _index(node: list, part: str, item: str, path: list[str], depth: int) -> int:
    try:
        i = int(part)
        node[i]
        return i
    except (ValueError, IndexError):
        raise ConfigError(f"--set {item}: {'.'.join(path[:depth])} is not a valid list index") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` items to the raw mapping (lists are indexed by number)."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_index(node, part, item, path, i + 1)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {item}: {'.'.join(path[: i + 1])} is not a section")
        if isinstance(node, list):
            node[_index(node, path[-1], item, path, len(path))] = value
        else:
            node[path[-1]] = value
    return data


def load_yaml_model(path: str | Path | None, overrides: list[str], model: type[BaseModel]) -> Any:
    """Read YAML (or ``{}`` when ``path`` is None), apply ``--set`` overrides, validate as ``model``."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from None
        if data is None:
            raise ConfigError(f"{source}: the file is empty; write at least one field (e.g. name: my-run)")
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of fields, got {type(data).__name__} {data!r}")
    data = apply_overrides(data, list(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- JSONL / JSON


def iter_jsonl_objects(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("path:line", object)`` for each non-blank line; the first bad line raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- console


def make_console(stderr: bool = True, min_width: int | None = None):
    """A rich console whose ``print`` never folds a line (``soft_wrap``).

    ``min_width`` widens it when the output is not a terminal (a log file or pipe gets 80
    columns by default, which folds every cell of a wide table).
    """
    from rich.console import Console

    console = Console(stderr=stderr, soft_wrap=True)
    if min_width and not console.is_terminal:
        console = Console(stderr=stderr, soft_wrap=True, width=max(console.width, min_width))
    return console


console = make_console(min_width=160)
"""The drivers' stderr console (progress bars, status lines, warnings); 160 columns in a log file, so a
progress bar's info is not cut at 80."""


def make_progress():
    """A rich progress bar on :data:`console`: description, bar, done/total, elapsed, free-form ``info``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=False,
    )


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


class Timer:
    """``with timer("stage"): ...`` records seconds per stage in ``timer.timings``."""

    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 2)
