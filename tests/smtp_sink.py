"""A scriptable SMTP server for tests: aiosmtpd served by the test's own event loop, recording the
exact bytes of every accepted message.

    async with SmtpSink() as sink:              # 127.0.0.1, a free port: sink.port
        sink.rcpt_replies["x@example.com"] = "550 5.1.1 <x@example.com>: User unknown"
        sink.data_replies.append("451 4.3.0 Try again later")   # the next DATA only
        sink.data_replies.append(DROP)                          # read the data, close, no reply
        ...
        (msg,) = await sink.wait_messages(1)
        msg.mail_from, msg.rcpt_tos, msg.data

Options: ``smtputf8`` (offer SMTPUTF8, RFC 6531; default on), ``tls`` (an SSLContext: STARTTLS
offered, and required when ``require_tls``),
``implicit_tls`` (TLS from the first byte), ``auth`` ({user: password}: AUTH PLAIN/LOGIN required).
Run as a script (``python tests/smtp_sink.py --port 2526``) it accepts everything and counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DROP = "DROP"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int  # which connection carried it (1-based, in accept order)
    tls: bool
    authenticated: str | None
    at: float


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sink.data_seen += 1
        if self.sink.data_replies:
            reply = self.sink.data_replies.popleft()
            if reply == DROP:
                assert server.transport is not None
                server.transport.abort()  # the data arrived; the reply never will
                return "250 2.0.0 (never sent)"
            return reply
        proto: Any = server
        self.sink.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                connection=proto._sink_connection,
                tls=self.sink.implicit_tls or session.ssl is not None,
                authenticated=str(session.auth_data) if session.authenticated else None,
                at=time.monotonic(),
            )
        )
        self.sink.arrived.set()
        return "250 2.0.0 OK: queued"

    async def handle_exception(self, error: Exception) -> str:
        return "451 4.3.0 sink error"


class SmtpSink:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        require_tls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        smtputf8: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.require_tls = require_tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.smtputf8 = smtputf8
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: collections.deque[str] = collections.deque()
        self.connections = 0
        self.data_seen = 0
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self.auth is not None:
            user, password = data.login.decode(), data.password.decode()
            if self.auth.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    def _factory(self) -> SMTP:
        self.connections += 1
        proto = SMTP(
            _Handler(self),
            hostname="sink.test",
            enable_SMTPUTF8=self.smtputf8,
            tls_context=None if self.implicit_tls else self.tls,
            require_starttls=self.require_tls and not self.implicit_tls,
            authenticator=self._authenticate if self.auth else None,
            # aiosmtpd only knows TLS it negotiated itself (STARTTLS): with implicit TLS, AUTH is
            # offered without its TLS check (and then not required, which aiosmtpd would warn about).
            auth_required=bool(self.auth) and not self.implicit_tls,
            auth_require_tls=bool(self.auth) and not self.implicit_tls,
            loop=asyncio.get_running_loop(),
        )
        proto._sink_connection = self.connections  # type: ignore[attr-defined]
        self._protocols.append(proto)
        return proto

    async def start(self) -> SmtpSink:
        self._server = await asyncio.get_running_loop().create_server(
            self._factory, self.host, self.port, ssl=self.tls if self.implicit_tls else None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for proto in self._protocols:
            if proto.transport is not None:
                proto.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_messages(self, n: int, timeout: float = 15.0) -> list[Received]:
        """At least ``n`` accepted messages, or AssertionError after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < n:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"{len(self.messages)} of {n} messages after {timeout}s") from None
        return list(self.messages)


def make_dsn(
    *,
    to: str,
    recipient: str = "jan@example.com",
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <jan@example.com>: Recipient address rejected: User unknown",
    original_message_id: str = "<original@example>",
) -> bytes:
    """A delivery status notification as Postfix writes one (RFC 3464 multipart/report)."""
    return (
        "From: MAILER-DAEMON@relay.example (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"\r\n'
        "\r\n"
        "--B0UND\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "\r\n"
        "--B0UND\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; relay.example\r\n"
        "Arrival-Date: Tue, 24 Nov 2026 12:00:00 +0000 (UTC)\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        "Remote-MTA: dns; mx.example.com\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        "--B0UND\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"Message-ID: {original_message_id}\r\n"
        "Subject: the original\r\n"
        "\r\n"
        "--B0UND--\r\n"
    ).encode()


async def _main() -> None:
    p = argparse.ArgumentParser(description="An SMTP sink that accepts everything.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2526)
    args = p.parse_args()
    async with SmtpSink(host=args.host, port=args.port) as sink:
        print(f"listening on {sink.host}:{sink.port}", flush=True)
        while True:
            await asyncio.sleep(5)
            print(f"{len(sink.messages)} messages on {sink.connections} connections", flush=True)
            sink.messages.clear()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
