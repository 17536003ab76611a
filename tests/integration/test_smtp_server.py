"""The SMTP listener's protocol layer over real sockets: smuggling, sizes, limits, STARTTLS, errors.

A recording handler of this file stands in for the real one (gateway.smtp.handler); raw sockets
speak the attacks, aiosmtplib the ordinary sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from conftest import MESSAGE_ID_KEY, DbTarget
from harness import config_head, eventually, running, self_signed_cert
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import load
from gateway.runtime import Runtime
from gateway.smtp.errors import SmtpTlsError
from gateway.smtp.server import ConnectionGate, SmtpLimits, SmtpListener, client_key

HOST = "mx.test"
LIMIT = 4000  # max_message_bytes in these tests
NO_IP_LIMITS = {"exempt_networks": ()}  # loopback is exempt by default; these tests are loopback


@dataclass
class Mail:
    mail_from: str | None
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool


@dataclass
class Recorder:
    """Accepts any ``@test`` recipient and records each message; ``boom`` in a body or ``crash@``
    as a recipient raises, to see what the peer is told."""

    mails: list[Mail] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("crash@"):
            raise RuntimeError("secret internals: password=hunter2")
        if not address.endswith("@test"):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if b"boom" in envelope.content:
            raise RuntimeError("secret internals: password=hunter2")
        self.mails.append(
            Mail(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content, session.ssl is not None)
        )
        return "250 2.0.0 OK"


class FailingExceptionHook(Recorder):
    async def handle_exception(self, error: Exception) -> str:
        raise ValueError("the hook itself fails: password=hunter2")


class ChattyExceptionHook(Recorder):
    async def handle_exception(self, error: Exception) -> str:
        return f"oops {error}"  # not an SMTP reply: must not reach the peer


@asynccontextmanager
async def serve(handler: Any = None, **kwargs: Any) -> AsyncIterator[SmtpListener]:
    limits = SmtpLimits(**kwargs.pop("limits", {}))
    listener = SmtpListener(
        handler if handler is not None else Recorder(),
        host="127.0.0.1",
        port=0,
        hostname=HOST,
        max_message_bytes=LIMIT,
        limits=limits,
        **kwargs,
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(1)


class Raw:
    """A byte-exact SMTP peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, greeting: bool = True) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if greeting:
            assert (await raw.reply()).startswith("220 ")
        return raw

    async def reply(self) -> str:
        """One (possibly multi-line) reply, its lines joined with newlines."""
        lines: list[str] = []
        async with asyncio.timeout(10):
            while True:
                line = await self.reader.readline()
                assert line.endswith(b"\r\n"), f"connection closed after {lines!r}: {line!r}"
                lines.append(line[:-2].decode())
                if line[3:4] != b"-":
                    return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ask(self, line: bytes) -> str:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """True when the server closed the connection (and nothing more came); closes ours too."""
        async with asyncio.timeout(10):
            rest = await self.reader.read()
        await self.close()
        return rest == b""

    async def start(self, rcpt: bytes = b"x@test") -> None:
        """EHLO, MAIL, RCPT, DATA up to the 354."""
        assert (await self.ask(b"EHLO client.test")).startswith("250")
        assert (await self.ask(b"MAIL FROM:<a@client.test>")).startswith("250")
        assert (await self.ask(b"RCPT TO:<" + rcpt + b">")).startswith("250")
        assert (await self.ask(b"DATA")).startswith("354")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def code(reply: str) -> str:
    return reply.split("\n")[-1][:9]  # "550 5.6.0"


# -- SMTP smuggling (CVE-2023-51764 family) ------------------------------------------------------

