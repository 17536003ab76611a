"""``ConnectorPool``: sends each part through one of several connectors (implements ``SmsTransport``).

Routing: smooth weighted round-robin (nginx's) over the connectors that are bound right now, by
``weight``; a connector that is not bound is skipped and its share goes to the others. Each part is
queued on the chosen session as *reroutable*: if that connector goes down while the part still waits for
a window slot, a throttling pause or a token (its ``submit_sm`` not written), the part comes back and is
queued on another bound connector, keeping its place in line (its original arrival order). A part whose
``submit_sm`` was written is never moved nor re-sent (see the duplicate-risk policy in
:mod:`gateway.smpp.session`).

``submit(part, timeout=...)``: ``timeout`` bounds the wait for a route, a window slot and a token. If no
connector is bound during the whole timeout, the outcome is ``no_route`` (retryable, nothing was sent);
bound but still not written at the deadline: ``retry`` (``QUEUE_TIMEOUT``, or ``CONNECTION_LOST`` when
the last connector tried went down just then). Once written, the wait for the ``submit_sm_resp`` is
bounded by the connector's ``response_timeout_seconds`` (then ``unknown``).

:meth:`ConnectorPool.attach` adds a session for as long as it lives: a carrier's ``outbind`` bound back
as a transceiver (:mod:`gateway.smpp.listener`) is one more route, under its connector's name (so its
receipts match); it is not listed in :meth:`ConnectorPool.snapshot` (the listener reports it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.config import SmppConnectorConfig
from gateway.smpp.link import PendingSubmit
from gateway.smpp.session import SmppSession
from gateway.smpp.types import CONNECTION_LOST, NO_ROUTE, SubmitPart, SubmitResult

log = logging.getLogger(__name__)


class ConnectorPool:
    """Several :class:`SmppSession` s behind one ``submit``. Start :meth:`run` to keep them bound."""

    def __init__(self, sessions: Iterable[SmppSession]) -> None:
        self._sessions = tuple(sessions)
        names = [session.name for session in self._sessions]
        if len(set(names)) != len(names):
            raise ValueError(f"connector names must be unique: {names}")
        self._configured = self._sessions
        self._current: dict[SmppSession, int] = dict.fromkeys(self._sessions, 0)
        self._any_bound = asyncio.Event()
        for session in self._sessions:
            session.add_state_listener(self._on_state)

    @classmethod
    def from_config(cls, connectors: Iterable[SmppConnectorConfig], **session_kwargs: Any) -> ConnectorPool:
        """One :class:`SmppSession` per connector; ``session_kwargs`` (``on_deliver``,
        ``on_late_response``, backoff bounds...) go to every session."""
        return cls(SmppSession(config, **session_kwargs) for config in connectors)

    @property
    def sessions(self) -> tuple[SmppSession, ...]:
        return self._sessions

    def session(self, name: str) -> SmppSession:
        for session in self._sessions:
            if session.name == name:
                return session
        raise KeyError(name)

    def attach(self, session: SmppSession) -> None:
        """Route parts through ``session`` too, until :meth:`detach`."""
        self._sessions = (*self._sessions, session)
        self._current[session] = 0
        session.add_state_listener(self._on_state)
        self._on_state(session)

    def detach(self, session: SmppSession) -> None:
        self._sessions = tuple(s for s in self._sessions if s is not session)
        self._current.pop(session, None)
        self._on_state(session)

    def healthy(self) -> list[SmppSession]:
        """The connectors that can take submits now (their submitting bind is ``bound``)."""
        return [session for session in self._sessions if session.is_bound]

    async def run(self, stop: asyncio.Event) -> None:
        """Run every session until ``stop`` is set (each then unbinds)."""
        async with asyncio.TaskGroup() as group:
            for session in self._configured:
                group.create_task(session.run(stop), name=f"smpp-{session.name}")

    def _on_state(self, _session: SmppSession) -> None:
        if any(session.is_bound for session in self._sessions):
            self._any_bound.set()
        else:
            self._any_bound.clear()

    def pick(self) -> SmppSession | None:
        """The next bound connector by smooth weighted round-robin, None if none is bound."""
        healthy = self.healthy()
        if not healthy:
            return None
        total = 0
        best = healthy[0]
        for session in healthy:
            weight = session.config.weight
            total += weight
            self._current[session] += weight
            if self._current[session] > self._current[best]:
                best = session
        self._current[best] -= total
        return best

    async def submit(self, part: SubmitPart, *, timeout: float) -> SubmitResult:
        """Send one part through a bound connector; see the module docstring for outcomes."""
        return await self._submit(part, timeout, None)

    async def submit_many(self, parts: Sequence[SubmitPart], *, timeout: float) -> list[SubmitResult]:
        """:meth:`submit` for many parts at once, results in order: each part is queued at once on
        a connector picked for it, and one timer gives up on all those still queued at the deadline
        (instead of a task, a timer and a shield per part). A part that found no bound connector, or
        whose connector went down before writing it, goes the one-by-one way for the time left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        results: list[SubmitResult | None] = [None] * len(parts)
        later: dict[int, int | None] = {}  # index: the arrival order to keep (None: not queued yet)
        queued: list[tuple[int, SmppSession, PendingSubmit]] = []
        for i, part in enumerate(parts):
            session = self.pick()
            if session is None:
                later[i] = None
            else:
                queued.append((i, session, session.enqueue(part, reroutable=True)))
        if queued:
            await _all_resolved([(session, item) for _, session, item in queued], timeout)
        remaining = deadline - loop.time()
        for i, session, item in queued:
            result = item.future.result()
            if result.outcome == "retry" and result.status_name == CONNECTION_LOST and remaining > 0:
                log.info("smpp %s went down before sending a part; re-routing it", session.name)
                later[i] = item.order
            else:
                results[i] = result
        if later:
            one_by_one = [self._submit(parts[i], remaining, order) for i, order in later.items()]
            for i, result in zip(later, await asyncio.gather(*one_by_one), strict=True):
                results[i] = result
        done = [result for result in results if result is not None]
        assert len(done) == len(parts), "every part has its result"
        return done

    async def _submit(self, part: SubmitPart, timeout: float, order: int | None) -> SubmitResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            session = self.pick()
            if session is None:
                if remaining <= 0:
                    return SubmitResult("no_route", None, None, NO_ROUTE, None)
                try:
                    await asyncio.wait_for(self._any_bound.wait(), remaining)
                except TimeoutError:
                    return SubmitResult("no_route", None, None, NO_ROUTE, None)
                continue
            item = session.enqueue(part, reroutable=True, order=order)
            order = item.order
            result = await session.wait(item, remaining)
            lost = result.outcome == "retry" and result.status_name == CONNECTION_LOST
            if not lost or deadline - loop.time() <= 0:
                return result
            log.info("smpp %s went down before sending a part; re-routing it", session.name)

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per connector (see :meth:`SmppSession.snapshot`), for /readyz and /metrics."""
        return [session.snapshot() for session in self._configured]


async def _all_resolved(items: list[tuple[SmppSession, PendingSubmit]], timeout: float) -> None:
    """Wait until every queued part has its result; parts still queued after ``timeout`` seconds are
    given up (``retry``/``QUEUE_TIMEOUT``), like :meth:`SmppSession.wait` does for one part.
    Cancelled: parts not written yet are withdrawn; the others keep their window slot until
    answered."""
    loop = asyncio.get_running_loop()
    timeout = max(0.0, timeout)
    deadline = time.monotonic() + timeout
    left = 0
    all_done = loop.create_future()

    def one_done(_future: asyncio.Future[SubmitResult]) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not all_done.done():
            all_done.set_result(None)

    for _, item in items:
        item.deadline = deadline
        if not item.future.done():
            left += 1
            item.future.add_done_callback(one_done)
    if left == 0:
        return

    def give_up() -> None:
        for session, item in items:
            session.give_up_queued(item)

    timer = loop.call_later(timeout, give_up)
    try:
        await all_done
    except asyncio.CancelledError:
        for session, item in items:
            item.deadline = -math.inf  # nobody waits for it: never (re)send it
            session.give_up_queued(item)
        raise
    finally:
        timer.cancel()
