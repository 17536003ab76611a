"""IMAP ingress (gateway/imap) against a real Dovecot (tests/imap_server.py; skipped without one),
plus the pure parts (response parsers, envelope, config) without it.

The pipeline is a recording sink here (it stores by Message-ID like the real one, so a re-read is
"duplicate"); the end-to-end test with the real inbound-email service is the lead's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from conftest import MAIL_DOMAIN, MESSAGE_ID_KEY, DbTarget
from harness import config_head, eventually, running
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_server import PASSWORD, Dovecot, TcpProxy, dovecot_server, free_port

from gateway.config import ConfigError, load
from gateway.domain.inbound_mail import MailEnvelope, RecipientOutcome
from gateway.imap.client import (
    ImapConnection,
    ImapSettings,
    imap_quote,
    parse_fetch_body,
    parse_fetch_sizes,
    parse_search,
    parse_select,
    tls_context,
    uid_set,
)
from gateway.imap.envelope import envelope_for, header_block
from gateway.imap.errors import ImapCommandFailed, ImapError
from gateway.imap.poller import PROCESSED_KEYWORD, REJECTED_KEYWORD, ImapPoller, PollerSettings, PollerState
from gateway.mailauth import DictResolver, MailVerifier
from gateway.runtime import Runtime
from gateway.services.inbound_email import InboundEmailService, InboundEmailSettings
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.db import Database
from gateway.storage.tables import messages

DOMAIN = "mx.gateway.test"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def mail(
    n: int,
    *,
    to: str = f"support@{DOMAIN}",
    delivered_to: str | None = None,
    return_path: str | None = "<bob@customer.test>",
    body: bytes = b"Hello\r\n",
) -> bytes:
    head = []
    if return_path is not None:
        head.append(f"Return-Path: {return_path}")
    if delivered_to is not None:
        head.append(f"Delivered-To: {delivered_to}")
    head += [
        "From: Bob <bob@customer.test>",
        f"To: {to}",
        f"Subject: reply {n}",
        f"Message-ID: <m{n}-{uuid.uuid4().hex[:8]}@customer.test>",
        "Date: Mon, 24 Nov 2025 10:00:00 +0000",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def message_id(raw: bytes) -> str:
    return str(BytesHeaderParser().parsebytes(raw).get("Message-ID", ""))


class RecordingSink:
    """Stands in for the inbound-email service: stores by Message-ID (a second hand-over of the
    same message is ``duplicate``), raises while ``broken``, or hangs after "committing" to let a
    test crash the poller between commit and mark."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, MailEnvelope]] = []
        self.stored: dict[str, bytes] = {}
        self.broken = False
        self.hang_after_commit = False
        self.committed = asyncio.Event()

    async def receive(self, raw: bytes, envelope: MailEnvelope) -> list[RecipientOutcome]:
        self.calls.append((raw, envelope))
        if self.broken:
            raise RuntimeError("database unavailable")
        mid = message_id(raw)
        duplicate = mid in self.stored
        self.stored.setdefault(mid, raw)
        if self.hang_after_commit:
            self.committed.set()
            await asyncio.Event().wait()
        return [
            RecipientOutcome(address=a, accepted=True, message_id=mid, duplicate=duplicate)
            for a in envelope.rcpt_tos
        ]

    def handed(self, raw: bytes) -> int:
        mid = message_id(raw)
        return sum(1 for r, _ in self.calls if message_id(r) == mid)


def make_poller(
    port: int,
    user: str,
    sink: RecordingSink,
    *,
    tls: Any = "none",
    ssl_context: ssl.SSLContext | None = None,
    tenant_address: Any = None,
    timeout: float = 5.0,
    **kw: Any,
) -> ImapPoller:
    options: dict[str, Any] = {
        "retry_base": 0.05,
        "retry_max": 0.2,
        "interval": 0.2,
        "idle_timeout": 1700.0,
        **kw,
    }
    settings_ = PollerSettings(
        name="support",
        connection=ImapSettings(
            host="127.0.0.1", port=port, tls=tls, username=user, password=PASSWORD, timeout=timeout
        ),
        mail_domain=DOMAIN,
        **options,
    )
    return ImapPoller(
        settings_, sink, ssl_context=ssl_context, tenant_address=tenant_address, rng=random.Random(7)
    )