SMUGGLING = [b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r\r\n"]
SECOND = (
    b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<x@test>\r\nDATA\r\nFrom: ceo@bank.test\r\n\r\nsmuggled\r\n.\r\n"
)


@pytest.mark.parametrize(
    "sep", SMUGGLING, ids=[s.decode().encode("unicode_escape").decode() for s in SMUGGLING]
)
async def test_a_bare_cr_or_lf_never_ends_data_and_refuses_the_whole_message(sep: bytes) -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        await c.send(b"Subject: one\r\n\r\nfirst" + sep + SECOND)
        # One answer, for one message (ours ended only at the real CRLF.CRLF): refused.
        assert code(await c.reply()) == "550 5.6.0"
        # The session is in step with the client: the next transaction is an ordinary one.
        await c.start()
        await c.send(b"Subject: fine\r\n\r\nok\r\n.\r\n")
        assert code(await c.reply()) == "250 2.0.0"
        assert (await c.ask(b"QUIT")).startswith("221")
        await c.close()
    assert [m.content for m in handler.mails] == [b"Subject: fine\r\n\r\nok\r\n"]
    assert listener.refused["bare_newline_data"] == 1


@pytest.mark.parametrize(
    "sep", SMUGGLING, ids=[s.decode().encode("unicode_escape").decode() for s in SMUGGLING]
)
async def test_a_pipelined_smuggled_second_message_is_never_delivered(sep: bytes) -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        # Everything in one write, as a pipelining (or hostile) client would.
        await c.send(
            b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<x@test>\r\nDATA\r\n"
            b"From: a@client.test\r\n\r\nhello" + sep + SECOND + b"QUIT\r\n"
        )
        replies = [code(await c.reply())[:3] for _ in range(6)]
        assert replies == ["250", "250", "250", "354", "550", "221"]
        assert await c.closed()
    assert handler.mails == []


async def test_bare_newlines_anywhere_in_the_data_refuse_it() -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        for body in (
            b"Subject: a\nBcc: x@test\r\n\r\nbody\r\n",  # a bare LF in the header
            b"Subject: a\r\n\r\nbo\rdy\r\n",  # a bare CR in the body
            b"Subject: a\r\n\r\n" + b"x" * 3000 + b"\n.\n" + b"y" * 10 + b"\r\n",  # inside an over-long line
        ):
            await c.start()
            await c.send(body + b".\r\n")
            assert code(await c.reply()) == "550 5.6.0"
        await c.close()
    assert handler.mails == []


@pytest.mark.parametrize("line", [b"EHLO client.test\n", b"NOOP\rRSET\r\n", b"NOOP\r\r\n"])
async def test_a_bare_cr_or_lf_in_a_command_ends_the_session(line: bytes) -> None:
    async with serve() as listener:
        c = await Raw.open(listener.port)
        await c.send(line)
        assert code(await c.reply()) == "500 5.5.2"
        assert await c.closed()
    assert listener.refused["bare_newline_command"] == 1


async def test_dot_stuffing_is_undone_and_8bit_utf8_passes() -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        await c.send("Subject: zażółć\r\n\r\n..\r\n..leading\r\n\r\n.\r\n".encode())
        assert code(await c.reply()) == "250 2.0.0"
        await c.close()
    assert handler.mails[0].content == "Subject: zażółć\r\n\r\n.\r\n.leading\r\n\r\n".encode()


def rfc_reading(payload: bytes) -> bytes | None:
    """What RFC 5321 §4.1.1.4 / §4.5.2 make of ``payload + CRLF.CRLF`` after DATA, and our rule on
    top: the dot-unstuffed message, or None when a line holds a bare CR or LF (refused)."""
    lines = (payload + b"\r\n").split(b"\r\n")[:-1]
    if any(b"\r" in line or b"\n" in line for line in lines):
        return None
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b" "]), max_size=40).map(b"".join))
def test_data_is_read_as_the_rfc_says_whatever_the_bytes(payload: bytes) -> None:
    # Only payloads whose first end of data is the one we append (else the rest would be commands).
    assume(b"\r\n.\r\n" not in b"\r\n" + payload + b"\r\n" and payload != b".")

    async def session() -> tuple[str, list[Mail]]:
        handler = Recorder()
        async with serve(handler) as listener:
            c = await Raw.open(listener.port)
            await c.start()
            await c.send(payload + b"\r\n.\r\n")
            reply = await c.reply()
            assert await c.ask(b"NOOP") == "250 OK"  # exactly one reply to the DATA: in step
            await c.close()
        return reply, handler.mails

    reply, mails = asyncio.run(session())
    expected = rfc_reading(payload)
    if expected is None:
        assert code(reply) == "550 5.6.0" and mails == []
    else:
        assert code(reply) == "250 2.0.0" and [m.content for m in mails] == [expected]


# -- sizes ----------------------------------------------------------------------------------------


