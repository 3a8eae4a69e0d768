"""The bottom layer: strict config models, YAML/``--set`` loading, JSONL and JSON files, the console.

Everything above imports from here; this module imports nothing of polyray's.

- :class:`StrictModel`: the pydantic base of every config (unknown keys fail, assignment
  is validated); :func:`read_yaml_mapping` reads a config file (the one YAML reader: errors
  name the file), :func:`load_yaml_model` applies ``--set a.b=c`` overrides to the raw mapping
  and validates, raising :class:`ConfigError` with the dotted field path.
- :func:`read_jsonl_rows` / :func:`iter_jsonl_objects`: JSONL whose every line must be an
  object; a bad line (not UTF-8, too long, not JSON, wrong fields) is one message naming
  ``file:line`` and the field, or is skipped and counted. :func:`write_json_atomic`: a reader
  never sees half a file.
- :func:`make_console`: rich consoles for progress and errors that never fold a line,
  whatever the terminal width or path length (a one-line error stays one line);
  :func:`make_progress` the progress bars of long work, :class:`Timer` stage timings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field and the reason."""


class DataError(ValueError):
    """The user's data cannot be used (a bad JSONL line, an empty file, a task that cannot train);
    the message names the file:line and field, or the config field to change."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- YAML configs


def typed_loc(loc: tuple, data: Any) -> list:
    """``loc`` as the user typed it: pydantic puts a discriminated union's tag into the path
    (``phases.0.grpo.steps`` for a ``type: grpo`` item), a key the file never has; walking the
    input alongside drops each part that is the ``type`` of the mapping it stands in."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            # the union's tag
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return out


def format_validation_error(exc: ValidationError, source: str, data: Any = None) -> str:
    """One line: ``source: a.b: reason (got x); c: reason``, paths as typed when the input ``data`` is given."""
    parts = []
    for err in exc.errors():
        loc = typed_loc(err["loc"], data) if data is not None else err["loc"]
        path = ".".join(str(p) for p in loc) or "<root>"
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
    """A list item by number, or by name (``phases.grpo``: the item whose ``name``, else ``type``, it is)."""
    try:
        i = int(part)
        node[i]
        return i
    except IndexError:
        raise ConfigError(f"--set {item}: {'.'.join(path[:depth])} is not a valid list index") from None
    except ValueError:
        named = [i for i, x in enumerate(node) if isinstance(x, dict) and x.get("name", x.get("type")) == part]
        if len(named) == 1:
            return named[0]
        names = [x.get("name", x.get("type")) for x in node if isinstance(x, dict)]
        raise ConfigError(
            f"--set {item}: {'.'.join(path[:depth])} is neither an index nor the name of one item"
            f" (names: {', '.join(map(str, names)) or 'none'})"
        ) from None


