"""Heavy imports at a process's start, without the cyclic garbage collector's pauses.

Importing torch, transformers, peft or vLLM allocates millions of objects, and CPython's collector walks
the whole growing heap again and again while they load: about a fifth of such an import's CPU time, none
of it reclaiming anything. :func:`paused_gc` pauses automatic collection for the imports (and an engine's
construction), then freezes what survived (``gc.freeze``: later collections skip those objects, as vLLM
does after its own start), so a process's later work pays for its own objects alone.

:func:`without_sklearn` keeps scikit-learn (with scipy.stats and pandas) out of those imports: transformers
imports it only for assisted generation's confidence threshold, which polyray never uses.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Automatic collection off inside, the surviving heap frozen on leaving; a no-op where it is off already
    (nested, or paused by the caller). Explicit ``gc.collect()`` calls inside still run."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextmanager
def without_sklearn() -> Iterator[None]:
    """scikit-learn reported absent to the imports inside (transformers then skips it: it checks before
    importing), and importable again afterwards; a no-op where it is imported already. Not thread-safe, and a
    process forked inside keeps the absence."""
    if "sklearn" in sys.modules:
        yield
        return
    # find_spec reports a None entry as absent
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