async def test_size_declared_at_mail_over_the_limit_is_552_5_3_4() -> None:
    async with serve() as listener:
        c = await Raw.open(listener.port)
        ehlo = await c.ask(b"EHLO client.test")
        assert f"250-SIZE {LIMIT}" in ehlo
        reply = await c.ask(b"MAIL FROM:<a@client.test> SIZE=%d" % (LIMIT + 1))
        assert code(reply) == "552 5.3.4"
        assert (await c.ask(b"MAIL FROM:<a@client.test> SIZE=%d" % LIMIT)).startswith("250")
        await c.close()
    assert listener.refused["size_declared"] == 1


async def test_a_body_three_times_the_limit_is_552_and_the_session_goes_on() -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        line = b"y" * 98 + b"\r\n"
        for _ in range(3 * LIMIT // len(line)):
            await c.send(line)
        await c.send(b".\r\n")
        assert code(await c.reply()) == "552 5.3.4"
        assert (await c.ask(b"NOOP")).startswith("250")
        await c.close()
    assert handler.mails == [] and listener.refused["size"] == 1


async def test_a_body_just_at_the_limit_passes_through_aiosmtplib() -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        body = b"Subject: s\r\n\r\n" + (b"z" * 76 + b"\r\n") * ((LIMIT - 100) // 78)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=False) as client:
            errors, reply = await client.sendmail("a@client.test", ["x@test"], body)
            assert errors == {} and reply.startswith("2.0.0")
            with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
                await client.sendmail("a@client.test", ["x@test"], body * 2)
            assert too_big.value.code == 552 and too_big.value.message.startswith("5.3.4")
    assert len(handler.mails) == 1


async def test_an_over_long_data_line_is_refused_and_the_session_goes_on() -> None:
    handler = Recorder()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        await c.send(b"Subject: a\r\n\r\n" + b"x" * 1500 + b"\r\n.\r\n")
        assert code(await c.reply()) == "500 5.5.2"
        assert (await c.ask(b"NOOP")).startswith("250")
        await c.close()
    assert handler.mails == []


async def test_over_long_command_lines_are_500_5_5_2() -> None:
    async with serve() as listener:
        c = await Raw.open(listener.port)
        assert code(await c.ask(b"NOOP " + b"x" * 600)) == "500 5.5.2"  # over 512 (RFC 5321)
        assert code(await c.ask(b"NOOP " + b"x" * 5000)) == "500 5.5.2"  # over the reader's buffer
        assert (await c.ask(b"NOOP")).startswith("250")
        await c.close()
    assert listener.refused["command_too_long"] == 2


# -- EHLO, STARTTLS, AUTH -------------------------------------------------------------------------


async def test_ehlo_offers_our_extensions_and_never_auth() -> None:
    async with serve() as listener:
        c = await Raw.open(listener.port)
        ehlo = await c.ask(b"EHLO client.test")
        keywords = [line[4:].split(" ")[0] for line in ehlo.split("\n")[1:]]
        assert keywords == ["SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING"]  # no STARTTLS without a cert
        assert code(await c.ask(b"AUTH PLAIN AGFkbWluAHNlY3JldA==")) == "502 5.5.1"
        await c.close()


def make_cert(tmp_path: Path) -> tuple[str, str, bytes]:
    cert, key = self_signed_cert(tmp_path, HOST)
    return str(cert), str(key), cert.read_bytes()


async def test_starttls_with_a_configured_certificate(tmp_path: Path) -> None:
    cert, key, pem = make_cert(tmp_path)
    client_tls = ssl.create_default_context(cadata=pem.decode())
    handler = Recorder()
    async with serve(handler, tls_cert=cert, tls_key=key) as listener:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=listener.port, start_tls=False, tls_context=client_tls
        )
        async with client:
            await client.ehlo()
            assert client.supports_extension("starttls") and not client.supports_extension("auth")
            await client.starttls()
            await client.ehlo()
            assert not client.supports_extension("starttls") and not client.supports_extension("auth")
            assert client.supports_extension("pipelining") and client.supports_extension("smtputf8")
            errors, _ = await client.sendmail("a@client.test", ["x@test"], b"Subject: tls\r\n\r\nhi\r\n")
            assert errors == {}
    assert [m.tls for m in handler.mails] == [True]


async def test_plaintext_sent_after_starttls_is_discarded(tmp_path: Path) -> None:
    """RFC 3207 §5 (the STARTTLS command injection of CVE-2011-0411 and kin)."""
    cert, key, pem = make_cert(tmp_path)
    async with serve(tls_cert=cert, tls_key=key) as listener:
        c = await Raw.open(listener.port)
        await c.ask(b"EHLO client.test")
        await c.send(b"STARTTLS\r\nHELP\r\n")  # HELP rides along in plaintext
        assert (await c.reply()).startswith("220")
        await c.writer.start_tls(ssl.create_default_context(cadata=pem.decode()), server_hostname=HOST)
        assert await c.ask(b"NOOP") == "250 OK"  # the next reply is NOOP's, not HELP's
        await c.close()


@pytest.mark.parametrize("garbage", [b"not TLS at all\r\n", b"\x16\x03\x01 a record that never ends"])
async def test_a_failed_or_stalled_tls_handshake_ends_only_that_session(
    tmp_path: Path, garbage: bytes
) -> None:
    cert, key, _ = make_cert(tmp_path)
    async with serve(tls_cert=cert, tls_key=key, limits={"idle_timeout": 0.3}) as listener:
        c = await Raw.open(listener.port)
        await c.ask(b"EHLO client.test")
        assert (await c.ask(b"STARTTLS")).startswith("220")
        await c.send(garbage)  # refused by OpenSSL at once / waited for until the idle timeout
        async with asyncio.timeout(10):
            await c.reader.read()  # a TLS alert perhaps, then the end
        await c.close()

        async def released() -> bool:
            return listener.connections == 0

        await eventually(released, "the failed session released")
        other = await Raw.open(listener.port)
        assert (await other.ask(b"NOOP")).startswith("250")
        await other.close()
    assert not listener.refused["exception"]


async def test_an_unusable_certificate_fails_at_start(tmp_path: Path) -> None:
    cert, key, _ = make_cert(tmp_path)
    cases: list[dict[str, Any]] = [
        {"tls_cert": str(tmp_path / "missing.pem"), "tls_key": key},
        {"tls_cert": cert},
    ]
    for kwargs in cases:
        listener = SmtpListener(
            Recorder(), host="127.0.0.1", port=0, hostname=HOST, max_message_bytes=LIMIT, **kwargs
        )
        with pytest.raises(SmtpTlsError) as err:
            await listener.start()
        assert err.value.key.startswith("smtp.tls_")
        assert not listener.serving


# -- limits ---------------------------------------------------------------------------------------


async def test_recipients_over_the_limit_get_452_and_the_rest_is_delivered() -> None:
    handler = Recorder()
    async with (
        serve(handler, limits={"max_recipients": 2}) as listener,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=False) as client,
    ):
        errors, _ = await client.sendmail(
            "a@client.test", ["a@test", "b@test", "c@test"], b"Subject: s\r\n\r\nx\r\n"
        )
    assert {k: (v.code, v.message[:5]) for k, v in errors.items()} == {"c@test": (452, "4.5.3")}
    assert [m.rcpt_tos for m in handler.mails] == [("a@test", "b@test")]


