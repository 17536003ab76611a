"""In-process wake-ups for new events: long-polls (``GET /v1/events?wait=``) and the webhook sender.

The database tells the hub what a committed unit of work changed (``Database.on_commit``, topics
such as ``events:<tenant>``), so a waiter wakes as soon as its tenant's event is committed instead
of at its next poll. It is a hint, never the source of truth: waiters always re-read the table, and
keep polling it at a short interval, because events written by another daemon on the same database
do not pass through this process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from gateway.domain import cursors
from gateway.services.errors import InvalidInputError


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listeners: list[Callable[[set[str]], None]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self, topics: Iterable[str]) -> None:
        """Called after a commit (on the loop thread) with the topics it touched."""
        topics = set(topics)
        for topic in topics:
            for waiter in self._waiters.get(topic, ()):
                waiter.set()
        for listener in self._listeners:
            listener(topics)

    def listen(self, listener: Callable[[set[str]], None]) -> None:
        """``listener(topics)`` after every commit that named a topic (the webhook dispatcher)."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def subscribe(self, topic: str) -> Iterator[asyncio.Event]:
        """An Event set when ``topic`` is notified (or the hub closes). Subscribe *before* reading
        the table, so an event committed between the read and the wait is not slept through."""
        waiter = asyncio.Event()
        if self._closed:
            waiter.set()
        self._waiters.setdefault(topic, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(topic)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[topic]

    def close(self) -> None:
        """Shutting down: every waiter returns now, and later ones do not wait."""
        self._closed = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())


async def wait_for(waiter: asyncio.Event, timeout: float) -> bool:
    """True when ``waiter`` was set within ``timeout`` seconds."""
    if timeout <= 0:
        return waiter.is_set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await waiter.wait()
    return waiter.is_set()


def event_cursor(position: tuple[int, int]) -> str:
    """The opaque feed position after an event (``after=`` / ``next``; also in each event)."""
    return cursors.encode("events", list(position))


def parse_event_cursor(cursor: str | None) -> tuple[int, int]:
    """``after=`` as a position; empty or absent: the beginning. Raises InvalidInputError."""
    if not cursor:
        return (0, 0)
    try:
        xid, event_id = cursors.decode("events", cursor, (int, int))
    except cursors.CursorError:
        raise InvalidInputError(
            "after", "is not a cursor of this feed (use next or an event's cursor)"
        ) from None
    return int(xid), int(event_id)


def event_json(
    event_id: int, type_: str, payload: dict[str, Any], created_at: datetime, position: tuple[int, int]
) -> dict[str, Any]:
    """One event as the feed lists it and as a webhook POSTs it: the same object both ways, so a
    receiver that missed something continues the feed from the last event it got
    (``GET /v1/events?after=<its cursor>``)."""
    # ISO 8601 in UTC with "Z", as every other time in the API (pydantic's form).
    created = created_at.isoformat().replace("+00:00", "Z")
    return {
        "id": event_id,
        "type": type_,
        "created_at": created,
        "data": payload,
        "cursor": event_cursor(position),
    }
