"""Ray job entrypoints (``python -m jobs.<name>``): thin drivers over the library."""

from __future__ import annotations

import sys
from collections.abc import Callable


def exit_code(work: Callable[[], object]) -> int:
    """Run ``work``; a user's mistake (bad config, bad data, a model that cannot be found) is one
    ``error: ...`` line on stderr and exit status 2, not a traceback."""
    from polyray.io import ConfigError, DataError
    from polyray.models.source import ModelSourceError

    try:
        work()
    except (ConfigError, DataError, ModelSourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