async def test_452_for_too_many_recipients_is_no_error_to_count() -> None:
    handler = Recorder()
    recipients = [f"r{i}@test" for i in range(8)]
    async with (
        serve(handler, limits={"max_recipients": 2, "max_errors": 3}) as listener,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, start_tls=False) as client,
    ):
        errors, _ = await client.sendmail("a@client.test", recipients, b"Subject: s\r\n\r\nx\r\n")
    assert sorted(errors) == recipients[2:]
    assert [m.rcpt_tos for m in handler.mails] == [tuple(recipients[:2])]


async def test_connections_over_the_total_get_421_at_connect() -> None:
    async with serve(limits={"max_connections": 2}) as listener:
        first, second = await Raw.open(listener.port), await Raw.open(listener.port)
        third = await Raw.open(listener.port, greeting=False)
        assert code(await third.reply()) == "421 4.7.0" and await third.closed()
        assert listener.connections == 2
        await first.ask(b"QUIT")
        await first.close()

        async def admitted() -> bool:
            return listener.connections == 1

        await eventually(admitted, "a released connection")
        fourth = await Raw.open(listener.port)
        assert (await fourth.ask(b"NOOP")).startswith("250")
        for c in (second, fourth):
            await c.close()
    assert listener.refused["connections"] == 1


