"""How every command ends: on a user's mistake one ``error: ...`` line on stderr and exit status 2;
on Ctrl-C, within a bounded time (:func:`bounded_interrupt`).

A bad config, bad data (or a custom reward function that misbehaves) or a model that cannot be
found is the user's to fix, so it is never a traceback, also when it was raised in a Ray task,
actor or Ray Train worker and reaches the driver wrapped in Ray's error; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def user_error_in(exc: BaseException | None) -> BaseException | None:
    """The user's mistake ``exc`` is or carries: through a Ray task's or actor's error (``cause``) and
    Ray Train's (a worker's exception, kept with its traceback text; the controller's)."""
    from polyray.io import ConfigError, DataError
    from polyray.models.source import ModelSourceError

    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = [getattr(e, "cause", None), getattr(e, "_base_exc", None), getattr(e, "controller_failure", None)]
        inner += list(getattr(e, "worker_failures", {}).values())
        # a Ray wrapper: its str() is a traceback
        if any(isinstance(i, BaseException) for i in inner):
            todo += inner
        elif isinstance(e, (ConfigError, DataError, ModelSourceError)):
            return e
        else:
            todo.append(_init_error(e))
        todo.append(e.__cause__)
    return None


def _init_error(exc: BaseException) -> BaseException | None:
    """The user's mistake an actor's constructor raised, rebuilt from ``exc``: Ray's error for an actor whose
    creation failed keeps only the text of the constructor's traceback, whose last line is
    ``module.Class: message``; None when that class is not one of polyray's."""
    import importlib
    import re

    if not getattr(exc, "actor_init_failed", False):
        return None
    lines = str(exc).strip().splitlines()
    found = re.match(r"(polyray(?:\.\w+)+)\.(\w+): (.+)$", lines[-1].strip()) if lines else None
    if found is None:
        return None
    module, name, message = found.groups()
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    try:
        return cls(message)
    # a constructor that takes more than the message
    except TypeError:
        return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake raised inside the block (or inside Ray, see :func:`user_error_in`) into :func:`fail`."""
    try:
        yield
    except Exception as exc:
        mistake = user_error_in(exc)
        if mistake is None:
            raise
        fail(str(mistake))


# Ctrl-C to a forced stop: the terminal is back within half a minute
STOP_GRACE_S = 25.0


@contextmanager
def bounded_interrupt(grace_s: float | None = None) -> Iterator[None]:
    """Ctrl-C that gives the terminal back, around a command that starts processes (a local Ray
    cluster, vLLM engines, Serve). The first SIGINT raises ``KeyboardInterrupt`` in the main thread, as
    Python's own handler does, so the command cleans up (its services, rollout pool and Ray stop);
    once the block is left, Ray is shut down here, and whatever of the process tree as it stood at the
    Ctrl-C still runs (a worker a shutdown orphaned) is killed. When that is not done within
    ``grace_s`` (default :data:`STOP_GRACE_S`), or at a second SIGINT, every process this one started is SIGKILLed
    (:func:`polyray.lifetime.kill_descendants`) and it exits with status 130 at once. A cluster the
    command only joined is not below it and is left alone. Outside the main thread: a no-op.

    Ray Tune's own SIGINT handler (a graceful stop of the experiment, unbounded) gives way to this one:
    a sweep's state is saved as its trials go, so ``polyray sweep --resume`` continues it."""
    from polyray import lifetime

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # read at the call: a test may shorten it
    grace_s = STOP_GRACE_S if grace_s is None else grace_s
    # at the first Ctrl-C: {pid: start time}
    tree: dict[int, int | None] = {}
    interrupted = threading.Event()

    def force(reason: str) -> None:
        killed = lifetime.kill_descendants(also=tree)
        sys.stderr.write(f"\n{reason}: killed the {len(killed)} process(es) this command started\n")
        sys.stderr.flush()
        os._exit(130)

    def deadline() -> None:
        time.sleep(grace_s)
        force(f"still stopping {grace_s:g} s after Ctrl-C")

    def on_sigint(signum, frame) -> None:
        if interrupted.is_set():
            force("stopped at once (Ctrl-C again)")
        interrupted.set()
        tree.update({pid: lifetime.start_time(pid) for pid in lifetime.descendants(os.getpid())})
        threading.Thread(target=deadline, name="polyray-stop-deadline", daemon=True).start()
        sys.stderr.write(f"\ninterrupted: stopping (at most {grace_s:g} s; Ctrl-C again to stop at once)\n")
        sys.stderr.flush()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    try:
        yield
    finally:
        # the handler stays for the rest of the exit: a second Ctrl-C still forces
        if interrupted.is_set():
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                from polyray.cluster import release_cluster

                # before the shutdown: withdrawing the request needs the connection
                release_cluster()
                ray.shutdown()
            # what the shutdown left running: nothing, or its orphans
            lifetime.kill_descendants(also=tree)
        else:
            signal.signal(signal.SIGINT, previous)
