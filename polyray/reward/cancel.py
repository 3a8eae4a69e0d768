"""Cancelled requests stop their work: each caller's items carry its cancel event down to the sandboxes.

A request to the reward service can end before its scores are ready: the client disconnects,
Serve's request timeout passes, the service's own deadline passes, or the learner's handle call
is cancelled. Its scoring runs in worker threads, which asyncio cannot cancel; so each
:class:`~polyray.reward.scorer.ScoreJob` has a ``threading.Event`` that :func:`await_job` sets
when the awaiting coroutine is cancelled or times out. Items of several callers can be merged
into one scoring call, so the event travels per item: :func:`items_cancelled_by` maps each item
to its caller's event for the duration of the call, and a reward that starts processes per item
(``code_exec``) runs each under :func:`polyray.sandbox.cancelled_by` of :func:`cancel_event`, so
the sandboxes of a cancelled caller are killed (and its items not yet started never start)
while the other callers' items go on.

Context variables carry the mapping: a reward that scores items in its own threads hands them
the caller's context (:func:`in_context`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_ITEM_EVENTS: contextvars.ContextVar[dict[int, threading.Event]] = contextvars.ContextVar(
    "polyray_reward_item_events", default={}
)


@contextmanager
def items_cancelled_by(pairs: Iterable[tuple[Any, threading.Event | None]]) -> Iterator[None]:
    """While inside, :func:`cancel_event` of each item (by identity) is its event."""
    events = {**_ITEM_EVENTS.get(), **{id(item): event for item, event in pairs if event is not None}}
    token = _ITEM_EVENTS.set(events)
    try:
        yield
    finally:
        _ITEM_EVENTS.reset(token)


def cancel_event(item: Any) -> threading.Event | None:
    """The event that cancels ``item``'s scoring, None when nothing can."""
    return _ITEM_EVENTS.get().get(id(item))


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run in a copy of the caller's context, for a thread pool's ``map`` (threads start with an empty one)."""
    context = contextvars.copy_context()
    return lambda *args: context.copy().run(fn, *args)


async def await_job(work: Awaitable[T], cancel: threading.Event, timeout_s: float | None = None) -> T:
    """``await work``; when the caller is cancelled or ``timeout_s`` passes (``TimeoutError``), set ``cancel``
    first, so the threads doing the work stop their sandboxes."""
    try:
        return await asyncio.wait_for(work, timeout_s)
    except (asyncio.CancelledError, asyncio.TimeoutError):
        cancel.set()
        raise
