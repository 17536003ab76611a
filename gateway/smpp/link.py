"""One SMPP connection of a :class:`~gateway.smpp.session.SmppSession` (see that module for the policies).

A :class:`Link` lives for one connection attempt: ``connecting -> binding -> bound -> unbinding ->
disconnected``. :meth:`Link.serve` connects, then :meth:`Link.run` does the rest over the stream; the
listener (:mod:`gateway.smpp.listener`) calls :meth:`Link.run` directly on a connection a carrier opened:
after an ``outbind`` it sends the bind (``send_bind``), after the carrier's own bind (answered by the
listener) it starts bound. One code path for our binds and the carriers'.

It owns the framing (``readexactly`` of the header, then of the body), the writer task
(answers before requests), the ``{sequence: future}`` map of its own requests (bind, enquire_link,
unbind), the window semaphore and the parts in flight, and the enquire_link loop. The queue of parts,
the token bucket, the throttling pause and the counters belong to the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.smpp.codec import (
    BIND_MODES,
    ESME_RALYBND,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_ROK,
    ESME_RTHROTTLED,
    ESME_RX_T_APPN,
    HEADER_LENGTH,
    BindMode,
    Pdu,
    decode,
    decode_header,
    encode_bind,
    encode_bind_resp,
    encode_enquire_link,
    encode_message_resp,
    encode_response,
    encode_unbind,
    status_name,
    with_sequence,
)
from gateway.smpp.errors import (
    BindError,
    ConnectionClosedError,
    PduDecodeError,
    ResponseTimeoutError,
    SmppError,
)
from gateway.smpp.types import RESPONSE_TIMEOUT, DeliverSm, SubmitPart, SubmitResult

if TYPE_CHECKING:
    from gateway.smpp.session import SmppSession, State

log = logging.getLogger(__name__)

#: PDUs joined into one socket write at most (a window's worth, typically).
WRITE_BATCH = 64


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Equal jitter: ``c = min(cap, base * 2**attempt)``, a delay uniform in ``[c/2, c]``."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class PendingSubmit:
    """A part handed to a session. ``state``: new, queued, inflight or done; ``sent`` once its bytes went
    to the socket; ``transient``: times throttled/queue-full; ``future`` gets the one
    :class:`SubmitResult`."""

    __slots__ = (
        "deadline",
        "future",
        "order",
        "part",
        "raw",
        "reroutable",
        "sent",
        "state",
        "timer",
        "transient",
    )

    def __init__(self, part: SubmitPart, order: int, reroutable: bool) -> None:
        self.part = part
        self.order = order
        self.reroutable = reroutable
        self.future: asyncio.Future[SubmitResult] = asyncio.get_running_loop().create_future()
        self.raw = b""
        self.state = "new"
        self.sent = False
        self.timer: asyncio.TimerHandle | None = None
        self.transient = 0
        self.deadline = math.inf  # monotonic time after which it must not be (re)queued

    def __lt__(self, other: PendingSubmit) -> bool:
        return self.order < other.order


class Link:
    """One TCP connection and its bind; lives for one connection attempt."""

    def __init__(self, session: SmppSession, mode: BindMode, *, sends: bool | None = None) -> None:
        self.s = session
        self.mode = mode
        self.sends = mode != "receiver" if sends is None else sends  # carries our submit_sm
        self.closed = self.closing = False
        self.pending: dict[int, asyncio.Future[Pdu]] = {}
        self.inflight: dict[int, PendingSubmit] = {}
        self.late: dict[int, tuple[Any, float]] = {}
        self.window = asyncio.Semaphore(session.config.window)
        self.idle = asyncio.Event()
        self.delivers: set[asyncio.Task[None]] = set()
        self.last_rx = time.monotonic()
        self._prio: deque[bytes] = deque()
        self._out: deque[tuple[bytes, PendingSubmit | None]] = deque()
        self._wake = asyncio.Event()

    def _state(self, state: State) -> None:
        self.s._set_state(self.mode, state)

    async def serve(self, stop: asyncio.Event) -> bool:
        """Connect, bind, run until the connection fails or ``stop`` is set; True if it got bound."""
        s, cfg = self.s, self.s.config
        self._state("connecting")
        try:
            connecting = asyncio.open_connection(cfg.host, cfg.port)
            reader, writer = await asyncio.wait_for(connecting, s.connect_timeout)
        except (OSError, TimeoutError) as exc:
            s._error(f"connect to {cfg.host}:{cfg.port} failed: {exc!r}")
            self._state("disconnected")
            return False
        return await self.run(reader, writer, stop)

    async def run(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stop: asyncio.Event,
        *,
        send_bind: bool = True,
    ) -> bool:
        """Over a connected stream: bind (``send_bind``: we send ``bind_<mode>``; else the peer bound
        and was answered already), run until the connection fails or ``stop`` is set, close the
        stream. True if it got bound."""
        s, cfg = self.s, self.s.config
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._read_loop(reader), name=f"smpp-{s.name}-{self.mode}-read"),
            asyncio.create_task(self._write_loop(writer), name=f"smpp-{s.name}-{self.mode}-write"),
        ]
        bound = False
        try:
            if send_bind:
                self._state("binding")
                seq = s._seq.next_sequence()
                bind = encode_bind(
                    self.mode,
                    seq,
                    system_id=cfg.system_id,
                    password=cfg.password,
                    system_type=cfg.system_type,
                )
                resp = await self._request(bind, seq, f"bind_{self.mode}", cfg.response_timeout_seconds)
                if resp.command_status != ESME_ROK or resp.command != f"bind_{self.mode}_resp":
                    s.bind_failures += 1
                    code = resp.command_status
                    raise BindError(s.name, f"bind_{self.mode}", code, status_name(code))
            bound = True
            self._state("bound")
            log.info("smpp %s: bound %s to %s:%s", s.name, self.mode, cfg.host, cfg.port)
            tasks.append(asyncio.create_task(self._enquire_loop()))
            if self.sends:
                tasks.append(asyncio.create_task(self._send_loop()))
            stopper = asyncio.create_task(stop.wait())
            tasks.append(stopper)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await self._unbind(tasks)
            else:
                s._error(self._why(done))
        except (SmppError, OSError) as exc:
            s._error(str(exc))
        except Exception as exc:  # a bug must not stop the reconnect loop
            log.exception("smpp %s: unexpected error", s.name)
            s._error(repr(exc))
        finally:
            await self._close(tasks, writer)
        return bound

    @staticmethod
    def _why(done: set[asyncio.Task[Any]]) -> str:
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, asyncio.IncompleteReadError):
                return "connection closed by the SMSC"  # (or by the carrier, on a listener)
            if exc is not None:
                return str(exc) or repr(exc)
        return "unbound by the SMSC"

    async def _unbind(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Graceful end: ``tasks`` are reader, writer, enquire_link loop, sender (if any), stop waiter."""
        io, others = tasks[:2], tasks[2:]
        for task in others:
            task.cancel()  # enquire_link and sender: nothing new goes out
        if any(task.done() for task in io):
            return  # the connection is gone already
        self._state("unbinding")
        timeout = self.s.unbind_timeout
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), min(timeout, self.s.config.response_timeout_seconds))
        if self.delivers:
            await asyncio.wait(self.delivers, timeout=self.s.deliver_timeout)
        seq = self.s._seq.next_sequence()
        with contextlib.suppress(SmppError):
            await self._request(encode_unbind(seq), seq, "unbind", timeout)

    async def _close(self, tasks: list[asyncio.Task[Any]], writer: asyncio.StreamWriter) -> None:
        self.closed = True
        self._state("disconnected")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Answers still queued (a generic_nack before a reset, an unbind_resp): the writer task wrote
        # everything it took out whole, so these go after it, in order, before the close.
        if self._prio and not writer.is_closing():
            with contextlib.suppress(Exception):
                writer.write(b"".join(self._prio))
        self._prio.clear()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.late.clear()
        self.s._link_down(self)

    async def _request(self, raw: bytes, seq: int, command: str, timeout: float) -> Pdu:
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.pending[seq] = future
        self.send(raw)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ResponseTimeoutError(self.s.name, command, seq, timeout) from None
        finally:
            self.pending.pop(seq, None)

    def send(self, raw: bytes, item: PendingSubmit | None = None) -> None:
        self._out.append((raw, item))
        self._wake.set()

    def send_first(self, raw: bytes) -> None:
        if not self.closed:
            self._prio.append(raw)
            self._wake.set()

    def _fail_pending(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(self.s.name, reason))

    async def _write_loop(self, writer: asyncio.StreamWriter) -> None:
        """Write what is queued, answers first, in one ``write`` per turn (one send(2) for a window's
        worth of submit_sm instead of one per PDU); then wait for the socket to drain."""
        try:
            while True:
                chunks: list[bytes] = []
                while self._prio:
                    chunks.append(self._prio.popleft())
                if self.closing:
                    if chunks:
                        writer.write(b"".join(chunks))
                    return  # the SMSC unbound us and its unbind_resp is out
                sent: list[PendingSubmit] = []
                while self._out and len(chunks) < WRITE_BATCH:
                    raw, item = self._out.popleft()
                    chunks.append(raw)
                    if item is not None:
                        sent.append(item)
                if not chunks:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                writer.write(b"".join(chunks))
                for item in sent:
                    item.sent = True
                await writer.drain()
        finally:
            self._fail_pending("writer stopped")

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(HEADER_LENGTH)
                try:
                    header = decode_header(head)
                except PduDecodeError as exc:
                    # command_length < 16 or over MAX_PDU_LENGTH: the framing is lost. Answer
                    # generic_nack ESME_RINVCMDLEN (SMPP 3.4 §5.1.3) without reading the body, reset.
                    self.send_first(encode_response("generic_nack", exc.sequence or 0, ESME_RINVCMDLEN))
                    raise
                body = await reader.readexactly(header.length - HEADER_LENGTH)
                self.last_rx = time.monotonic()
                self._dispatch(head + body, header.is_response, header.sequence)
        finally:
            self._fail_pending("connection closed")

    def _dispatch(self, raw: bytes, is_response: bool, seq: int) -> None:
        s = self.s
        try:
            pdu = decode(raw, s._seq)
        except PduDecodeError as exc:
            log.warning("smpp %s: undecodable PDU: %s", s.name, exc)
            if not is_response:
                self.send_first(encode_response("generic_nack", seq, exc.nack_status))
            return
        if isinstance(pdu, DeliverSm):
            if pdu.command == "submit_sm" and not s.accept_submit:
                # We are not an SMSC for this peer (a carrier bound to our listener).
                self.send_first(encode_message_resp("submit_sm", seq, ESME_RINVCMDID))
                return
            if s.max_inbound is not None and len(self.delivers) >= s.max_inbound:
                # The peer ignores its window: refuse the excess (ESME_RX_T_APPN makes an SMSC
                # redeliver a deliver_sm later, §5.1.3), do not queue it without bound.
                status = ESME_RTHROTTLED if pdu.command == "submit_sm" else ESME_RX_T_APPN
                s.refused_inbound += 1
                self.send_first(encode_message_resp(pdu.command, seq, status))
                return
            task = asyncio.create_task(s._deliver(self, pdu))
            self.delivers.add(task)
            task.add_done_callback(self.delivers.discard)
            s._track(task)
        elif pdu.is_response:
            future = self.pending.get(seq)
            if future is not None:
                if not future.done():
                    future.set_result(pdu)
            elif (item := self.inflight.pop(seq, None)) is not None:
                self._release()
                s._on_submit_resp(item, pdu)
            elif (late := self.late.pop(seq, None)) is not None:
                s._on_late(pdu, late[0])
            else:
                log.warning("smpp %s: unexpected %s #%d", s.name, pdu.command, seq)
        elif pdu.command == "enquire_link":
            self.send_first(encode_response("enquire_link_resp", seq))
        elif pdu.command == "unbind":
            log.info("smpp %s: the SMSC unbound %s", s.name, self.mode)
            self.send_first(encode_response("unbind_resp", seq))
            self.closing = True
        elif (mode := BIND_MODES.get(pdu.command or "")) is not None:
            self.send_first(encode_bind_resp(mode, seq, ESME_RALYBND))  # a second bind, §5.1.3
        elif pdu.command == "outbind":
            self.send_first(encode_response("generic_nack", seq, ESME_RINVBNDSTS))
        else:
            self.send_first(encode_response("generic_nack", seq, ESME_RINVCMDID))

    def _release(self) -> None:
        self.window.release()
        if not self.inflight:
            self.idle.set()

    async def _enquire_loop(self) -> None:
        every = self.s.config.enquire_link_seconds
        while True:
            idle = time.monotonic() - self.last_rx
            if idle < every:
                await asyncio.sleep(every - idle)
                continue
            seq = self.s._seq.next_sequence()
            await self._request(
                encode_enquire_link(seq), seq, "enquire_link", self.s.config.response_timeout_seconds
            )

    async def _send_loop(self) -> None:
        s = self.s
        loop = asyncio.get_running_loop()
        while True:
            await self.window.acquire()
            try:
                item = await s._next_item()
            except BaseException:
                self.window.release()
                raise
            seq = s._seq.next_sequence()
            item.state, item.sent = "inflight", False
            item.timer = loop.call_later(s.config.response_timeout_seconds, self._submit_timeout, seq)
            self.inflight[seq] = item
            self.idle.clear()
            self.send(with_sequence(item.raw, seq), item)
            s._count_submit()

    def _submit_timeout(self, seq: int) -> None:
        item = self.inflight.pop(seq, None)
        if item is None:
            return
        self._release()
        now = time.monotonic()
        self.late[seq] = (item.part.ref, now + self.s.late_response_seconds)
        while self.late and next(iter(self.late.values()))[1] < now:  # oldest first: same lifetime
            del self.late[next(iter(self.late))]
        log.warning("smpp %s: no submit_sm_resp for #%d: outcome unknown", self.s.name, seq)
        self.s.unknown += 1
        self.s._resolve(item, "unknown", reason=RESPONSE_TIMEOUT)
