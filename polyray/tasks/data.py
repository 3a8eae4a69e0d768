"""The rows of a ``replies``/``creative`` data set, whatever shape the user's file has.

A row becomes one :class:`JsonlRow` (a prompt, an optional system prompt and earlier turns,
an optional reference response and engagement). Three shapes are read, detected per row
(``task.format: auto``) or declared (``messages``, ``prompt_completion``, ``prompt_response``):

- conversational, TRL's and the chat APIs' ``{"messages": [{"role", "content"}, ...]}``: an
  optional ``system`` turn, then user/assistant turns; the final assistant turn is the reference
  and everything before it is the prompt (a conversation ending on a user turn has none);
- TRL's ``{"prompt", "completion"}``, either strings or (conversational) lists of turns;
- polyray's own ``{"prompt", "response"?, "engagement"?}``.

``task.fields`` maps these names to the file's own column names (``{prompt: question,
response: answer}``), so a data set never has to be rewritten to be trained on.

JSONL is read by :func:`polyray.io.read_jsonl_rows` rather than by ``datasets``: it reads
line by line, so a bad line is reported as ``file:line`` (or skipped and counted with
``skip_bad_lines``) where a columnar reader would fail on the whole file with a type error.
Parquet, CSV and Arrow files, and hub data sets (``hf://datasets/owner/name``), are read with
the ``datasets`` library, and their rows are reported as ``file row N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyray.io import DataError, JsonlReport, collect_rows, read_jsonl_rows

HUB_PREFIX = "hf://datasets/"
COLUMNAR_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
SHAPES = "{messages: [{role, content}, ...]}, {prompt, completion} or {prompt, response?, engagement?}"


class JsonlDataError(DataError):
    """A data file that cannot be used; the message names the file and line (or row)."""


@dataclass(frozen=True)
class JsonlRow:
    # the text the task's template formats (earlier turns joined before the last user turn)
    prompt: str
    response: str | None
    engagement: float | None
    # 1-based line of a JSONL file, row of a columnar one
    line: int
    system: str | None = None
    # (role, content) of the prompt's conversation, system excluded
    turns: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple:
        """What makes two rows the same evaluation prompt."""
        return (self.system, self.turns or self.prompt)


def is_hub(path: str) -> bool:
    return path.startswith(HUB_PREFIX)


def read_rows(
    path: str | Path,
    fmt: str = "auto",
    fields: dict[str, str] | None = None,
    skip_bad_lines: bool = False,
    report: JsonlReport | None = None,
) -> list[JsonlRow]:
    """Every row of ``path`` (JSONL, parquet, CSV, Arrow or a hub data set) as a :class:`JsonlRow`.

    The first bad row raises naming ``file:line`` (``file row N``) and what is expected, or, with
    ``skip_bad_lines``, is left out and counted in ``report``."""
    fields = fields or {}
    parse = lambda obj, where: parse_row(obj, where, fmt, fields)  # noqa: E731
    path_s = str(path)
    kind = "hub" if is_hub(path_s) else COLUMNAR_SUFFIXES.get(Path(path_s).suffix.lower())
    if kind is None:
        return read_jsonl_rows(path_s, parse, JsonlDataError, skip_bad_lines, report)
    records = ((f"{path_s} row {i}", obj) for i, obj in enumerate(_columnar_records(path_s, kind), start=1))
    return collect_rows(records, parse, JsonlDataError, skip_bad_lines, report, path_s, unit="rows")


def _columnar_records(path: str, kind: str):
    """The rows of a parquet/CSV/Arrow file or hub data set as dicts, through ``datasets``."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of polyray
        raise JsonlDataError(f"{path}: reading {kind} needs the 'datasets' package (pip install datasets)") from None
    datasets.disable_progress_bars()
    try:
        if kind == "hub":
            repo, _, split = path[len(HUB_PREFIX) :].partition(":")
            data = datasets.load_dataset(repo, split=split or "train")
        else:
            if not Path(path).is_file():
                raise JsonlDataError(f"{path}: no such file")
            data = datasets.load_dataset(kind, data_files=path, split="train")
    except JsonlDataError:
        raise
    # datasets raises many kinds (pyarrow, fsspec, hub errors): each is the user's file
    except Exception as exc:
        raise JsonlDataError(
            f"{path}: cannot be read as {kind}: {type(exc).__name__}: {exc}".replace("\n", " ")
        ) from None
    return iter(data)


def local_data(config):
    """``config`` (a task's settings) with a data file given as a reference into cluster.storage (what a
    run's workers get) replaced by this node's copy of it (:func:`polyray.storage.local_path`)."""
    from polyray.storage import is_stored, local_path

    if is_stored(config.path):
        return config.model_copy(update={"path": local_path(config.path)})
    return config


def data_fingerprint(path: str) -> str:
    """What identifies the data's content (cache keys): the file's SHA-256, a hub data set's fingerprint."""
    if is_hub(path):
        import hashlib

        return hashlib.sha256(path.encode()).hexdigest()
    from polyray.io import file_sha256

    return file_sha256(path)


