"""Mail to bounce addresses through the SMTP listener (real sockets, aiosmtplib as the peer) into the
bounce service (both databases): DSNs fail messages, everything else leaves a drop record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa
from conftest import EMAIL_SETTINGS, MAIL_DOMAIN, MESSAGE_ID_KEY, SMS_SETTINGS, FakeClock
from smtp_sink import make_dsn

from gateway.domain.email_ids import make_verp
from gateway.services.bounces import BounceService
from gateway.services.outbound import OutboundService, SendRequest
from gateway.services.tenants import TenantService, TenantSettings
from gateway.smtp.handler import InboundHandler
from gateway.smtp.server import SmtpListener
from gateway.storage import messages as repo
from gateway.storage.db import Database
from gateway.storage.tables import drops, events, jobs


class Env:
    def __init__(
        self, db: Database, listener: SmtpListener, handler: InboundHandler, message: dict[str, Any]
    ):
        self.db = db
        self.listener = listener
        self.handler = handler
        self.message = message
        self.verp = make_verp(MESSAGE_ID_KEY, MAIL_DOMAIN, message["id"])

    async def send(
        self, data: bytes, *, rcpt: str | None = None, sender: str = ""
    ) -> aiosmtplib.SMTPResponse:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.listener.port, start_tls=False) as c:
            await c.mail(sender)
            try:
                await c.rcpt(rcpt or self.verp)
            except aiosmtplib.SMTPRecipientRefused as exc:
                raise aiosmtplib.SMTPRecipientsRefused([exc]) from None
            return await c.data(data)

    async def status(self) -> dict[str, Any]:
        m = await self.db.read(lambda conn: repo.get_message(conn, self.message["id"]))
        assert m is not None
        return m

    async def table(self, table: sa.Table) -> list[dict[str, Any]]:
        result = await self.db.read(lambda conn: conn.execute(sa.select(table).order_by(table.c.id)))
        return [dict(r) for r in result.mappings()]


@pytest.fixture
async def env(db: Database, clock: FakeClock) -> AsyncIterator[Env]:
    tenants = TenantService(db, clock, mail_domain=MAIL_DOMAIN, default_quota_bytes=0)
    t = (await tenants.create(TenantSettings(name="Serwis"))).tenant
    outbound = OutboundService(db, clock, SMS_SETTINGS, email=EMAIL_SETTINGS)
    _, body = await outbound.send(
        t.id, SendRequest(channels=("email",), text="x", to_email="jan@example.com"), "h"
    )
    (message,) = body["messages"]
    handler = InboundHandler(
        mail_domain=MAIL_DOMAIN, verp_key=MESSAGE_ID_KEY, bounces=BounceService(db, clock)
    )
    listener = SmtpListener(handler, host="127.0.0.1", port=0, hostname=MAIL_DOMAIN, max_message_bytes=20_000)
    await listener.start()
    try:
        yield Env(db, listener, handler, {**message, "tenant_id": t.id})
    finally:
        await listener.stop(1)


async def test_failed_dsn_fails_the_message_once_and_cancels_its_send(env: Env) -> None:
    reply = await env.send(make_dsn(to=env.verp, status="5.2.2", diagnostic="smtp; 552 5.2.2 Mailbox full"))
    assert reply.code == 250
    m = await env.status()
    assert (m["status"], m["status_reason"]) == ("failed", "5.2.2 smtp; 552 5.2.2 Mailbox full")
    assert [j["status"] for j in await env.table(jobs)] == ["cancelled"]  # it was still queued
    await env.send(make_dsn(to=env.verp.upper().replace(MAIL_DOMAIN.upper(), MAIL_DOMAIN)))  # again, any case
    failures = [e for e in await env.table(events) if e["payload"].get("status") == "failed"]
    assert (
        len(failures) == 1
        and failures[0]["payload"]["bounce"]["diagnostic"] == "smtp; 552 5.2.2 Mailbox full"
    )
    assert (await env.status())["status_reason"].startswith("5.2.2")  # the first reason stays
    assert await env.table(drops) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b"From: jan@example.com\r\nAuto-Submitted: auto-replied\r\nSubject: Away\r\n\r\nAway.\r\n",
            "auto_reply",
        ),
        (b"From: jan@example.com\r\nX-Autoreply: yes\r\nSubject: Urlop\r\n\r\nNa urlopie.\r\n", "auto_reply"),
        (None, "delivery_report"),  # a "delayed" DSN
        (b"From: someone@example.com\r\nSubject: hello\r\n\r\nhi\r\n", "not_a_bounce"),
    ],
    ids=["auto-submitted", "x-autoreply", "delayed-dsn", "plain-mail"],
)
async def test_other_mail_to_a_bounce_address_is_a_drop_record(
    env: Env, data: bytes | None, reason: str
) -> None:
    raw = data or make_dsn(to=env.verp, action="delayed", status="4.4.1")
    assert (await env.send(raw, sender="jan@example.com")).code == 250
    assert (await env.status())["status"] == "queued"
    (drop,) = await env.table(drops)
    assert (drop["reason"], drop["tenant_id"], drop["channel"]) == (reason, env.message["tenant_id"], "email")
    assert drop["recipient"] == env.verp and drop["size_bytes"] == len(raw)
    assert env.message["id"] in drop["detail"]
    assert not [
        e
        for e in await env.table(events)
        if e["type"] != "message.status" or e["payload"]["status"] != "queued"
    ]


async def test_rcpt_checks_and_replies(env: Env, db: Database, clock: FakeClock) -> None:
    mac_end = env.verp[-len(MAIL_DOMAIN) - 3 : -len(MAIL_DOMAIN) - 1]
    for rcpt in (
        f"someone@{MAIL_DOMAIN}",
        f"bounce@{MAIL_DOMAIN}",
        env.verp.replace(MAIL_DOMAIN, "other.example"),
        # The MAC altered (its last two characters, to something they are not: ids are random).
        env.verp[: -len(MAIL_DOMAIN) - 3] + ("11" if mac_end == "00" else "00") + "@" + MAIL_DOMAIN,
        make_verp(b"another-key-0123456789", MAIL_DOMAIN, env.message["id"]),
    ):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as err:
            await env.send(b"Subject: x\r\n\r\nx\r\n", rcpt=rcpt)
        # Another domain is a relay attempt (5.7.1, issue 6); ours without such a mailbox is 5.1.1.
        expected = "5.7.1" if "other.example" in rcpt else "5.1.1"
        assert err.value.recipients[0].code == 550 and err.value.recipients[0].message.startswith(expected)
    # A valid token whose message is gone: accepted (the token is ours), an admin drop record.
    gone = make_verp(MESSAGE_ID_KEY, MAIL_DOMAIN, "msg_0000000000000000")
    assert (await env.send(make_dsn(to=gone), rcpt=gone)).code == 250
    (drop,) = await env.table(drops)
    assert (drop["reason"], drop["tenant_id"]) == ("unknown_message", None)
    # Too big: 552 with its enhanced code (RFC 3463 5.3.4).
    with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
        await env.send(b"Subject: x\r\n\r\n" + (b"x" * 900 + b"\r\n") * 30)
    assert too_big.value.code == 552 and too_big.value.message.startswith("5.3.4")


async def test_a_failure_while_storing_is_451_without_our_error_text(env: Env, monkeypatch: Any) -> None:
    async def broken(mail: Any) -> list[str]:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(env.handler.bounces, "receive", broken)
    with pytest.raises(aiosmtplib.SMTPDataError) as err:
        await env.send(make_dsn(to=env.verp))
    assert (
        err.value.code == 451
        and "hunter2" not in err.value.message
        and "RuntimeError" not in err.value.message
    )
    assert (await env.status())["status"] == "queued"
