"""The outbound relay client: composes, signs and hands messages to the smart host over a small pool
of kept-alive SMTP connections (aiosmtplib). Implements gateway.domain.ports.EmailTransport.

- Up to ``[relay] connections`` connections, each carrying one transaction at a time and many
  transactions in a row (RFC 5321 §3.3: after the reply to the end of DATA a new MAIL may follow
  on the same connection). Idle connections are reused newest first, so a quiet period lets the
  others age out (``idle_seconds``) instead of keeping them all half-alive; a connection is retired
  after ``max_messages_per_connection`` transactions (some relays cap them).
- TLS: ``implicit_tls`` (RFC 8314 §3.3, usually port 465) or ``starttls`` (RFC 3207; required when
  set: a relay that does not offer it is an error, never a silent downgrade). AUTH (RFC 4954) with
  ``username``/``password`` after TLS. Certificates are verified (``ca_file`` adds a CA bundle).
- Outcomes (RFC 5321 §4.2.1): a 2xx to the end of DATA is ``sent``; a 5xx to MAIL, RCPT or DATA
  is ``failed`` with the relay's reply; a 4xx, a connection that cannot be opened, is lost or times
  out is ``retry`` (the job queue backs off). A reused connection that turns out to be closed before
  anything was sent is replaced once, transparently. After a refused transaction the connection is
  reset (RSET, §4.1.1.5) and kept.
- A lost connection or a timeout *after* the message data was written is ``retry`` with
  ``data_sent``: the relay may have taken it (RFC 5321 §4.1.1.4 / RFC 1047), so the retry can
  duplicate it. That is the only duplicate window besides a crash between the relay's 250 and our
  commit (docs/decisions.md "Outbound email").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from gateway.domain.ports import OutgoingEmail, RelayResult
from gateway.smtp import mime
from gateway.smtp.dkim import DkimSigner

log = logging.getLogger(__name__)

__all__ = ["RelaySettings", "SmtpRelay"]


@dataclass(frozen=True, slots=True)
class RelaySettings:
    host: str
    port: int = 25
    username: str = ""
    password: str = ""
    starttls: bool = True
    implicit_tls: bool = False
    connections: int = 4
    timeout: float = 30.0
    ca_file: str = ""
    helo_name: str = "localhost"
    max_messages_per_connection: int = 1000
    idle_seconds: float = 60.0


@dataclass
class _Conn:
    client: aiosmtplib.SMTP
    used: int = 0
    idle_since: float = 0.0


class _StaleConnectionError(Exception):
    """A reused connection was found closed before anything of the message was sent."""


class SmtpRelay:
    """``send`` composes (gateway.smtp.mime), signs (DKIM, when configured) and relays one message."""

    def __init__(
        self,
        settings: RelaySettings,
        signer: DkimSigner | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self._signing: ThreadPoolExecutor | None = None
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(settings.connections)
        self._open = 0
        self._closing = False
        self._tls: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        # Counters for /metrics and /readyz.
        self.sent = 0
        self.failed = 0
        self.deferred = 0
        self.connects = 0
        self.connect_failures = 0
        self.last_error: str | None = None
        self.failing = False

    # --- the port -------------------------------------------------------------------------------

    async def send(self, mail: OutgoingEmail) -> RelayResult:
        data = await self._compose(mail)
        async with self._slots:
            result = await self._send_on_pool(mail, data)
        if result.outcome == "sent":
            self.sent += 1
        elif result.outcome == "failed":
            self.failed += 1
        else:
            self.deferred += 1
        return result

    async def _compose(self, mail: OutgoingEmail) -> bytes:
        raw = mime.build(mail)
        if self.signer is None:
            return raw
        # In worker threads of its own: the RSA step (OpenSSL) releases the GIL, so signing overlaps
        # the loop's work (measured: +20% relayed/s on 2 cores), and the pure-Python fallback
        # (~7 ms a signature) must not stall the loop. Not the default executor: SQLite commits
        # wait there, and must not queue behind a burst of signatures.
        if self._signing is None:
            self._signing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim-sign")
        return await asyncio.get_running_loop().run_in_executor(self._signing, self.signer.sign, raw)

    async def _send_on_pool(self, mail: OutgoingEmail, data: bytes) -> RelayResult:
        conn = self._take_idle()
        for _ in range(2):
            if conn is None:
                try:
                    conn = await self._connect()
                except (aiosmtplib.SMTPException, OSError) as exc:
                    return RelayResult("retry", self._connect_failed(exc))
            try:
                result = await self._transaction(conn, mail, data)
            except _StaleConnectionError:
                self._discard(conn)
                conn = None
                continue
            except aiosmtplib.SMTPException as exc:  # nothing a relay should make us see: start afresh
                conn.client.close()
                self._discard(conn)
                return RelayResult("retry", f"relay protocol error: {exc}")
            except BaseException:  # cancelled mid-transaction (shutdown): the session state is unknown
                conn.client.close()
                self._discard(conn)
                raise
            self._release(conn)
            return result
        return RelayResult("retry", "the relay closed the connection before MAIL")

    # --- one transaction (RFC 5321 §3.3) -----------------------------------------------------------

    async def _transaction(self, conn: _Conn, mail: OutgoingEmail, data: bytes) -> RelayResult:
        client = conn.client
        reused = conn.used > 0
        conn.used += 1
        options: list[str] = []
        encoding = "ascii"
        if mail.needs_smtputf8:
            if not client.supports_extension("smtputf8"):
                return RelayResult("failed", "the relay does not offer SMTPUTF8 (RFC 6531 §3.4)")
            options, encoding = ["SMTPUTF8"], "utf-8"
        data_sent = False
        try:
            await client.mail(mail.envelope_from, options=options, encoding=encoding)
            await client.rcpt(mail.recipient, encoding=encoding)
            data_sent = True
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            reply = f"{exc.code} {_one_line(exc.message)}"
            if client.is_connected:
                await self._reset(conn)
            # 530/535/538 (RFC 4954 §6: authentication required, failed, needs encryption) are about
            # our configuration, not the message: retried like a 4xx while the operator fixes it.
            if 500 <= exc.code < 600 and exc.code not in (530, 535, 538):
                return RelayResult("failed", reply, data_sent=False)
            # 4xx (§4.2.1: transient), or something no relay should say: try again later.
            return RelayResult("retry", reply, data_sent=False)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            client.close()
            if reused and not data_sent and isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                raise _StaleConnectionError from None
            what = "timeout" if isinstance(exc, TimeoutError) else "connection lost"
            stage = "after the message data was sent" if data_sent else "before DATA"
            return RelayResult("retry", f"{what} {stage}: {exc}", data_sent=data_sent)
        self.failing = False
        return RelayResult("sent", f"{response.code} {_one_line(response.message)}", data_sent=True)

    async def _reset(self, conn: _Conn) -> None:
        try:
            await conn.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            conn.client.close()

    # --- the pool ---------------------------------------------------------------------------------

    def _take_idle(self) -> _Conn | None:
        now = self.clock()
        while self._idle:
            conn = self._idle.pop()  # newest first
            if conn.client.is_connected and now - conn.idle_since < self.settings.idle_seconds:
                return conn
            self._discard(conn)
        return None

    def _release(self, conn: _Conn) -> None:
        if (
            self._closing
            or not conn.client.is_connected
            or conn.used >= self.settings.max_messages_per_connection
        ):
            self._discard(conn)
            return
        conn.idle_since = self.clock()
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        self._open -= 1
        client = conn.client
        if client.is_connected:
            task = asyncio.ensure_future(self._quit(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.settings.ca_file or None)
        return self._tls

    async def _connect(self) -> _Conn:
        s = self.settings
        tls = s.implicit_tls or s.starttls
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username or None,
            password=s.password or None,
            local_hostname=s.helo_name,
            timeout=s.timeout,
            use_tls=s.implicit_tls,
            start_tls=bool(s.starttls and not s.implicit_tls),
            tls_context=self._tls_context() if tls else None,
        )
        await client.connect()
        try:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()  # now, so the extensions (SMTPUTF8, RFC 6531) are known before MAIL
        except (aiosmtplib.SMTPException, OSError):
            client.close()
            raise
        self._open += 1
        self.connects += 1
        self.failing = False
        log.info("relay connection opened", extra={"relay": f"{s.host}:{s.port}", "open": self._open})
        return _Conn(client)

    def _connect_failed(self, exc: BaseException) -> str:
        self.connect_failures += 1
        reply = (
            f"{exc.code} {_one_line(exc.message)}"
            if isinstance(exc, aiosmtplib.SMTPResponseException)
            else f"cannot connect to the relay: {exc}"
        )
        if reply != self.last_error or not self.failing:
            log.warning(
                "relay connection failed",
                extra={"relay": f"{self.settings.host}:{self.settings.port}", "error": reply},
            )
        self.last_error, self.failing = reply, True
        return reply

    # --- operations -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "relay": f"{self.settings.host}:{self.settings.port}",
            "state": "failing" if self.failing else "ok",
            "open_connections": self._open,
            "idle_connections": len(self._idle),
            "last_error": self.last_error,
            "signing": "dkim" if self.signer is not None else "off",
        }

    async def close(self) -> None:
        """QUIT the idle connections (RFC 5321 §4.1.1.10); busy ones are closed when they finish."""
        self._closing = True
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self._quit(c.client) for c in idle if c.client.is_connected))
        if self._signing is not None:
            self._signing.shutdown(wait=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())