async def test_connections_per_client_ip() -> None:
    async with serve(limits={"max_connections_per_ip": 1, **NO_IP_LIMITS}) as listener:
        first = await Raw.open(listener.port)
        second = await Raw.open(listener.port, greeting=False)
        assert code(await second.reply()) == "421 4.7.0" and await second.closed()
        await first.close()
    assert listener.refused["ip_connections"] == 1


async def test_loopback_is_exempt_from_per_ip_limits_by_default() -> None:
    async with serve(limits={"max_connections_per_ip": 1}) as listener:
        clients = [await Raw.open(listener.port) for _ in range(3)]
        for c in clients:
            await c.close()
    assert not listener.refused


async def test_connection_rate_per_client_ip_is_a_token_bucket() -> None:
    now = [1000.0]
    async with serve(
        limits={"connection_rate_per_ip": 2, **NO_IP_LIMITS}, monotonic=lambda: now[0]
    ) as listener:
        for _ in range(2):
            c = await Raw.open(listener.port)
            await c.close()
        refused = await Raw.open(listener.port, greeting=False)
        assert code(await refused.reply()) == "421 4.7.0" and await refused.closed()
        now[0] += 30  # 2 per minute: one token back
        again = await Raw.open(listener.port)
        await again.close()
    assert listener.refused["ip_rate"] == 1


def test_the_gate_keeps_bounded_state_and_groups_ipv6_by_64() -> None:
    limits = SmtpLimits(
        connection_rate_per_ip=1, max_connections=0, max_connections_per_ip=0, exempt_networks=()
    )
    gate = ConnectionGate(limits, lambda: 0.0, max_tracked=50)
    for i in range(1000):
        assert gate.admit(f"10.0.{i // 250}.{i % 250}") is None
        gate.release(f"10.0.{i // 250}.{i % 250}")
    assert len(gate.buckets) == 50 and not gate.per_client and gate.open == 0
    # One /64 is one client; the next /64 is another.
    assert gate.admit("2001:db8:1:2::1") is None
    assert gate.admit("2001:db8:1:2::ffff") == "ip_rate"
    assert gate.admit("2001:db8:1:3::1") is None
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    exempt = ConnectionGate(SmtpLimits(connection_rate_per_ip=1), lambda: 0.0)
    assert all(exempt.admit(ip) is None for ip in ["127.0.0.1", "127.0.0.1", "::1", "::1"])


async def test_an_idle_session_gets_421_4_4_2() -> None:
    async with serve(limits={"idle_timeout": 0.2}) as listener:
        c = await Raw.open(listener.port)
        reply = await c.reply()
        assert code(reply) == "421 4.4.2" and "Idle timeout" in reply and await c.closed()
    assert listener.refused["idle_timeout"] == 1


async def test_a_session_over_its_time_limit_gets_421_4_4_2() -> None:
    async with serve(limits={"max_session_seconds": 0.2, "idle_timeout": 60}) as listener:
        c = await Raw.open(listener.port)
        assert (await c.ask(b"NOOP")).startswith("250")
        reply = await c.reply()
        assert code(reply) == "421 4.4.2" and "Session time limit" in reply and await c.closed()
    assert listener.refused["session_timeout"] == 1


async def test_too_many_commands_then_421() -> None:
    async with serve(limits={"max_commands": 3}) as listener:
        c = await Raw.open(listener.port)
        for _ in range(3):
            assert (await c.ask(b"NOOP")).startswith("250")
        assert code(await c.ask(b"NOOP")) == "421 4.7.0" and await c.closed()


async def test_too_many_errors_then_421_and_a_delivery_starts_afresh() -> None:
    async with serve(limits={"max_errors": 3}) as listener:
        c = await Raw.open(listener.port)
        assert code(await c.ask(b"FOO")) == "500 5.5.1"
        assert (await c.ask(b"RCPT TO:<x@test>"))[:3] == "503"  # no HELO yet
        await c.start()
        await c.send(b"Subject: a\r\n\r\nb\r\n.\r\n")
        assert code(await c.reply()) == "250 2.0.0"  # a delivery: the error count starts again
        for _ in range(3):
            assert code(await c.ask(b"FOO")) == "500 5.5.1"
        assert code(await c.reply()) == "421 4.7.0" and await c.closed()
    assert listener.refused["errors"] == 1


