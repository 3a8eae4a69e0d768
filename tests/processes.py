"""Test helpers for sandbox containment: the processes whose command line holds a marker (what a sandbox must
not leave behind), and a loopback listener (what it must not reach)."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager


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


@contextmanager
def listener(timeout_s: float = 0.5):
    """A TCP socket listening on a free loopback port: (socket, port); a sandboxed program must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(timeout_s)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()
