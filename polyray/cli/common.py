"""How every command ends on a user's mistake: one ``error: ...`` line on stderr and exit status 2.

A bad config, bad data or a model that cannot be found is the user's to fix, so it is never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake raised inside the block into :func:`fail`."""
    from polyray.io import ConfigError, DataError
    from polyray.models.source import ModelSourceError

    try:
        yield
    except (ConfigError, DataError, ModelSourceError) as exc:
        fail(str(exc))
