"""One SMPP connector: a ``transceiver`` bind, or a ``transmitter`` + ``receiver`` pair.

Each connection (``Link``) goes ``disconnected -> connecting -> binding -> bound -> unbinding``. Framing
is ours: ``readexactly`` of the 16-byte header, then of ``command_length - 16``; a bad length loses the
framing and resets the connection. A writer task sends what is queued, answers (``enquire_link_resp``,
``deliver_sm_resp``, ``generic_nack``...) before requests. Requests wait in a ``{sequence: future}`` map.

Sending (the bind that carries submits): parts wait in one queue ordered by arrival (``PendingSubmit.order``,
global across sessions so a re-routed part keeps its place). The sender takes a window slot (a semaphore of
``window``), waits while throttled, takes a token, then writes the head part. Token bucket: ``tps`` parts
per second (0 = unlimited) on the monotonic clock, burst ``max(1, min(tps, window))`` unless ``tps_burst``
is given: never more than the window, nor more than one second's worth. ``submit_sm_resp``:

- ``ESME_ROK`` -> ``ok`` with the message id; any other status or a ``generic_nack`` -> ``failed``;
- ``ESME_RTHROTTLED`` / ``ESME_RMSGQFUL``: the part goes back into the queue at its original place (so it
  is re-sent before any newer part) and all submits of this session pause for a jittered exponential
  backoff (``throttle_backoff_*``, or the longer ``queue_full_backoff_*``) growing with consecutive
  rejections (reset by an ``ESME_ROK``); after ``max_transient_retries`` re-sends of the same part it
  is returned as ``retry`` instead.

Duplicate-risk policy: once a part's ``submit_sm`` was written to the socket, this layer never sends it
again. No ``submit_sm_resp`` within ``response_timeout_seconds`` -> outcome ``unknown`` (the window slot is
freed, the connection stays up) and the sequence is remembered for ``late_response_seconds``: a late
response calls ``on_late_response(seq, part.ref, message_id, status)`` instead of being a protocol error.
A connection lost after the write is ``unknown`` too. The caller (the job layer) decides whether an unknown
part is resubmitted (duplicate risk) or not (loss risk). Parts not yet written are safe: ``retry`` (see
:mod:`gateway.smpp.types` for the exact cases), or kept queued across a reconnect.

Liveness: after ``enquire_link_seconds`` without receiving anything, send ``enquire_link``; no answer within
``response_timeout_seconds`` resets the connection (missing submit responses never do). The SMSC's
``enquire_link`` is answered at once. Reconnect: equal-jitter exponential backoff between
``reconnect_min_seconds`` and ``reconnect_max_seconds`` (``rng`` injectable), reset after a bind succeeds.
Shutdown (``stop`` set): stop sending, wait briefly for outstanding responses and inbound callbacks,
``unbind``, wait up to ``unbind_timeout_seconds`` for ``unbind_resp``, close.

Inbound ``deliver_sm``/``data_sm`` go to ``await on_deliver(connector_name, DeliverSm)``; the
``deliver_sm_resp``/``data_sm_resp`` is sent only after it returns (``ESME_ROK``), with ``ESME_RX_T_APPN``
(the SMSC redelivers) when it raises or takes longer than ``deliver_timeout_seconds``. Without
``on_deliver`` they are acknowledged and dropped.

A session may also run over a connection a carrier opened to our listener
(:meth:`SmppSession.serve_connection`, used by :mod:`gateway.smpp.listener`): after an ``outbind`` we send
the bind ourselves, after the carrier's bind we start bound. Everything after the bind is the same code
(:class:`~gateway.smpp.link.Link`); there is no reconnect (the carrier connects again). Such sessions may
accept ``submit_sm`` as inbound messages (``accept_submit``; otherwise ``submit_sm_resp``
``ESME_RINVCMDID``) and bound the inbound messages processed at once (``max_inbound``; the excess is
refused ``ESME_RX_T_APPN``, or ``ESME_RTHROTTLED`` for a ``submit_sm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from gateway.config import SmppConnectorConfig
from gateway.smpp.codec import (
    ESME_RMSGQFUL,
    ESME_ROK,
    ESME_RTHROTTLED,
    ESME_RX_T_APPN,
    BindMode,
    Pdu,
    SequenceGenerator,
    encode_message_resp,
    encode_submit_sm,
    status_name,
    udh_to_sar,
)
from gateway.smpp.errors import PduEncodeError
from gateway.smpp.link import Link, PendingSubmit, backoff_delay
from gateway.smpp.types import (
    CONNECTION_LOST,
    ENCODE_ERROR,
    QUEUE_TIMEOUT,
    SHUTDOWN,
    DeliverSm,
    SubmitOutcome,
    SubmitPart,
    SubmitResult,
)

log = logging.getLogger(__name__)

State = Literal["disconnected", "connecting", "binding", "bound", "unbinding"]
OnDeliver = Callable[[str, DeliverSm], Awaitable[None]]
OnLateResponse = Callable[[int, Any, "str | None", int], "Awaitable[None] | None"]

RATE_WINDOW_SECONDS = 10.0  # snapshot()["submit_rate"] averages over this
_ORDER = itertools.count()  # arrival order of parts, shared by all sessions


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; ``rate <= 0`` never limits."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def take(self) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0 - 1e-9:  # float sums of refills land just under 1.0
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate


class SmppSession:
    """One ``[[smpp.connectors]]`` entry. Start :meth:`run`; :meth:`submit` from anywhere on the loop."""

    def __init__(
        self,
        config: SmppConnectorConfig,
        *,
        on_deliver: OnDeliver | None = None,
        on_late_response: OnLateResponse | None = None,
        rng: random.Random | None = None,
        reconnect_min_seconds: float = 1.0,
        reconnect_max_seconds: float = 60.0,
        connect_timeout_seconds: float = 10.0,
        throttle_backoff_min_seconds: float = 0.2,
        throttle_backoff_max_seconds: float = 5.0,
        queue_full_backoff_min_seconds: float = 2.0,
        queue_full_backoff_max_seconds: float = 60.0,
        max_transient_retries: int = 5,
        tps_burst: float | None = None,
        deliver_timeout_seconds: float = 10.0,
        late_response_seconds: float = 600.0,
        unbind_timeout_seconds: float = 2.0,
        modes: tuple[BindMode, ...] | None = None,
        accept_submit: bool = False,
        max_inbound: int | None = None,
        message_ids: Callable[[], str] | None = None,
    ) -> None:
        """``modes`` overrides the binds ``config.bind`` implies (a listener session has one);
        ``accept_submit``, ``max_inbound``: see the module docstring; ``message_ids`` makes the
        message id of an accepted ``submit_sm`` (default: a counter)."""
        self.config = config
        self.accept_submit = accept_submit
        self.max_inbound = max_inbound
        counter = itertools.count(1)
        self._message_ids = message_ids or (lambda: f"{next(counter):x}")
        self.name = config.name
        self._on_deliver = on_deliver
        self._on_late_response = on_late_response
        self._rng = rng or random.Random()
        self.reconnect_backoff = (reconnect_min_seconds, reconnect_max_seconds)
        self.throttle_backoff = (throttle_backoff_min_seconds, throttle_backoff_max_seconds)
        self.queue_full_backoff = (queue_full_backoff_min_seconds, queue_full_backoff_max_seconds)
        self.connect_timeout = connect_timeout_seconds
        self.max_transient_retries = max_transient_retries
        self.deliver_timeout = deliver_timeout_seconds
        self.late_response_seconds = late_response_seconds
        self.unbind_timeout = unbind_timeout_seconds
        burst = tps_burst if tps_burst is not None else max(1.0, min(config.tps, config.window))
        self._bucket = TokenBucket(config.tps, burst)
        default: tuple[BindMode, ...] = (
            ("transceiver",) if config.bind == "transceiver" else ("transmitter", "receiver")
        )
        self._modes = modes or default
        self._states: dict[BindMode, State] = dict.fromkeys(self._modes, "disconnected")
        self._links: dict[BindMode, Link | None] = dict.fromkeys(self._modes)
        self._seq = SequenceGenerator()
        self._queue: list[PendingSubmit] = []  # heap by order
        self._queued = 0
        self._queue_event = asyncio.Event()
        self._paused_until = 0.0
        self._transient_streak = 0
        self._listeners: list[Callable[[SmppSession], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._submit_times: deque[float] = deque()
        self._running = False
        self.last_error: str | None = None
        self.submitted = self.acked = self.throttled = self.queue_full = self.failed = 0
        self.unknown = self.late_responses = self.delivered = self.reconnects = self.bind_failures = 0
        self.refused_inbound = 0

    # ---- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """State of the bind that carries submits (the transceiver, or the transmitter)."""
        return self._states[self._modes[0]]

    @property
    def receiver_state(self) -> State | None:
        """State of the receiver bind in ``transmitter_receiver`` mode, else None."""
        return self._states.get("receiver")

    @property
    def is_bound(self) -> bool:
        return self.state == "bound"

    def add_state_listener(self, listener: Callable[[SmppSession], None]) -> None:
        """``listener(session)`` is called (synchronously) after every bind state change."""
        self._listeners.append(listener)

    def _set_state(self, mode: BindMode, state: State) -> None:
        self._states[mode] = state
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:
                log.exception("smpp %s: state listener failed", self.name)

    def _error(self, message: str) -> None:
        message = message.removeprefix(f"{self.name}: ")  # our errors name the connector too
        self.last_error = message
        log.warning("smpp %s: %s", self.name, message)

    # ---- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the bind(s) up until ``stop`` is set, then unbind; parts still queued become ``retry``."""
        if self._running:
            raise RuntimeError(f"smpp session {self.name} is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                for mode in self._modes:
                    group.create_task(self._link_loop(mode, stop), name=f"smpp-{self.name}-{mode}")
        finally:
            self._running = False
            for item in self._queue:
                self._resolve(item, "retry", reason=SHUTDOWN)
            self._queue.clear()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stop: asyncio.Event,
        *,
        send_bind: bool,
        sends: bool | None = None,
    ) -> bool:
        """Run this session's one bind (``modes[0]``) over an already-connected stream, once: no
        reconnect. ``send_bind``: we send ``bind_<mode>`` (after an ``outbind``); else the peer's
        bind was answered already. ``sends``: the link carries our submits (default: not a
        receiver). Closes the stream; True if it was bound."""
        if self._running:
            raise RuntimeError(f"smpp session {self.name} is already running")
        self._running = True
        mode = self._modes[0]
        link = self._links[mode] = Link(self, mode, sends=sends)
        try:
            return await link.run(reader, writer, stop, send_bind=send_bind)
        finally:
            self._links[mode] = None
            self._running = False
            for item in self._queue:
                self._resolve(item, "retry", reason=SHUTDOWN)
            self._queue.clear()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _link_loop(self, mode: BindMode, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            link = self._links[mode] = Link(self, mode)
            try:
                bound = await link.serve(stop)
            finally:
                self._links[mode] = None
            if stop.is_set():
                break
            attempt = 0 if bound else attempt + 1
            delay = backoff_delay(attempt, *self.reconnect_backoff, self._rng)
            log.info("smpp %s: %s reconnecting in %.2fs", self.name, mode, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            self.reconnects += 1

    def _link_down(self, link: Link) -> None:
        for item in link.inflight.values():
            if item.sent:
                self.unknown += 1
                self._resolve(item, "unknown", reason=CONNECTION_LOST)
            elif item.reroutable:
                self._resolve(item, "retry", reason=CONNECTION_LOST)
            else:
                self._requeue(item)  # never written: goes out after the reconnect
        link.inflight.clear()
        if link.sends:
            for item in self._queue:
                if item.reroutable and item.state == "queued":
                    self._resolve(item, "retry", reason=CONNECTION_LOST)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("smpp %s: background task failed", self.name, exc_info=exc)

    # ---- submitting -------------------------------------------------------------------------------

    async def submit(self, part: SubmitPart, *, timeout: float) -> SubmitResult:
        """Send one part through this connector. ``timeout`` bounds the wait for the bind, a window slot
        and a token (then ``retry``/``QUEUE_TIMEOUT``); once written, the wait for the response is bounded
        by ``response_timeout_seconds`` (then ``unknown``). Parts survive reconnects while queued."""
        return await self.wait(self.enqueue(part), timeout)

    def enqueue(
        self, part: SubmitPart, *, reroutable: bool = False, order: int | None = None
    ) -> PendingSubmit:
        """Queue a part (for :meth:`wait`). ``reroutable``: when the bind goes down before the part is
        written, resolve it ``retry``/``CONNECTION_LOST`` (the pool moves it) instead of keeping it."""
        item = PendingSubmit(part, next(_ORDER) if order is None else order, reroutable)
        try:
            item.raw = encode_submit_sm(udh_to_sar(part) if self.config.long_messages == "sar" else part)
        except PduEncodeError as exc:
            log.warning("smpp %s: cannot encode part: %s", self.name, exc)
            self.failed += 1
            self._resolve(item, "failed", reason=ENCODE_ERROR)
            return item
        if reroutable and not self.is_bound:
            self._resolve(item, "retry", reason=CONNECTION_LOST)
            return item
        if len(self._queue) > 64 and len(self._queue) > 2 * self._queued:  # drop resolved leftovers
            self._queue = [queued for queued in self._queue if queued.state == "queued"]
            heapq.heapify(self._queue)
        self._requeue(item)
        return item

    async def wait(self, item: PendingSubmit, timeout: float) -> SubmitResult:
        """The result of an :meth:`enqueue` d part. Not written within ``timeout`` (or due to go back into
        the queue after it, e.g. throttled) -> ``retry``/``QUEUE_TIMEOUT``. Cancelling the caller
        withdraws the part unless it is in flight."""
        timeout = max(0.0, timeout)
        item.deadline = time.monotonic() + timeout
        # At the deadline a part still queued is given up (one timer: this runs once per part).
        timer = asyncio.get_running_loop().call_later(timeout, self.give_up_queued, item)
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.deadline = -math.inf  # nobody waits for it: never (re)send it
            self.give_up_queued(item)
            raise
        finally:
            timer.cancel()

    def give_up_queued(self, item: PendingSubmit) -> None:
        """Resolve ``item`` ``retry``/``QUEUE_TIMEOUT`` if it still waits in the queue (not written)."""
        if item.state == "queued":
            self._resolve(item, "retry", reason=QUEUE_TIMEOUT)

    def _requeue(self, item: PendingSubmit) -> None:
        if item.timer is not None:
            item.timer.cancel()
        if time.monotonic() >= item.deadline:  # throttled or cut off after its caller's timeout
            self._resolve(item, "retry", reason=QUEUE_TIMEOUT)
            return
        item.state, item.sent = "queued", False
        heapq.heappush(self._queue, item)
        self._queued += 1
        self._queue_event.set()

    def _resolve(
        self,
        item: PendingSubmit,
        outcome: SubmitOutcome,
        *,
        message_id: str | None = None,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        if item.state == "done":
            return
        if item.state == "queued":
            self._queued -= 1
        item.state = "done"
        if item.timer is not None:
            item.timer.cancel()
        name = reason if status is None else status_name(status)
        if not item.future.done():
            item.future.set_result(SubmitResult(outcome, message_id, status, name, self.name))

    async def _next_item(self) -> PendingSubmit:
        """Wait for a queued part, the end of a throttling pause and a token; pop the oldest part."""
        while True:
            while self._queue and self._queue[0].state != "queued":
                heapq.heappop(self._queue)
            if not self._queue:
                self._queue_event.clear()
                await self._queue_event.wait()
                continue
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            wait = self._bucket.take()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            item = heapq.heappop(self._queue)
            self._queued -= 1
            return item

    def _count_submit(self) -> None:
        self.submitted += 1
        now = time.monotonic()
        self._submit_times.append(now)
        while self._submit_times[0] < now - RATE_WINDOW_SECONDS:
            self._submit_times.popleft()

    def _on_submit_resp(self, item: PendingSubmit, pdu: Pdu) -> None:
        status = pdu.command_status
        if pdu.command != "generic_nack" and status == ESME_ROK:
            self.acked += 1
            self._transient_streak = 0
            self._resolve(item, "ok", message_id=pdu.message_id, status=status)
        elif pdu.command != "generic_nack" and status in (ESME_RTHROTTLED, ESME_RMSGQFUL):
            if status == ESME_RTHROTTLED:
                self.throttled += 1
                base, cap = self.throttle_backoff
            else:
                self.queue_full += 1
                base, cap = self.queue_full_backoff
            self._transient_streak += 1
            delay = backoff_delay(self._transient_streak - 1, base, cap, self._rng)
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            log.info("smpp %s: %s, pausing submits %.2fs", self.name, status_name(status), delay)
            item.transient += 1
            if item.transient > self.max_transient_retries:
                self._resolve(item, "retry", status=status)
            else:
                self._requeue(item)
        else:
            self.failed += 1
            self._resolve(item, "failed", status=status)

    def _on_late(self, pdu: Pdu, ref: Any) -> None:
        self.late_responses += 1
        log.info("smpp %s: late %s #%d", self.name, status_name(pdu.command_status), pdu.sequence)
        if self._on_late_response is None:
            return
        try:
            result = self._on_late_response(pdu.sequence, ref, pdu.message_id, pdu.command_status)
        except Exception:
            log.exception("smpp %s: on_late_response failed", self.name)
            return
        if inspect.isawaitable(result):
            self._track(asyncio.ensure_future(result))

    # ---- inbound ----------------------------------------------------------------------------------

    async def _deliver(self, link: Link, message: DeliverSm) -> None:
        status = ESME_ROK
        if self._on_deliver is not None:
            try:
                await asyncio.wait_for(self._on_deliver(self.name, message), self.deliver_timeout)
            except TimeoutError:
                log.warning("smpp %s: on_deliver timed out; answering ESME_RX_T_APPN", self.name)
                status = ESME_RX_T_APPN
            except Exception:
                log.exception("smpp %s: on_deliver failed; answering ESME_RX_T_APPN", self.name)
                status = ESME_RX_T_APPN
        message_id = ""
        if status == ESME_ROK:
            self.delivered += 1
            if message.command == "submit_sm":
                message_id = self._message_ids()
        link.send_first(encode_message_resp(message.command, message.sequence, status, message_id))

    # ---- metrics ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and state for /readyz and /metrics."""
        link = self._links[self._modes[0]]
        now = time.monotonic()
        recent = sum(1 for t in self._submit_times if t >= now - RATE_WINDOW_SECONDS)
        return {
            "name": self.name,
            "state": self.state,
            "receiver_state": self.receiver_state,
            "bind": self.config.bind,
            "weight": self.config.weight,
            "window_in_use": len(link.inflight) if link else 0,
            "window": self.config.window,
            "queued": self._queued,
            "submitted": self.submitted,
            "acked": self.acked,
            "throttled": self.throttled,
            "queue_full": self.queue_full,
            "failed": self.failed,
            "unknown": self.unknown,
            "late_responses": self.late_responses,
            "delivered": self.delivered,
            "reconnects": self.reconnects,
            "bind_failures": self.bind_failures,
            "refused_inbound": self.refused_inbound,
            "tps": self.config.tps,
            "submit_rate": round(recent / RATE_WINDOW_SECONDS, 3),
            "last_error": self.last_error,
        }