@contextlib.asynccontextmanager
async def polling(poller: ImapPoller) -> AsyncIterator[ImapPoller]:
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        yield poller
    finally:
        stop.set()
        # Bounded: a poller that does not stop on request is a failure, not a hang.
        await asyncio.wait_for(task, 10)
    assert poller.state == PollerState.STOPPED


async def until(check: Any, what: str) -> None:
    async def wrapped() -> bool:
        result = check()
        return bool(await result if inspect.isawaitable(result) else result)

    await eventually(wrapped, what)


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with dovecot_server(tmp_path_factory.mktemp("imap")) as server:
        yield server


@pytest.fixture
def user() -> str:
    # Any name logs in (static passdb); a fresh one is a fresh, empty mailbox.
    return f"u{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# Against Dovecot
# --------------------------------------------------------------------------------------------


async def test_messages_are_handed_then_flagged(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    first = mail(1, delivered_to=f"Sales+t1@{DOMAIN}", to=f"other@{DOMAIN}")
    second = mail(2, to=f"Support <support@{DOMAIN}>, someone@elsewhere.test", return_path="<>")
    await box.a_append(first)
    await box.a_append(second)
    sink = RecordingSink()
    async with polling(make_poller(dovecot.port, user, sink)) as poller:
        await until(lambda: len(sink.stored) == 2, "two messages handed")
        await until(
            lambda: _all_flagged(box, {"\\Seen", PROCESSED_KEYWORD}, 2), "both flagged after the hand-over"
        )
        await until(lambda: poller.state == PollerState.IDLE, "IDLE after the round")
        assert poller.idle_supported is True
        assert poller.connected
    by_id = {message_id(raw): env for raw, env in sink.calls}
    env1, env2 = by_id[message_id(first)], by_id[message_id(second)]
    # Delivered-To wins over To (the envelope recipient of this copy); Return-Path is the sender.
    assert env1 == MailEnvelope(
        mail_from="bob@customer.test", rcpt_tos=(f"Sales+t1@{DOMAIN}",), received_via="imap:support"
    )
    assert env2.mail_from == ""  # Return-Path: <> (a bounce)
    assert env2.rcpt_tos == (f"support@{DOMAIN}",)  # only our domain's addresses
    # The bytes are the message as stored, unaltered.
    assert {raw for raw, _ in sink.calls} == {first, second}
    assert poller.handled == 2 and poller.failed == 0 and poller.errors == 0
    assert poller.last_success is not None


async def _all_flagged(box: Any, flags: set[str], count: int, mailbox: str = "INBOX") -> bool:
    current = await box.a_flags(mailbox)
    return len(current) == count and all(flags <= f for f in current.values())


async def test_a_failed_hand_over_leaves_the_message_for_the_next_round(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    raw = mail(1)
    await box.a_append(raw)
    sink = RecordingSink()
    sink.broken = True
    async with polling(make_poller(dovecot.port, user, sink)) as poller:
        # Tried, failed, backed off, tried again: still unmarked (it cannot be marked while broken).
        await until(lambda: len(sink.calls) >= 2, "a retry after the failure")
        assert poller.failed >= 2
        flags = await box.a_flags()
        assert list(flags.values()) == [set()]  # not \Seen either: BODY.PEEK
        sink.broken = False
        await until(
            lambda: _all_flagged(box, {"\\Seen", PROCESSED_KEYWORD}, 1), "marked once it went through"
        )
        await until(lambda: poller.handled == 1, "counted (the mark's answer read)")
    assert list(sink.stored) == [message_id(raw)]


async def test_a_crash_between_commit_and_mark_re_reads_and_marks(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    raw = mail(1)
    await box.a_append(raw)
    sink = RecordingSink()
    sink.hang_after_commit = True
    poller = make_poller(dovecot.port, user, sink)
    task = asyncio.create_task(poller.run(asyncio.Event()))
    await asyncio.wait_for(sink.committed.wait(), 15)
    task.cancel()  # the process dies after the commit, before the mark
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert list((await box.a_flags()).values()) == [set()]

    sink.hang_after_commit = False
    async with polling(make_poller(dovecot.port, user, sink)) as again:
        await until(lambda: _all_flagged(box, {"\\Seen", PROCESSED_KEYWORD}, 1), "marked after the re-read")
        await until(lambda: again.duplicates == 1, "counted as a duplicate")
    assert sink.handed(raw) == 2  # handed again ...
    assert len(sink.stored) == 1  # ... and stored once (the pipeline's Message-ID check)


async def test_idle_wakes_on_new_mail(dovecot: Dovecot, user: str) -> None:
    sink = RecordingSink()
    # A poll interval and IDLE timeout far beyond the test: only the server's push can wake it.
    poller = make_poller(dovecot.port, user, sink, interval=3600.0, idle_timeout=1700.0)
    async with polling(poller):
        await until(lambda: poller.state == PollerState.IDLE, "IDLE on the empty mailbox")
        raw = mail(1)
        await dovecot.client(user).a_append(raw)  # a second client delivers
        await until(lambda: sink.handed(raw) == 1, "the new message handed")
        await until(lambda: poller.state == PollerState.IDLE, "back in IDLE")
    assert poller.connects == 1


async def test_server_drop_during_idle_reconnects(dovecot: Dovecot, user: str) -> None:
    sink = RecordingSink()
    async with TcpProxy(dovecot.port) as proxy:
        poller = make_poller(proxy.port, user, sink, interval=3600.0, idle_timeout=1700.0)
        async with polling(poller):
            await until(lambda: poller.state == PollerState.IDLE, "IDLE")
            proxy.drop()  # the server goes away mid-IDLE (FIN)
            await until(lambda: poller.connects == 2 and poller.state == PollerState.IDLE, "reconnected")
            assert poller.errors == 1
            raw = mail(1)
            await dovecot.client(user).a_append(raw)
            await until(lambda: sink.handed(raw) == 1, "mail after the reconnect handed")


async def test_a_silent_server_is_left_after_the_idle_timeout(
    dovecot: Dovecot, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No FIN, no data (a NAT that forgot the connection): the IDLE wait and the DONE are bounded."""
    sink = RecordingSink()
    async with TcpProxy(dovecot.port) as proxy:
        poller = make_poller(proxy.port, user, sink, idle_timeout=0.5, timeout=0.5)
        async with polling(poller):
            await until(lambda: poller.state == PollerState.IDLE, "IDLE")
            proxy.freeze()
            await until(lambda: poller.errors >= 1, "the silent connection given up")
            proxy.frozen = False
            await until(lambda: poller.connects >= 2 and poller.state == PollerState.IDLE, "reconnected")
            raw = mail(1)
            await dovecot.client(user).a_append(raw)
            await until(lambda: sink.handed(raw) == 1, "mail after the reconnect handed")
    errors = [getattr(r, "error", "") for r in caplog.records if r.msg.startswith("imap connection failed")]
    assert errors[0].startswith("IDLE: no answer within")  # DONE got no tagged OK: dropped


async def test_stop_while_connecting_does_not_wait_for_the_timeout(dovecot: Dovecot, user: str) -> None:
    async with TcpProxy(dovecot.port) as proxy:
        proxy.freeze()  # accepted, never greeted
        poller = make_poller(proxy.port, user, RecordingSink(), timeout=3600.0)
        async with polling(poller):  # its exit waits (bounded) for run() to return
            await until(lambda: proxy.accepted == 1 and poller.state == PollerState.CONNECTING, "connecting")
    assert poller.connects == 0


async def test_move_to_a_folder(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    raw = mail(1)
    await box.a_append(raw)
    sink = RecordingSink()
    async with polling(make_poller(dovecot.port, user, sink, move_to="Gateway.Done")) as poller:
        await until(lambda: _count(box, "Gateway.Done", 1), f"moved to the folder ({poller.last_error})")
        assert await box.a_flags("INBOX") == {}
    assert sink.handed(raw) == 1


async def _count(box: Any, mailbox: str, n: int) -> bool:
    try:
        return len(await box.a_flags(mailbox)) == n
    except AssertionError:  # the folder does not exist yet
        return False


async def test_without_idle_and_move_it_polls_and_copies(tmp_path: Path, user: str) -> None:
    """A server offering neither IDLE nor MOVE: poll every interval (NOOP, SEARCH); move is COPY,
    \\Deleted and UID EXPUNGE (UIDPLUS)."""
    with dovecot_server(tmp_path, capability="IMAP4rev1 LITERAL+ UIDPLUS") as server:
        box = server.client(user)
        box.create("Done")
        sink = RecordingSink()
        poller = make_poller(server.port, user, sink, move_to="Done", interval=0.1)
        async with polling(poller):
            await until(lambda: poller.state == PollerState.WAITING, "waiting between polls")
            assert poller.idle_supported is False
            raw = mail(1)
            await box.a_append(raw)
            await until(lambda: _count(box, "Done", 1), "copied to Done")
            await until(lambda: _count(box, "INBOX", 0), "expunged from INBOX")
        assert sink.handed(raw) == 1


async def test_messages_that_cannot_be_handed_are_left_for_a_person(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    nowhere = mail(1, to="someone@elsewhere.test")  # routing by recipient: none at our domain
    big = mail(2, body=b"x" * 5000)
    fine = mail(3)
    for raw in (nowhere, big, fine):
        await box.a_append(raw)
    sink = RecordingSink()
    async with polling(make_poller(dovecot.port, user, sink, max_message_bytes=4000)) as poller:
        await until(lambda: sink.handed(fine) == 1, "the routable message handed")
        await until(lambda: poller.rejected == 2 and poller.state == PollerState.IDLE, "two rejected")
    flags = sorted((await box.a_flags()).items())
    assert [f for _, f in flags] == [{REJECTED_KEYWORD}, {REJECTED_KEYWORD}, {"\\Seen", PROCESSED_KEYWORD}]
    assert sink.handed(nowhere) == 0 and sink.handed(big) == 0


async def test_a_tenant_bound_poller_sends_everything_to_the_tenant(dovecot: Dovecot, user: str) -> None:
    box = dovecot.client(user)
    raw = mail(1, to="someone@elsewhere.test")
    await box.a_append(raw)
    asked: list[str] = []

    async def tenant_address(tenant_id: str) -> str:
        asked.append(tenant_id)
        return f"acme@{DOMAIN}"

    sink = RecordingSink()
    async with polling(make_poller(dovecot.port, user, sink, tenant="ten_1", tenant_address=tenant_address)):
        await until(lambda: sink.handed(raw) == 1, "handed to the tenant")
    assert sink.calls[0][1].rcpt_tos == (f"acme@{DOMAIN}",)
    assert asked == ["ten_1"]


async def test_wrong_password_backs_off_and_retries(dovecot: Dovecot, user: str) -> None:
    sink = RecordingSink()
    poller = make_poller(dovecot.port, user, sink)
    poller.settings = PollerSettings(
        **{
            **{f: getattr(poller.settings, f) for f in poller.settings.__dataclass_fields__},
            "connection": ImapSettings("127.0.0.1", dovecot.port, "none", user, "wrong", timeout=5),
        }
    )
    async with polling(poller):
        await until(lambda: poller.errors >= 2, "two failed logins")
        assert not poller.connected
        assert "LOGIN" in (poller.last_error or "")
        assert "wrong" not in (poller.last_error or "")  # the password never reaches logs/state


async def test_a_refused_connection_is_retried(user: str) -> None:
    poller = make_poller(free_port(), user, RecordingSink())  # nothing listens there
    async with polling(poller):
        await until(lambda: poller.errors >= 2, "two failed connects")
        assert poller.connects == 0 and "connect" in (poller.last_error or "")


async def test_stop_during_idle_is_prompt_and_logs_out(dovecot: Dovecot, user: str) -> None:
    sink = RecordingSink()
    poller = make_poller(dovecot.port, user, sink)
    async with polling(poller):
        await until(lambda: poller.state == PollerState.IDLE, "IDLE")
    # polling() waited (bounded) for run() to return; Dovecot saw a LOGOUT, not a dropped socket.
    await until(
        lambda: f"imap({user})" in dovecot.log_tail() and "Logged out" in _lines(dovecot, user), "LOGOUT"
    )


def _lines(server: Dovecot, user: str) -> str:
    return "\n".join(line for line in server.log_tail().splitlines() if f"imap({user})" in line)


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with dovecot_server(tmp_path_factory.mktemp("imaps"), tls=True) as server:
        yield server


@pytest.mark.parametrize("mode", ["tls", "starttls"])
async def test_tls_modes(dovecot_tls: Dovecot, user: str, mode: str) -> None:
    assert dovecot_tls.cert is not None and dovecot_tls.tls_port is not None
    port = dovecot_tls.tls_port if mode == "tls" else dovecot_tls.port
    raw = mail(1)
    await dovecot_tls.client(user).a_append(raw)
    sink = RecordingSink()
    poller = make_poller(port, user, sink, tls=mode, ssl_context=tls_context(str(dovecot_tls.cert)))
    async with polling(poller):
        await until(lambda: sink.handed(raw) == 1, f"handed over {mode}")


async def test_an_untrusted_certificate_is_refused(dovecot_tls: Dovecot, user: str) -> None:
    assert dovecot_tls.tls_port is not None
    settings_ = ImapSettings("127.0.0.1", dovecot_tls.tls_port, "tls", user, PASSWORD, timeout=5)
    with pytest.raises(ImapError) as info:
        await ImapConnection.open(settings_, tls_context())  # system CAs only
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_starttls_is_required_when_configured(dovecot: Dovecot, user: str) -> None:
    """A server without STARTTLS: refuse, never continue in clear text."""
    settings_ = ImapSettings("127.0.0.1", dovecot.port, "starttls", user, PASSWORD, timeout=5)
    with pytest.raises(ImapCommandFailed) as info:
        await ImapConnection.open(settings_, tls_context())
    assert info.value.command == "STARTTLS"


# -- with the real inbound-email service -------------------------------------------------------


async def test_a_threaded_reply_through_imap_is_stored_once(
    dovecot: Dovecot, user: str, api: Any, db: Database, clock: Any, tmp_path: Path
) -> None:
    """Issue 6 "the same through IMAP for one threaded reply": a contact answers a tenant's email;
    the reply lands in its thread; read again after a lost mark, it is stored once."""
    data_dir = tmp_path / "data"
    service = InboundEmailService(
        db,
        clock,
        InboundEmailSettings(mail_domain=MAIL_DOMAIN, message_id_key=MESSAGE_ID_KEY, data_dir=data_dir),
        verifier=MailVerifier(DictResolver({}), sample=lambda: 0.0),
        files=AttachmentFiles(data_dir / "attachments"),
    )
    resp = await api.post("/v1/tenants", json={"name": "Serwis"}, headers=api.admin)
    tenant = await resp.json()
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    resp = await api.put(
        "/v1/contacts/jan", json={"name": "Jan", "emails": ["jan@example.com"]}, headers=auth
    )
    assert resp.status in (200, 201)
    resp = await api.post(
        "/v1/messages",
        json={"contact_id": "jan", "channels": ["email"], "subject": "Your repair", "text": "Ready."},
        headers=auth,
    )
    assert resp.status == 202
    out_id = (await resp.json())["messages"][0]["id"]
    (out,) = await _rows(db, messages.c.id == out_id)
    reply = (
        "Return-Path: <jan@example.com>\r\n"
        f"Delivered-To: {tenant['mailbox_address']}\r\n"
        "From: Jan <jan@example.com>\r\n"
        f"To: {tenant['mailbox_address']}\r\n"
        "Subject: Re: Your repair\r\n"
        "Message-ID: <reply-1@example.com>\r\n"
        f"In-Reply-To: {out['email_message_id']}\r\n"
        "Date: Tue, 24 Nov 2026 12:00:00 +0000\r\n\r\nThanks, see you tomorrow.\r\n"
    ).encode()
    box = dovecot.client(user)
    await box.a_append(reply)

    def poller() -> ImapPoller:
        settings_ = PollerSettings(
            name="support",
            connection=ImapSettings("127.0.0.1", dovecot.port, "none", user, PASSWORD, timeout=5),
            mail_domain=MAIL_DOMAIN,
            retry_base=0.05,
            retry_max=0.2,
        )
        return ImapPoller(settings_, service, ssl_context=None, rng=random.Random(3))

    async with polling(poller()) as first:
        await until(lambda: _all_flagged(box, {"\\Seen", PROCESSED_KEYWORD}, 1), "marked after the commit")
        await until(lambda: first.handled == 1, "counted")
        assert first.duplicates == 0
    inbound = await _rows(db, messages.c.tenant_id == tenant["id"], messages.c.direction == "inbound")
    assert [(m["thread_id"], m["sender"], m["channel"]) for m in inbound] == [
        (out["thread_id"], "jan@example.com", "email")
    ]
    assert inbound[0]["email_headers"]["received_via"] == "imap:support"
    assert inbound[0]["email_headers"]["threaded_by"] == "in_reply_to"

    await asyncio.to_thread(_unmark, box)  # as if the mark had been lost in a crash
    async with polling(poller()) as second:
        await until(lambda: second.handled == 1, "handed again")
        assert second.duplicates == 1
    assert len(await _rows(db, messages.c.tenant_id == tenant["id"], messages.c.direction == "inbound")) == 1


async def _rows(db: Database, *where: Any) -> list[dict[str, Any]]:
    result = await db.read(lambda conn: conn.execute(sa.select(messages).where(*where)))
    return [dict(r) for r in result.mappings()]


def _unmark(box: Any) -> None:
    imap = box._conn()
    imap.select("INBOX")
    imap.uid("STORE", "1:*", "-FLAGS", f"(\\Seen {PROCESSED_KEYWORD})")


# -- wired into the daemon ---------------------------------------------------------------------


async def test_runtime_starts_pollers_and_reports_them(
    dovecot: Dovecot, user: str, db_target: DbTarget, tmp_path: Path
) -> None:
    raw = mail(1)
    await dovecot.client(user).a_append(raw)
    path = tmp_path / "gateway.toml"
    path.write_text(
        config_head(db_target, tmp_path)
        + f"""[daemon]
shutdown_timeout_seconds = 5
[smtp]
mail_domain = "{DOMAIN}"
[[imap.pollers]]
name = "support"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{user}"
password = "{PASSWORD}"
"""
    )
    sink = RecordingSink()
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={}, inbound_mail=sink)
    async with running(runtime), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{runtime.http_port}"
        await until(lambda: sink.handed(raw) == 1, "handed by the daemon's poller")
        await until(lambda: runtime.imap_pollers[0].state == PollerState.IDLE, "IDLE")
        async with http.get(base + "/readyz") as resp:
            body = await resp.json()
        imap = body["checks"]["imap"]
        assert imap["ok"] is True
        assert imap["pollers"][0]["name"] == "support"
        assert imap["pollers"][0]["state"] == "idle"
        assert imap["pollers"][0]["handled"] == 1
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
        assert 'gateway_imap_connected{poller="support"} 1.0' in text
        assert 'gateway_imap_messages{poller="support",result="handled"} 1.0' in text
        assert 'gateway_imap_state{poller="support",state="idle"} 1.0' in text
    assert runtime.imap_pollers[0].state == PollerState.STOPPED


# --------------------------------------------------------------------------------------------
# Pure parts (no server)
# --------------------------------------------------------------------------------------------


def test_uid_set() -> None:
    assert uid_set([7, 1, 2, 3, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError):
        uid_set([])


@given(st.sets(st.integers(1, 2000), min_size=1))
def test_uid_set_round_trips(uids: set[int]) -> None:
    out: set[int] = set()
    for part in uid_set(uids).split(","):
        lo, _, hi = part.partition(":")
        out.update(range(int(lo), int(hi or lo) + 1))
    assert out == uids


def test_quote() -> None:
    assert imap_quote('a "b" \\c') == '"a \\"b\\" \\\\c"'


def test_parsers() -> None:
    assert parse_search([b"SEARCH 3 1 2", b"Search completed (0.001 secs)."]) == [1, 2, 3]
    assert parse_search([b"SEARCH", b"Search completed."]) == []
    assert parse_search([b"4 5", b"Search completed (0.001 + 0.000 secs)."]) == [4, 5]  # aioimaplib's form
    assert parse_search([b"Search completed 2."]) == []
    info = parse_select(
        [
            b"FLAGS (\\Answered \\Seen)",
            b"OK [PERMANENTFLAGS (\\Answered \\Seen \\*)] Flags permitted.",
            b"4 EXISTS",
            b"0 RECENT",
            b"OK [UIDVALIDITY 1795499517] UIDs valid",
            b"[READ-WRITE] Select completed.",
        ]
    )
    assert (info.exists, info.uidvalidity, info.keywords_allowed) == (4, 1795499517, True)
    assert not parse_select([b"OK [PERMANENTFLAGS (\\Seen)] x", b"done"]).keywords_allowed
    assert parse_fetch_sizes(
        [
            b"1 FETCH (UID 4 RFC822.SIZE 120)",
            b"2 FETCH (FLAGS (\\Seen))",
            b"3 FETCH (RFC822.SIZE 9 UID 8)",
            b"ok",
        ]
    ) == {4: 120, 8: 9}
    body = bytearray(b"Subject: x\r\n\r\nhi\r\n")
    # UID before or after the literal; another message's literal is not taken.
    assert parse_fetch_body([b"1 FETCH (UID 5 BODY[] {19}", body, b")", b"ok"], 5) == bytes(body)
    assert parse_fetch_body([b"1 FETCH (BODY[] {19}", body, b" UID 5)", b"ok"], 5) == bytes(body)
    assert parse_fetch_body([b"1 FETCH (UID 6 BODY[] {19}", body, b")", b"ok"], 5) is None
    assert parse_fetch_body([b"Fetch completed."], 5) is None


def test_envelope_rules() -> None:
    raw = (
        b"Return-Path: <b@x.test>\r\nX-Original-To: A+tok@MX.Gateway.Test\r\n"
        b"To: c@mx.gateway.test\r\n\r\nbody with To: d@mx.gateway.test\r\n"
    )
    env = envelope_for(raw, poller="p", mail_domain=DOMAIN)
    assert env is not None and env.rcpt_tos == ("A+tok@MX.Gateway.Test",) and env.mail_from == "b@x.test"
    # No envelope header at our domain: To and Cc, deduplicated case-insensitively.
    raw = b"To: a@mx.gateway.test, x@other.test\r\nCc: A@MX.gateway.test, b@mx.gateway.test\r\n\r\n"
    env = envelope_for(raw, poller="p", mail_domain=DOMAIN)
    assert (
        env is not None and env.rcpt_tos == ("a@mx.gateway.test", "b@mx.gateway.test") and env.mail_from == ""
    )
    assert envelope_for(b"To: x@other.test\r\n\r\n", poller="p", mail_domain=DOMAIN) is None
    assert envelope_for(b"\r\n", poller="p", mail_domain=DOMAIN, fixed_recipient="t@d") == MailEnvelope(
        mail_from="", rcpt_tos=("t@d",), received_via="imap:p"
    )
    # Headers end at the first empty line, bare LF included; capped.
    assert header_block(b"A: 1\n\nB: 2\r\n\r\n") == b"A: 1\r\n"
    assert len(header_block(b"A" * 10, limit=4)) == 4


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_envelope_never_raises_and_only_routes_to_our_domain(raw: bytes) -> None:
    env = envelope_for(raw, poller="p", mail_domain=DOMAIN)
    if env is not None:
        assert env.rcpt_tos and all(a.lower().endswith("@" + DOMAIN) for a in env.rcpt_tos)


@given(
    st.lists(st.sampled_from(["To", "Cc", "Delivered-To", "X-Original-To", "Subject"]), max_size=6), st.data()
)
def test_envelope_recipients_come_from_the_right_headers(names: list[str], data: st.DataObject) -> None:
    local = st.from_regex(r"[a-z][a-z0-9.+]{0,10}", fullmatch=True)
    lines, env_addrs, hdr_addrs = [], [], []
    for name in names:
        addr = f"{data.draw(local)}@{data.draw(st.sampled_from([DOMAIN, 'other.test']))}"
        lines.append(f"{name}: {addr}")
        if addr.endswith(DOMAIN):
            (
                env_addrs
                if name in ("Delivered-To", "X-Original-To")
                else hdr_addrs
                if name != "Subject"
                else []
            ).append(addr)
    env = envelope_for(("\r\n".join(lines) + "\r\n\r\n").encode(), poller="p", mail_domain=DOMAIN)
    expected = env_addrs or hdr_addrs
    dedup = list(dict.fromkeys(a.lower() for a in expected))
    assert (env is None) == (not expected)
    if env is not None:
        assert sorted(a.lower() for a in env.rcpt_tos) == sorted(dedup)  # each once, none other


def _conf(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ('tls = "none"', "tls", "in clear"),
        ('tls = "yes"', "tls", "must be one of"),
        ('on_success = "move:INBOX"', "on_success", "other than"),
        ('on_success = "delete"', "on_success", "flag"),
        ('mailbox = "Boîte"', "mailbox", "ASCII"),
        ("retry_base_seconds = 10\nretry_max_seconds = 5", "retry_max_seconds", ">="),
        ("idle_timeout_seconds = 3600", "idle_timeout_seconds", "<="),
    ],
)
def test_config_rules(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    path = _conf(
        tmp_path, f'[[imap.pollers]]\nname = "p"\nhost = "imap.example.com"\nusername = "u"\n{extra}\n'
    )
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert info.value.key == f"imap.pollers[0].{key}"
    assert reason in info.value.reason


def test_config_defaults_and_masking(tmp_path: Path) -> None:
    from gateway.config import to_masked_dict

    path = _conf(
        tmp_path,
        '[[imap.pollers]]\nname = "p"\nhost = "127.0.0.1"\nusername = "u"\npassword = "hunter2"\n'
        'tls = "none"\non_success = "move:Archive/Gateway"\ntenant = "ten_x"\n',
    )
    cfg = load(path, {})
    p = cfg.imap.pollers[0]
    assert (p.tls, p.on_success, p.tenant, p.idle_timeout_seconds) == (
        "none",
        "move:Archive/Gateway",
        "ten_x",
        300.0,
    )
    masked = to_masked_dict(cfg)
    assert masked["imap"]["pollers"][0]["password"] == "***"
    assert not re.search("hunter2", repr(masked))
