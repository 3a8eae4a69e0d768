"""A run's outputs with its timings left out: what two runs of one config and seed on one machine must share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# wall-clock readings, and the Ray node ids the sync canary ran on: they differ between two equal runs
VOLATILE_KEYS = ("time", "canary_nodes")
VOLATILE_SUFFIXES = ("_s",)


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: without_timings(v)
            for k, v in value.items()
            if k not in VOLATILE_KEYS and not k.endswith(VOLATILE_SUFFIXES)
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def log_rows(path: Path) -> list[dict[str, Any]]:
    """A step log's rows (metrics.jsonl, dynamics.jsonl) without timings."""
    return [without_timings(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def evaluations(out: Path) -> dict[str, Any]:
    """results.json's stage evaluations (the test table and the per-prompt rows) without timings."""
    return without_timings(json.loads((out / "results.json").read_text())["phases"])
