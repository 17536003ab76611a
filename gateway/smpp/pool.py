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
import functools
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
        (instead of a task, a timer and a shield per part). A part that finds no bound connector, or
        whose connector goes down before writing it, is re-routed at once the one-by-one way
        (:meth:`submit`) for the time left, keeping its place in line."""
        return await _ManySubmit(self, parts, timeout).run()

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
            if not _connection_lost(result) or deadline - loop.time() <= 0:
                return result
            log.info("smpp %s went down before sending a part; re-routing it", session.name)

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per connector (see :meth:`SmppSession.snapshot`), for /readyz and /metrics."""
        return [session.snapshot() for session in self._configured]


def _connection_lost(result: SubmitResult) -> bool:
    """Not written because its connector went down: another one may take it."""
    return result.outcome == "retry" and result.status_name == CONNECTION_LOST


class _ManySubmit:
    """One :meth:`ConnectorPool.submit_many` call: results are filed as the parts are answered."""

    def __init__(self, pool: ConnectorPool, parts: Sequence[SubmitPart], timeout: float) -> None:
        self.pool = pool
        self.parts = parts
        self.loop = asyncio.get_running_loop()
        timeout = max(0.0, timeout)
        self.deadline = self.loop.time() + timeout
        self.queue_deadline = time.monotonic() + timeout  # PendingSubmit.deadline is monotonic
        self.results: list[SubmitResult | None] = [None] * len(parts)
        self.left = len(parts)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.queued: list[tuple[SmppSession, PendingSubmit]] = []
        self.rerouted: set[asyncio.Task[SubmitResult]] = set()

    async def run(self) -> list[SubmitResult]:
        if not self.parts:
            return []
        for i, part in enumerate(self.parts):
            session = self.pool.pick()
            if session is None:
                self._one_by_one(i, None)
                continue
            item = session.enqueue(part, reroutable=True)
            item.deadline = self.queue_deadline
            self.queued.append((session, item))
            item.future.add_done_callback(functools.partial(self._answered, i, session, item))
        timer = self.loop.call_at(self.deadline, self._give_up)
        try:
            await self.done
        except asyncio.CancelledError:
            for session, item in self.queued:
                item.deadline = -math.inf  # nobody waits for it: never (re)send it
                session.give_up_queued(item)
            for task in self.rerouted:
                task.cancel()
            raise
        finally:
            timer.cancel()
        return [result for result in self.results if result is not None]

    def _answered(
        self, i: int, session: SmppSession, item: PendingSubmit, future: asyncio.Future[SubmitResult]
    ) -> None:
        result = future.result()
        if _connection_lost(result) and self.loop.time() < self.deadline:
            log.info("smpp %s went down before sending a part; re-routing it", session.name)
            self._one_by_one(i, item.order)
        else:
            self._file(i, result)

    def _one_by_one(self, i: int, order: int | None) -> None:
        remaining = self.deadline - self.loop.time()
        task = asyncio.ensure_future(self.pool._submit(self.parts[i], remaining, order))
        self.rerouted.add(task)
        task.add_done_callback(functools.partial(self._rerouted, i))

    def _rerouted(self, i: int, task: asyncio.Task[SubmitResult]) -> None:
        self.rerouted.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if not self.done.done():
                self.done.set_exception(error)
            return
        self._file(i, task.result())

    def _file(self, i: int, result: SubmitResult) -> None:
        self.results[i] = result
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)

    def _give_up(self) -> None:
        for session, item in self.queued:
            session.give_up_queued(item)
