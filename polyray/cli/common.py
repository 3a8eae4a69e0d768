"""How every command ends on a user's mistake: one ``error: ...`` line on stderr and exit status 2.

A bad config, bad data (or a custom reward function that misbehaves) or a model that cannot be
found is the user's to fix, so it is never a traceback, also when it was raised in a Ray task,
actor or Ray Train worker and reaches the driver wrapped in Ray's error; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

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
        if any(isinstance(i, BaseException) for i in inner):  # a Ray wrapper: its str() is a traceback
            todo += inner
        elif isinstance(e, (ConfigError, DataError, ModelSourceError)):
            return e
        todo.append(e.__cause__)
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
