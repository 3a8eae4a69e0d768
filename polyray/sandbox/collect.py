"""Reading a running program's stdout, stderr and status pipe, up to its wall-clock and output limits."""

from __future__ import annotations

import os
import selectors
import subprocess
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Streams:
    """Bytes read so far from the program's stdout/stderr, keeping only the tails."""

    limit: int
    tail: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    totals: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})

    def add(self, which: str, data: bytes) -> None:
        buf = self.out if which == "stdout" else self.err
        self.totals[which] += len(data)
        buf += data
        del buf[: max(0, len(buf) - self.tail)]

    @property
    def over_limit(self) -> bool:
        return max(self.totals.values()) > self.limit


def _pump(
    proc: subprocess.Popen, status_r: int, deadline: float, streams: _Streams, cancel: tuple[threading.Event, ...] = ()
) -> tuple[bytes, str | None]:
    """Read stdout, stderr and the status pipe until all close or a limit is hit.

    Returns (status bytes, limit hit: None, "timeout", "output" or "cancelled").
    """
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(status_r, selectors.EVENT_READ, "status")
    status = bytearray()
    open_streams = 3
    try:
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(status), "timeout"
            if any(event.is_set() for event in cancel):
                return bytes(status), "cancelled"
            for key, _ in sel.select(timeout=min(remaining, 0.1 if cancel else 0.5)):
                fd = key.fd if key.data == "status" else key.fileobj.fileno()
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "status":
                    status += data
                else:
                    streams.add(key.data, data)
                    if streams.over_limit:
                        return bytes(status), "output"
            if proc.poll() is not None:
                # The launcher is gone; stragglers holding the pipes (only possible in
                # rlimits mode) get a short grace, not the whole timeout.
                deadline = min(deadline, time.monotonic() + 0.3)
    finally:
        sel.close()
    return bytes(status), None


def _decode(buf: bytearray) -> str:
    return bytes(buf).decode("utf-8", errors="replace")
