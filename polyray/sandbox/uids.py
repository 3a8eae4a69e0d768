"""Throw-away uids for ``uid+namespaces`` runs: each sandbox of this process gets one no other holds."""

from __future__ import annotations

import random
import threading

# systemd reserves this range for dynamic users; picking a fresh uid per run means two
# sandboxes never share a process count or can signal each other.
_DYNAMIC_UID_RANGE = (61184, 65519)


class SandboxBusyError(RuntimeError):
    """Every sandbox uid of this process is in use: the run fails at once instead of waiting."""


class _UidPool:
    """Hands out dynamic uids not in use by another sandbox of this process; none free is
    :class:`SandboxBusyError` at once (a caller that leaked or flooded them must not block the rest)."""

    def __init__(self, first: int = _DYNAMIC_UID_RANGE[0], last: int = _DYNAMIC_UID_RANGE[1]) -> None:
        self._lock = threading.Lock()
        self._range = (first, last)
        self._busy: set[int] = set()

    def acquire(self) -> int:
        with self._lock:
            size = self._range[1] - self._range[0] + 1
            if len(self._busy) >= size:
                raise SandboxBusyError(f"all {size} sandbox uids are in use; try again later")
            # random, so uids are not reused in order; at least one is free
            while True:
                uid = random.randint(*self._range)
                if uid not in self._busy:
                    self._busy.add(uid)
                    return uid

    def in_use(self) -> int:
        with self._lock:
            return len(self._busy)

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)