# -- exceptions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_type", [Recorder, FailingExceptionHook, ChattyExceptionHook])
async def test_exceptions_are_451_without_our_text_and_everyone_goes_on(handler_type: type[Recorder]) -> None:
    handler = handler_type()
    async with serve(handler) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        await c.send(b"Subject: boom\r\n\r\nboom\r\n.\r\n")
        reply = await c.reply()
        assert code(reply) == "451 4.3.0" and "hunter2" not in reply and "RuntimeError" not in reply
        # The transaction is over; the same session and another one both deliver.
        other = await Raw.open(listener.port)
        await other.ask(b"EHLO client.test")
        for peer in (c, other):
            assert (await peer.ask(b"MAIL FROM:<a@client.test>")).startswith("250")
            rcpt = await peer.ask(b"RCPT TO:<crash@test>")
            assert code(rcpt) == "451 4.3.0" and "hunter2" not in rcpt
            assert (await peer.ask(b"RCPT TO:<x@test>")).startswith("250")
            assert (await peer.ask(b"DATA")).startswith("354")
            await peer.send(b"Subject: fine\r\n\r\nok\r\n.\r\n")
            assert code(await peer.reply()) == "250 2.0.0"
            await peer.close()
    assert len(handler.mails) == 2 and listener.refused["exception"] == 3


# -- metrics and shutdown -------------------------------------------------------------------------


async def test_metrics_count_refusals_and_connections() -> None:
    registry = CollectorRegistry()
    async with serve() as listener:
        refresh = listener.metrics(registry)
        c = await Raw.open(listener.port)
        await c.start()
        await c.send(b"a\nb\r\n.\r\n")
        await c.reply()
        await refresh()
        text = generate_latest(registry).decode()
        assert 'gateway_smtp_refused{reason="bare_newline_data"} 1.0' in text
        assert "gateway_smtp_connections 1.0" in text
        await c.close()


async def test_stop_says_421_4_3_2_to_open_sessions() -> None:
    listener = SmtpListener(Recorder(), host="127.0.0.1", port=0, hostname=HOST, max_message_bytes=LIMIT)
    await listener.start()
    c = await Raw.open(listener.port)
    await listener.stop(1)
    assert code(await c.reply()) == "421 4.3.2" and await c.closed()


async def test_the_daemon_passes_the_smtp_keys_and_exposes_metrics(
    db_target: DbTarget, tmp_path: Path
) -> None:
    cert, key, _ = make_cert(tmp_path)
    path = tmp_path / "gateway.toml"
    path.write_text(
        config_head(db_target, tmp_path)
        + f"""[smtp]
enabled = true
port = 0
mail_domain = "{HOST}"
message_id_secret = "{MESSAGE_ID_KEY.decode()}"
max_message_bytes = {LIMIT}
tls_cert = "{cert}"
tls_key = "{key}"
max_connections = 1
"""
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={})
    async with running(runtime), aiohttp.ClientSession() as http:
        assert runtime.smtp_port
        c = await Raw.open(runtime.smtp_port)
        ehlo = await c.ask(b"EHLO client.test")
        assert f"250-SIZE {LIMIT}" in ehlo and "STARTTLS" in ehlo and "AUTH" not in ehlo
        over = await Raw.open(runtime.smtp_port, greeting=False)
        assert code(await over.reply()) == "421 4.7.0" and await over.closed()
        async with http.get(f"http://127.0.0.1:{runtime.http_port}/metrics") as resp:
            text = await resp.text()
        assert 'gateway_smtp_refused{reason="connections"} 1.0' in text
        assert "gateway_smtp_connections 1.0" in text
        await c.close()


async def test_the_idle_timer_runs_between_data_lines_not_over_the_body() -> None:
    """A body trickling in (each line well within the idle time, the whole longer than it) is
    taken; a pause longer than the idle time inside DATA still ends the session with a 421."""
    async with serve(limits={"idle_timeout": 0.5}) as listener:
        c = await Raw.open(listener.port)
        await c.start()
        await c.send(b"Subject: slow\r\n\r\n")
        for n in range(10):  # about 1 s in all
            await asyncio.sleep(0.1)
            await c.send(b"line %d\r\n" % n)
        assert (await c.ask(b".")).startswith("250")
        await c.start()
        await c.send(b"Subject: stalled\r\n\r\nfirst line\r\n")
        reply = await c.reply()  # nothing more is sent
        assert code(reply) == "421 4.4.2" and "Idle timeout" in reply and await c.closed()
    assert listener.refused["idle_timeout"] == 1
