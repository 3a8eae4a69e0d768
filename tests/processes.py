"""Test helper: the processes of this machine whose command line holds a marker (what a sandbox must not leave behind)."""

from __future__ import annotations

import os


def processes_with(marker: str) -> list[str]:
    """PIDs whose /proc cmdline contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(entry)
        except OSError:
            continue
    return found