# ----------------------------------------------------------------------------- one row


def _line(where: str) -> int:
    tail = where.rsplit(" row ", 1)[1] if " row " in where else where.rsplit(":", 1)[1]
    return int(tail)


def _present(obj: dict, name: str) -> bool:
    value = obj.get(name)
    # CSV/parquet nulls
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def parse_row(obj: dict[str, Any], where: str, fmt: str = "auto", fields: dict[str, str] | None = None) -> JsonlRow:
    """``obj`` as a row: its shape declared by ``fmt`` or detected; ``fields`` maps names to the file's keys."""
    fields = fields or {}
    name = {k: fields.get(k, k) for k in ("messages", "prompt", "completion", "response", "engagement", "system")}
    if fmt == "auto":
        if _present(obj, name["messages"]):
            fmt = "messages"
        elif _present(obj, name["completion"]):
            fmt = "prompt_completion"
        else:
            fmt = "prompt_response"
    engagement = _engagement(obj, name["engagement"], where)
    system = _optional_text(obj, name["system"], where)
    if fmt == "messages":
        turns = _turns(obj.get(name["messages"]), name["messages"], where)
        row = _from_turns(turns, where, engagement)
    else:
        answer = name["completion"] if fmt == "prompt_completion" else name["response"]
        row = _from_prompt(obj, name["prompt"], answer, where, engagement, required=fmt == "prompt_completion")
    if system is not None and row.system is None:
        row = JsonlRow(row.prompt, row.response, row.engagement, row.line, system, row.turns)
    return row


def _shape_hint(obj: dict) -> str:
    keys = ", ".join(map(str, obj)) or "none"
    return f" (a row is {SHAPES}; task.fields maps other column names; this row's keys: {keys})"


def _engagement(obj: dict, key: str, where: str) -> float | None:
    if not _present(obj, key):
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JsonlDataError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _optional_text(obj: dict, key: str, where: str) -> str | None:
    if not _present(obj, key):
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise JsonlDataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value if value.strip() else None


def _turns(value: Any, key: str, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise JsonlDataError(f"{where}: {key!r} must be a non-empty list of {{role, content}} turns")
    turns = []
    for i, turn in enumerate(value):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise JsonlDataError(
                f"{where}: {key}[{i}] must be {{role: system|user|assistant, content: str}}, got {turn!r}"[:300]
            )
        turns.append((role, content))
    return turns


def _from_turns(turns: list[tuple[str, str]], where: str, engagement: float | None, key: str = "messages") -> JsonlRow:
    """A conversation: system turns first, the final assistant turn (if any) the reference."""
    system = [c for r, c in turns if r == "system"]
    if any(r == "system" for r, _ in turns[len(system) :]):
        raise JsonlDataError(f"{where}: {key!r}: a system turn must come before the user and assistant turns")
    rest = turns[len(system) :]
    response = None
    if rest and rest[-1][0] == "assistant":
        response = rest[-1][1]
        rest = rest[:-1]
        if not response.strip():
            raise JsonlDataError(f"{where}: {key!r}: the final assistant turn (the reference) is empty")
    if not rest or rest[-1][0] != "user" or not rest[-1][1].strip():
        raise JsonlDataError(
            f"{where}: {key!r} must end with a non-empty user turn, optionally followed by the assistant's reply"
        )
    text = rest[-1][1] if len(rest) == 1 else "\n".join(c for _, c in rest)
    return JsonlRow(text, response, engagement, _line(where), "\n".join(system) or None, tuple(rest))


def _from_prompt(
    obj: dict, prompt_key: str, answer_key: str, where: str, engagement: float | None, required: bool
) -> JsonlRow:
    prompt = obj.get(prompt_key)
    # TRL's conversational prompt/completion
    if isinstance(prompt, list):
        turns = _turns(prompt, prompt_key, where)
        answer = obj.get(answer_key)
        if isinstance(answer, list):
            turns += _turns(answer, answer_key, where)
        elif answer is not None:
            turns.append(("assistant", answer if isinstance(answer, str) else ""))
        return _from_turns(turns, where, engagement, prompt_key)
    if not isinstance(prompt, str) or not prompt.strip():
        raise JsonlDataError(f"{where}: {prompt_key!r} must be a non-empty string" + _shape_hint(obj))
    response = obj.get(answer_key) if _present(obj, answer_key) else None
    if response is None and required:
        raise JsonlDataError(f"{where}: no {answer_key!r} (format prompt_completion needs one on every row)")
    if response is not None and not isinstance(response, str):
        raise JsonlDataError(f"{where}: {answer_key!r} must be a string, got {type(response).__name__}")
    if response is not None and not response.strip():
        raise JsonlDataError(f"{where}: {answer_key!r} is empty (leave the key out for a prompt without a reference)")
    return JsonlRow(prompt, response, engagement, _line(where))
