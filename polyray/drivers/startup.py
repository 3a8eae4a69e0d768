"""A run's start-up trace: when each component was asked for, when its process and its constructor began,
and when it was ready, in seconds from the run's start (``runs/<name>/startup.json``, drawn in the run's
report as a timeline).

Components report their own marks (:func:`polyray.telemetry.startup_marks`: wall-clock times taken in
their process); the driver adds when it asked for them and when it saw them ready. A component the run
did not start (a sweep's shared engines, a resumed run's finished stages) has no entry.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STARTUP_FILE = "startup.json"
# a component's marks, in the order they happen
MARKS = ("asked", "process", "init", "ready")


@dataclass
class StartupTrace:
    """Marks per component, in seconds since ``origin`` (the run's start, wall clock)."""

    origin: float = field(default_factory=time.time)
    components: dict[str, dict[str, float]] = field(default_factory=dict)

    def mark(self, name: str, **marks: float | None) -> None:
        """Record ``name``'s wall-clock marks (``asked``, ``process``, ``init``, ``ready``; None: not known)."""
        unknown = set(marks) - set(MARKS)
        if unknown:
            raise ValueError(f"unknown start-up mark(s) {sorted(unknown)} for {name!r} (known: {', '.join(MARKS)})")
        entry = self.components.setdefault(name, {})
        entry.update({k: round(v - self.origin, 3) for k, v in marks.items() if v is not None})

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """``name`` asked for at the block's start and ready at its end (not marked when the block raises)."""
        asked = time.time()
        yield
        self.mark(name, asked=asked, ready=time.time())

    def add_reported(self, prefix: str, asked: float, reported: list[dict[str, float]]) -> None:
        """Components ``<prefix> 0..n-1`` asked for at ``asked``, with the marks each reported."""
        for i, marks in enumerate(reported):
            self.mark(f"{prefix} {i}", asked=asked, **{k: marks.get(k) for k in ("process", "init", "ready")})

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.components.items(), key=lambda kv: (kv[1].get("asked", kv[1].get("ready", 0.0)), kv[0]))
        return {"origin_unix_s": round(self.origin, 3), "components": dict(ordered)}

    def write(self, out: Path) -> Path:
        path = Path(out) / STARTUP_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def startup_rows(trace: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None, float | None]]:
    """(component, asked, process, init, ready) rows of a written trace, in its order."""
    return [(name, *(marks.get(k) for k in MARKS)) for name, marks in trace.get("components", {}).items()]


def startup_table(trace: dict[str, Any], title: str = "start-up (s from the run's start)"):
    """The trace as a rich table: each component's marks and how long it took from asked to ready."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("component", *MARKS, "asked -> ready"):
        table.add_column(col, justify="left" if col == "component" else "right")

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for name, asked, process, init, ready in startup_rows(trace):
        took = ready - asked if ready is not None and asked is not None else None
        table.add_row(name, cell(asked), cell(process), cell(init), cell(ready), cell(took))
    return table
