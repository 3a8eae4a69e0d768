"""How a run stops: its caller's cancel events, and killing and reaping every process it started."""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from polyray.lifetime import descendants as _descendants
from polyray.lifetime import parent_of as _parent


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(child) for child in f.read().split()}
    # a kernel without CONFIG_PROC_CHILDREN
    except OSError:
        return {child for child in _descendants(pid) if _parent(child) == pid}


def _end(proc: subprocess.Popen, namespaced: bool) -> None:
    """Kill everything the launcher started and reap the launcher, leaving no process and no zombie.

    The launcher itself is left to reap what dies and exit (it is a subreaper: orphans of a double
    fork or ``setsid`` are re-parented to it, not to the host's init, where they would linger as
    zombies). In a PID namespace killing its init, the launcher's child, kills every process in it.
    Without one (``rlimits``) every descendant is frozen first (SIGSTOP: a stopped process cannot
    fork), again until no new one appears, then killed."""
    if proc.poll() is None and namespaced:
        _signal_all(_children(proc.pid), signal.SIGKILL)
    elif proc.poll() is None:
        stopped: set[int] = set()
        for _ in range(1000):
            new = _descendants(proc.pid) - stopped
            if not new:
                break
            _signal_all(new, signal.SIGSTOP)
            stopped |= new
        _signal_all(stopped, signal.SIGKILL)
    try:
        # A namespace of thousands (a fork bomb where RLIMIT_NPROC does not bind: a root service in
        # userns mode) takes seconds to tear down; every process in it is already killed by then.
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()


# Events that stop the runs started in this context (see :func:`cancelled_by`).
_CANCEL: contextvars.ContextVar[tuple[threading.Event, ...]] = contextvars.ContextVar(
    "polyray_sandbox_cancel", default=()
)


@contextmanager
def cancelled_by(event: threading.Event | None) -> Iterator[None]:
    """Runs started inside (this thread, or a thread given a copy of this context) stop when ``event`` is set:
    their processes are killed and the result is status "killed". A cancelled request or a spent budget sets
    it, so no sandbox outlives the work it was for. Nests: any enclosing event stops them too."""
    if event is None:
        yield
        return
    token = _CANCEL.set((*_CANCEL.get(), event))
    try:
        yield
    finally:
        _CANCEL.reset(token)