def set_path(data: dict, path: list[str], value: Any, item: str | None = None) -> dict:
    """Set ``data[path[0]][path[1]]... = value`` (list items by index or name, missing sections created);
    errors name ``item`` (the ``--set`` text, by default the dotted path)."""
    item = item or ".".join(path)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_index(node, part, item=item, path=path, depth=i + 1)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {item}: {'.'.join(path[: i + 1])} is not a section")
    if isinstance(node, list):
        node[_index(node, path[-1], item=item, path=path, depth=len(path))] = value
    else:
        node[path[-1]] = value
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` items to the raw mapping (lists are indexed by number)."""
    for item in overrides:
        path, value = parse_override(item)
        set_path(data, path, value, item)
    return data


def read_yaml_mapping(
    path: str | Path, what: str = "config file", allow_empty: bool = False, _seen: tuple[Path, ...] = ()
) -> dict:
    """The mapping at the top of the YAML file ``path``: the one reader of config files (runs, evaluation
    jobs, sweeps, experiments). :class:`ConfigError` naming the file when it is missing (``what``
    not found), not YAML, empty (``{}`` with ``allow_empty``) or not a mapping of fields.

    ``extends: other.yaml`` (relative to the file) starts from that file's mapping: this file's mappings
    merge into its, field by field; a list or a value replaces the other's."""
    data = _read_yaml_file(path, what, allow_empty)
    base = data.pop("extends", None)
    if base is None:
        return data
    here = Path(path).resolve()
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: extends: give the path of the config file this one starts from")
    parent = (here.parent / base).resolve()
    if parent in (*_seen, here):
        raise ConfigError(f"{path}: extends: {base} extends this file again (a cycle)")
    return merge_mappings(read_yaml_mapping(parent, f"extends: {base}", True, (*_seen, here)), data)


def merge_mappings(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in: nested mappings field by field, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_file(path: str | Path, what: str, allow_empty: bool) -> dict:
    source = str(path)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{source}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        if allow_empty:
            return {}
        raise ConfigError(f"{source}: the file is empty; write at least one field (e.g. name: my-run)")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of fields, got {type(data).__name__} {data!r}")
    return data


def load_yaml_model(path: str | Path | None, overrides: list[str], model: type[BaseModel]) -> Any:
    """Read YAML (or ``{}`` when ``path`` is None), apply ``--set`` overrides, validate as ``model``."""
    source = str(path) if path else "<defaults>"
    data = read_yaml_mapping(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- JSONL / JSON


# 1 MiB: longer lines are reported, not parsed
MAX_JSONL_LINE_BYTES = 1 << 20


def iter_jsonl_objects(
    path: str | Path, error: type[Exception] = ValueError, max_line_bytes: int = MAX_JSONL_LINE_BYTES
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("path:line", object)`` for each non-blank line; the first bad line raises ``error``.

    Bad lines: not UTF-8, longer than ``max_line_bytes``, not JSON, not an object. Each message
    names ``path:line``. Reading is by bytes, so a bad line never stops the file being read
    (see :func:`read_jsonl_rows` for skipping them).
    """
    for where, obj in _iter_jsonl(path, error, max_line_bytes):
        if isinstance(obj, Exception):
            raise obj
        yield where, obj


def _iter_jsonl(path: str | Path, error: type[Exception], max_line_bytes: int):
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if len(raw) > max_line_bytes:
                yield where, error(f"{where}: line of {len(raw)} bytes exceeds the {max_line_bytes}-byte limit")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, error(f"{where}: not UTF-8 (byte {exc.start + 1}: {raw[exc.start : exc.start + 1]!r})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, error(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield where, error(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield where, obj


@dataclass
class JsonlReport:
    """What :func:`read_jsonl_rows` skipped: ``skipped`` messages, each naming file:line and field."""

    rows: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self, path: str | Path) -> str:
        if not self.skipped:
            return f"{path}: {self.rows} rows"
        return f"{path}: {self.rows} rows, {len(self.skipped)} bad lines skipped (first: {self.skipped[0]})"


def read_jsonl_rows(
    path: str | Path,
    parse_row: Callable[[dict[str, Any], str], T],
    error: type[Exception] = ValueError,
    skip_bad_lines: bool = False,
    report: JsonlReport | None = None,
) -> list[T]:
    """``parse_row(obj, "path:line")`` of every line; it raises ``error`` naming the field of a bad row.

    The first bad line raises, unless ``skip_bad_lines``: then bad lines are left out and
    counted in ``report``. A file with no usable row raises either way.
    """
    return collect_rows(
        _iter_jsonl(path, error, MAX_JSONL_LINE_BYTES),
        parse_row,
        error=error,
        skip_bad_lines=skip_bad_lines,
        report=report,
        path=path,
    )


def collect_rows(
    records: Iterable[tuple[str, Any]],
    parse_row: Callable[[Any, str], T],
    error: type[Exception],
    skip_bad_lines: bool,
    report: JsonlReport | None,
    path: str | Path,
    unit: str = "lines",
) -> list[T]:
    """``parse_row(obj, where)`` of every ``(where, obj)`` record (an exception as ``obj``: a record that
    could not be read); the first bad one raises ``error``, unless ``skip_bad_lines``: then it is left out
    and counted in ``report``. No usable record raises either way."""
    report = report if report is not None else JsonlReport()
    rows: list[T] = []
    for where, obj in records:
        try:
            if isinstance(obj, Exception):
                raise obj
            rows.append(parse_row(obj, where))
        except error as exc:
            if not skip_bad_lines:
                raise
            report.skipped.append(str(exc))
    report.rows = len(rows)
    if not rows:
        raise error(f"{path}: no rows" + (f" ({len(report.skipped)} bad {unit} skipped)" if report.skipped else ""))
    return rows


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one line. A torn last line (a writer killed mid-line) is cut off first, so the new
    record starts on a line of its own instead of being glued to the fragment."""
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            start = max(0, size - (1 << 20))
            f.seek(start)
            tail = f.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut >= 0 or start == 0:
                    # cut == -1 and start == 0: the whole file was one torn line
                    f.truncate(start + cut + 1)
                else:
                    # a torn line longer than the tail we read: close it instead
                    f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())


RESUME_EVENT = "resume"


def read_log_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The current rows of a training log (``metrics.jsonl``, ``dynamics.jsonl``, ``rollouts.jsonl``):
    the one way to read them.

    - A torn last line (a process killed mid-write: no final newline, not valid JSON) is
      dropped; any other bad line raises naming ``file:line``.
    - A resumed learner writes ``{"event": "resume", "phase": p, "step": s}`` before it goes on;
      rows of phase p with step > s written before that marker were superseded by the resume
      and are dropped, so each (phase, step) appears once. Markers are not returned.
    """
    return read_log_and_markers(path)[0]


def read_log_and_markers(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the current rows as :func:`read_log_jsonl` returns them, the resume markers in file order),
    from one read of the file: a reader that follows a growing log (the run's tracker) learns from
    the markers which steps were run again, consistently with the rows it got."""
    path = Path(path)
    if not path.is_file():
        return [], []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    # bytes after the last newline
    torn = lines[-1] if lines[-1].strip() else None
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    if torn is not None:
        try:
            obj = json.loads(torn.decode("utf-8"))
            if isinstance(obj, dict):
                # complete record, only the newline is missing
                rows.append(obj)
        except (UnicodeDecodeError, json.JSONDecodeError):
            # torn write: the row was never completed
            pass
    current: list[dict[str, Any]] = []
    markers: list[dict[str, Any]] = []
    for row in rows:
        if row.get("event") == RESUME_EVENT:
            phase, step = row.get("phase"), row.get("step", 0)
            current = [r for r in current if not (r.get("phase") == phase and r.get("step", 0) > step)]
            markers.append(row)
        else:
            current.append(row)
    return current, markers


def cache_root() -> Path:
    """Where polyray caches what it builds (embedded models, engagement models): ``$POLYRAY_CACHE_DIR``
    or ``~/.cache/polyray``."""
    return Path(os.environ.get("POLYRAY_CACHE_DIR", Path.home() / ".cache" / "polyray"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


# the libraries whose log lines a run writes to its log file instead of the terminal (unless --verbose)
LIBRARY_LOGGERS = ("ray", "vllm", "transformers", "torch", "filelock")
LIBRARY_LOG = "library.log"
# the file handler the libraries' loggers write to now (one run's at a time)
_library_handler: list[Any] = []


def route_library_logs(path: str | Path) -> Path:
    """Send the log lines of :data:`LIBRARY_LOGGERS` (Ray's and Serve's INFO and WARNING lines at a run's
    start, vLLM's, transformers') to the file ``path`` instead of the terminal, and turn their progress bars
    off in this process and in the processes a local Ray cluster it starts forks (they inherit the
    environment). Serve sets up its logger at import, so it is imported first. Returns ``path``."""
    import logging
    import sys

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    import ray.serve  # noqa: F401 - configures Serve's logger, which this then reroutes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    earlier = list(_library_handler)
    _library_handler[:] = [handler]
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in LIBRARY_LOGGERS]
    for name in sorted({*LIBRARY_LOGGERS, *names}):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            # the terminal's handlers, and an earlier run's file
            if h in earlier or (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)):
                logger.removeHandler(h)
        # a logger that does not pass its lines up (Serve's) writes the file itself
        if name in LIBRARY_LOGGERS or not logger.propagate:
            logger.addHandler(handler)
            logger.propagate = False
    for old in earlier:
        old.close()
    route_teardown_output(path)
    return path


# where this process's standard error goes once it starts to exit ([] until a run names its log)
_teardown_log: list[Path] = []


def route_teardown_output(path: str | Path) -> None:
    """From this process's exit on (once the handlers registered after this call have run), send its
    standard error to the file ``path``: what the interpreter's teardown prints (a native binding's report of objects it still holds, ``Exception ignored
    in`` a finaliser) is the libraries', not the run's. Called again, the latest path holds."""
    import atexit

    if not _teardown_log:
        # handlers registered before this one (Ray's shutdown, registered at its import; logging's) run
        # after it: their output at exit is the libraries' too
        atexit.register(_stderr_to_teardown_log)
    _teardown_log[:] = [Path(path)]


def _stderr_to_teardown_log() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        fd = os.open(_teardown_log[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # the log's folder is gone: the terminal keeps it
    os.dup2(fd, 2)
    os.close(fd)


def warn(message: str) -> None:
    from rich.markup import escape

    # a message quotes errors and paths, whose brackets are not markup
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


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
