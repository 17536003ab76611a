"""A poller per ``[[imap.pollers]]``: read new mail from a mailbox and hand it to the inbound pipeline.

Loop: connect (bounded), LOGIN, SELECT; search for what is not processed yet; per message: its
size, then its bytes (``BODY.PEEK[]``, so reading sets no flag), the envelope rebuilt from its
headers, ``sink.receive`` (returns after the commit), and only then the mark: ``\\Seen`` plus the
``$GatewayProcessed`` keyword, or a move to a folder. Then IDLE (RFC 2177) when the server offers
it, else sleep ``interval``; repeat.

Failure rules (docs/decisions.md "IMAP ingress"):
- the sink raises (a temporary failure: database down...): the message stays unmarked, the other
  messages of the round are still tried, then the poller backs off (jittered, doubling) and tries
  again; nothing is lost.
- a crash between the commit and the mark: the message is read and handed again; the pipeline
  recognises it by Message-ID and answers ``duplicate`` (stored once), and it is marked then.
- a message that cannot be handed at all (bigger than the limit, or no recipient at our mail
  domain when routing by recipient): the ``$GatewayRejected`` keyword, left unread in the mailbox
  for a person, logged and counted; never silently dropped.
- any connection or protocol problem (including a wait that ran out of time, see client.py):
  drop the connection, back off, reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gateway.domain.inbound_mail import InboundMailSink
from gateway.imap.client import ImapConnection, ImapSettings
from gateway.imap.envelope import envelope_for
from gateway.imap.errors import ImapCommandFailed, ImapError

__all__ = [
    "PROCESSED_KEYWORD",
    "REJECTED_KEYWORD",
    "ImapPoller",
    "PollerSettings",
    "PollerState",
]

log = logging.getLogger(__name__)

#: Set (with \Seen) on a message the gateway committed (on_success = "flag"). A keyword, not just
#: \Seen: a person reading the mailbox in a mail client sets \Seen too, and must not hide mail
#: from the gateway.
PROCESSED_KEYWORD = "$GatewayProcessed"
#: Set (without \Seen) on a message the gateway cannot take; the search skips it from then on.
REJECTED_KEYWORD = "$GatewayRejected"

#: A LOGOUT at shutdown gets at most this long.
LOGOUT_TIMEOUT = 5.0

TenantAddress = Callable[[str], Awaitable[str]]


class PollerState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    SYNCING = "syncing"  # searching, fetching, handing messages over
    IDLE = "idle"  # IDLE: waiting for the server to announce new mail
    WAITING = "waiting"  # no IDLE: sleeping until the next poll
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PollerSettings:
    name: str
    connection: ImapSettings
    mail_domain: str
    mailbox: str = "INBOX"
    #: A tenant id: every message goes to that tenant's current address. None: route by recipient.
    tenant: str | None = None
    #: A folder: processed messages are moved there. None: flagged (\Seen + PROCESSED_KEYWORD).
    move_to: str | None = None
    interval: float = 60.0
    idle_timeout: float = 300.0
    retry_base: float = 5.0
    retry_max: float = 300.0
    max_message_bytes: int = 25 * 1024 * 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


class ImapPoller:
    """Run with ``await poller.run(stop)``; returns soon after ``stop`` is set (the message being
    handed over finishes first, an IDLE is ended with DONE, LOGOUT is bounded)."""

    def __init__(
        self,
        settings: PollerSettings,
        sink: InboundMailSink,
        *,
        ssl_context: ssl.SSLContext | None,
        tenant_address: TenantAddress | None = None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        if settings.tenant is not None and tenant_address is None:
            raise ValueError("a tenant-bound poller needs tenant_address")
        self.settings = settings
        self._sink = sink
        self._ssl = ssl_context
        self._tenant_address = tenant_address
        self._clock = clock
        self._rng = rng or random.Random()
        self.state = PollerState.STARTING
        self.connected = False
        self.idle_supported: bool | None = None
        #: Messages handed over and marked (duplicates included), since start.
        self.handled = 0
        #: ... of which the pipeline had already stored (a re-read).
        self.duplicates = 0
        #: Hand-overs that raised (the message stays for the next round).
        self.failed = 0
        #: Messages marked REJECTED_KEYWORD (too big, no recipient).
        self.rejected = 0
        #: Connection and protocol errors (each followed by a reconnect).
        self.errors = 0
        self.connects = 0
        #: The end of the last round that went through without an error.
        self.last_success: datetime | None = None
        self.last_error: str | None = None
        self._connect_failures = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.settings.name,
            "state": str(self.state),
            "connected": self.connected,
            "idle": self.idle_supported,
            "handled": self.handled,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "rejected": self.rejected,
            "errors": self.errors,
            "connects": self.connects,
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
        }

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        try:
            while not stop.is_set():
                self.state = PollerState.CONNECTING
                conn: ImapConnection | None = None
                try:
                    conn = await self._open(stop)
                    if conn is None:
                        break
                    self.connects += 1
                    self.connected = True
                    log.info("imap connected", extra={"poller": s.name, "host": s.connection.host})
                    await self._session(conn, stop)
                except ImapError as exc:
                    self.errors += 1
                    self.last_error = str(exc)
                    log.warning(
                        "imap connection failed; reconnecting after a pause",
                        extra={"poller": s.name, "error": str(exc)},
                    )
                finally:
                    self.connected = False
                    if conn is not None:
                        if stop.is_set():
                            await conn.logout(min(LOGOUT_TIMEOUT, s.connection.timeout))
                        else:
                            conn.abort()
                if stop.is_set():
                    break
                self.state = PollerState.BACKING_OFF
                await self._pause(stop, self._backoff(self._connect_failures))
                self._connect_failures += 1
        finally:
            self.state = PollerState.STOPPED

    async def _open(self, stop: asyncio.Event) -> ImapConnection | None:
        """A logged-in connection, or None when ``stop`` came first (a connect can take up to
        the timeout; shutdown should not wait for it)."""
        opening = asyncio.ensure_future(ImapConnection.open(self.settings.connection, self._ssl))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not opening.done():
                opening.cancel()  # open() closes what it had on the way out
                with contextlib.suppress(asyncio.CancelledError, ImapError):
                    await opening
        return opening.result() if not opening.cancelled() else None

    async def _session(self, conn: ImapConnection, stop: asyncio.Event) -> None:
        s = self.settings
        info = await conn.select(s.mailbox)
        if s.move_to is not None and await conn.create(s.move_to):
            log.info("imap folder created", extra={"poller": s.name, "folder": s.move_to})
        if s.move_to is None and not info.keywords_allowed:
            raise ImapCommandFailed(
                "SELECT",
                "NO",
                f"{s.mailbox!r} does not allow keywords ({PROCESSED_KEYWORD}): "
                "use on_success = move:<folder>",
            )
        self.idle_supported = conn.has("IDLE")
        sink_failures = 0
        first = True
        while not stop.is_set():
            if not first and not self.idle_supported:
                await conn.noop()  # RFC 3501 6.1.2: how a client without IDLE learns of new mail
            first = False
            self.state = PollerState.SYNCING
            failed = await self._round(conn, stop)
            if stop.is_set():
                return
            if failed:
                self.state = PollerState.BACKING_OFF
                await self._pause(stop, self._backoff(sink_failures))
                sink_failures += 1
                continue
            sink_failures = 0
            self._connect_failures = 0
            self.last_success = self._clock()
            if self.idle_supported:
                self.state = PollerState.IDLE
                await conn.idle(s.idle_timeout, stop)
            else:
                self.state = PollerState.WAITING
                await self._pause(stop, s.interval)

    async def _round(self, conn: ImapConnection, stop: asyncio.Event) -> int:
        """Hand over every unprocessed message; the number whose hand-over raised."""
        s = self.settings
        # UNDELETED: a message marked \Deleted is on its way out (and after a COPY fallback move
        # that crashed before EXPUNGE, it is already in the folder).
        criteria = ["UNDELETED", "UNKEYWORD", REJECTED_KEYWORD]
        if s.move_to is None:
            criteria += ["UNKEYWORD", PROCESSED_KEYWORD]
        uids = await conn.uid_search(*criteria)
        if not uids:
            return 0
        sizes = await conn.uid_fetch_sizes(uids)
        fixed: str | None = None
        if s.tenant is not None:
            assert self._tenant_address is not None
            try:
                fixed = await self._tenant_address(s.tenant)
            except Exception as exc:  # the database, or a tenant that does not exist (yet)
                self.failed += 1
                self.last_error = f"tenant {s.tenant!r}: {exc!r}"
                log.warning("imap: tenant address unknown", extra={"poller": s.name, "tenant": s.tenant})
                return 1
        failed = 0
        for uid in uids:
            if stop.is_set():
                break
            size = sizes.get(uid)
            if size is None:
                continue  # expunged by someone else meanwhile
            if size > s.max_message_bytes:
                await self._reject(conn, uid, "too_big", size)
                continue
            raw = await conn.uid_fetch_body(uid, size)
            if raw is None:
                continue
            envelope = envelope_for(raw, poller=s.name, mail_domain=s.mail_domain, fixed_recipient=fixed)
            if envelope is None:
                await self._reject(conn, uid, "no_recipient", size)
                continue
            try:
                outcomes = await self._sink.receive(raw, envelope)
            except Exception as exc:
                failed += 1
                self.failed += 1
                self.last_error = f"uid {uid}: {exc!r}"
                log.warning(
                    "imap: hand-over failed; the message stays for the next round",
                    extra={"poller": s.name, "uid": uid, "error": repr(exc)},
                )
                continue
            await self._mark(conn, uid)
            self.handled += 1
            duplicate = any(o.duplicate for o in outcomes)
            self.duplicates += duplicate
            log.info(
                "imap message handed over",
                extra={
                    "poller": s.name,
                    "uid": uid,
                    "accepted": sum(o.accepted for o in outcomes),
                    "refused": sum(not o.accepted for o in outcomes),
                    "duplicate": duplicate,
                },
            )
        return failed

    async def _mark(self, conn: ImapConnection, uid: int) -> None:
        if self.settings.move_to is not None:
            await conn.uid_move(uid, self.settings.move_to)
        else:
            await conn.uid_store(uid, f"\\Seen {PROCESSED_KEYWORD}")

    async def _reject(self, conn: ImapConnection, uid: int, reason: str, size: int) -> None:
        self.rejected += 1
        log.warning(
            "imap: message left in the mailbox for a person",
            extra={"poller": self.settings.name, "uid": uid, "reason": reason, "size": size},
        )
        try:
            await conn.uid_store(uid, REJECTED_KEYWORD)
        except ImapCommandFailed as exc:  # no keywords here: it is looked at again next round
            log.warning("imap: cannot flag a rejected message", extra={"uid": uid, "error": str(exc)})

    # -- timing -------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        """Doubling from retry_base up to retry_max, times a random factor in [0.5, 1) so that
        pollers (and daemons) that failed together do not retry together."""
        s = self.settings
        delay = min(s.retry_max, s.retry_base * (2.0 ** min(failures, 30)))
        return delay * (0.5 + self._rng.random() / 2)

    @staticmethod
    async def _pause(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
