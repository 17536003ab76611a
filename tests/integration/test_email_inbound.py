"""Inbound email (issue 6) through a real SMTP client (aiosmtplib) into our listener, the handler and
the inbound-email service, on SQLite and PostgreSQL: threading, the reply window, the allowlist,
sender verification (the real verifier over a dictionary of DNS records), attachments under quota,
idempotency, and what the thread API then shows. The tenant side goes through the real HTTP app
(the ``api`` fixture) with the injected clock.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from conftest import MAIL_DOMAIN, MESSAGE_ID_KEY, DbTarget, FakeClock
from harness import ApiClient, config_head, running

from gateway.config import load
from gateway.domain.email_ids import make_message_id
from gateway.domain.inbound_mail import MailEnvelope
from gateway.http.context import ApiContext
from gateway.mailauth import DictResolver, MailVerifier
from gateway.runtime import Runtime
from gateway.services.bounces import BounceService
from gateway.services.inbound_email import InboundEmailService, InboundEmailSettings
from gateway.smtp.handler import InboundHandler
from gateway.smtp.server import SmtpListener
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.db import Database
from gateway.storage.tables import attachments, drops, events, messages, tenants, threads

JAN = "jan@example.com"
ADMIN = "inbound-email-admin-token-0123456789"
#: example.com: SPF passes for 127.0.0.1 (aligned with From: verified). firm.pl: no records
#: (unverified). bank.example: DMARC p=reject, SPF fails everyone (a spoofing target).
DNS = {
    "example.com": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "bank.example": {"TXT": ["v=spf1 -all"]},
    "_dmarc.bank.example": {"TXT": ["v=DMARC1; p=reject"]},
}


def mail(
    *,
    sender: str = JAN,
    to: str,
    subject: str = "Re: your repair",
    body: str = "Thanks, see you tomorrow.",
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    message_id: str = "<m1@example.com>",
    files: tuple[tuple[str, bytes], ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    m = EmailMessage()
    m["From"] = f"Jan Kowalski <{sender}>"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = message_id
    m["Date"] = "Tue, 24 Nov 2026 12:00:00 +0000"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    if references:
        m["References"] = " ".join(references)
    for name, value in headers:
        m[name] = value
    m.set_content(body)
    for filename, data in files:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    # Unfolded: Python's folder would turn a long msg-id into RFC 2047 encoded-words (which RFC 2047
    # §5 forbids there, and which would hide the reference from any reader).
    return m.as_bytes(policy=SMTP_POLICY.clone(max_line_length=998))


class Env:
    def __init__(
        self, api: Any, db: Database, clock: FakeClock, listener: SmtpListener, data_dir: Path
    ) -> None:
        self.api = api
        self.db = db
        self.clock = clock
        self.listener = listener
        self.data_dir = data_dir

    async def tenant(self, name: str, **extra: Any) -> dict[str, Any]:
        resp = await self.api.post("/v1/tenants", json={"name": name, **extra}, headers=self.api.admin)
        body = await resp.json()
        assert resp.status == 201, body
        return {
            "id": body["id"],
            "prefix": body["mailbox_prefix"],
            "address": body["mailbox_address"],
            "auth": {"Authorization": f"Bearer {body['api_key']}"},
        }

    async def contact(self, t: dict[str, Any], cid: str, *emails: str, blocked: bool = False) -> None:
        resp = await self.api.put(
            f"/v1/contacts/{cid}",
            json={"name": cid, "emails": list(emails), "blocked": blocked},
            headers=t["auth"],
        )
        assert resp.status in (200, 201), await resp.json()

    async def outbound(self, t: dict[str, Any], cid: str) -> dict[str, Any]:
        """An email from the tenant to a contact: its stored row (Message-ID, thread)."""
        resp = await self.api.post(
            "/v1/messages",
            json={"contact_id": cid, "channels": ["email"], "subject": "Your repair", "text": "Ready."},
            headers=t["auth"],
        )
        body = await resp.json()
        assert resp.status == 202, body
        (row,) = await self.rows(messages, messages.c.id == body["messages"][0]["id"])
        return row

    async def send(
        self, raw: bytes, *rcpts: str, mail_from: str = JAN
    ) -> tuple[int, str, dict[str, tuple[int, str]]]:
        """One SMTP transaction: (DATA reply code, text, refusals at RCPT by address)."""
        refused: dict[str, tuple[int, str]] = {}
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.listener.port, start_tls=False) as c:
            await c.mail(mail_from)
            for r in rcpts:
                try:
                    await c.rcpt(r)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused[r] = (exc.code, exc.message)
            if len(refused) == len(rcpts):
                return 0, "", refused
            try:
                reply = await c.data(raw)
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code, exc.message, refused
            return reply.code, reply.message, refused

    async def rows(self, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
        q = sa.select(table).where(*where)
        if "created_at" in table.c:
            q = q.order_by(table.c.created_at, table.c.id)
        result = await self.db.read(lambda conn: conn.execute(q))
        return [dict(r) for r in result.mappings()]

    async def inbound(self, t: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.rows(messages, messages.c.tenant_id == t["id"], messages.c.direction == "inbound")

    async def drops(self, t: dict[str, Any] | None) -> list[dict[str, Any]]:
        tenant = drops.c.tenant_id.is_(None) if t is None else drops.c.tenant_id == t["id"]
        return await self.rows(drops, tenant)

    async def events(self, t: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        rows = await self.rows(events, events.c.tenant_id == t["id"], events.c.type == kind)
        return [r["payload"] for r in rows]


@pytest.fixture
async def env(
    api: Any, api_context: ApiContext, db: Database, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Env]:
    data_dir = tmp_path / "data"  # the api fixture's ConversationService serves files from here
    service = InboundEmailService(
        db,
        clock,
        InboundEmailSettings(mail_domain=MAIL_DOMAIN, message_id_key=MESSAGE_ID_KEY, data_dir=data_dir),
        verifier=MailVerifier(DictResolver(DNS), sample=lambda: 0.0),
        files=AttachmentFiles(data_dir / "attachments"),
    )
    handler = InboundHandler(
        mail_domain=MAIL_DOMAIN, verp_key=MESSAGE_ID_KEY, bounces=BounceService(db, clock), inbound=service
    )
    listener = SmtpListener(handler, host="127.0.0.1", port=0, hostname=MAIL_DOMAIN, max_message_bytes=2**20)
    await listener.start()
    try:
        yield Env(api, db, clock, listener, data_dir)
    finally:
        await listener.stop(1)


# --- threading -----------------------------------------------------------------------------------


async def test_a_reply_joins_its_thread_verified_with_our_authentication_results(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    out = await env.outbound(t, "jan")
    env.clock.advance(days=2)
    raw = mail(
        to=t["address"],
        in_reply_to=out["email_message_id"],
        headers=(("Authentication-Results", f"{MAIL_DOMAIN}; dkim=pass header.d=forged.example"),),
    )
    code, text, _ = await env.send(raw, t["address"])
    assert code == 250, text
    (m,) = await env.inbound(t)
    assert (m["thread_id"], m["channel"], m["status"], m["sender"]) == (
        out["thread_id"],
        "email",
        "received",
        JAN,
    )
    assert m["contact_pk"] == out["contact_pk"] and m["sender_verified"] is True
    assert m["subject"] == "Re: your repair" and m["text"].strip() == "Thanks, see you tomorrow."
    assert m["in_reply_to"] == out["email_message_id"] and m["size_bytes"] == len(raw)
    results = m["email_headers"]["authentication_results"]
    assert results.startswith(MAIL_DOMAIN) and "spf=pass" in results and "forged.example" not in results
    assert m["email_headers"]["threaded_by"] == "in_reply_to"
    (event,) = await env.events(t, "message.received")
    assert event["channel"] == "email" and event["contact_id"] == "jan" and event["sender_verified"] is True
    assert event["thread_id"] == out["thread_id"] and event["message_id"] == m["id"]
    # The thread API shows both directions, oldest first.
    resp = await env.api.get(f"/v1/threads/{out['thread_id']}", headers=t["auth"])
    thread = await resp.json()
    assert [(x["direction"], x["channel"]) for x in thread["messages"]] == [
        ("outbound", "email"),
        ("inbound", "email"),
    ]


async def test_references_only_newest_first_and_forged_or_foreign_ids_are_ignored(env: Env) -> None:
    t = await env.tenant("Serwis")
    other = await env.tenant("Other")
    await env.contact(t, "jan", JAN)
    await env.contact(other, "jan", JAN)
    first = await env.outbound(t, "jan")
    theirs = await env.outbound(other, "jan")
    forged = make_message_id(
        b"not-our-key-0123456789", MAIL_DOMAIN, tenant_id=t["id"], thread_id="thr_x", message_id="msg_x"
    )
    # References: ours (oldest), then the other tenant's, then a forged one (newest): only ours counts.
    raw = mail(to=t["address"], references=(first["email_message_id"], theirs["email_message_id"], forged))
    assert (await env.send(raw, t["address"]))[0] == 250
    (m,) = await env.inbound(t)
    assert m["thread_id"] == first["thread_id"] and m["email_headers"]["threaded_by"] == "references"
    # Holding another tenant's Message-ID opens nothing of theirs: a new thread here.
    env.clock.advance(minutes=1)
    raw = mail(to=t["address"], in_reply_to=theirs["email_message_id"], message_id="<m2@example.com>")
    assert (await env.send(raw, t["address"]))[0] == 250
    second = (await env.inbound(t))[1]
    assert second["thread_id"] not in (first["thread_id"], theirs["thread_id"])
    assert await env.inbound(other) == []


async def test_a_plus_token_threads_and_a_fresh_mail_opens_a_new_thread(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    out = await env.outbound(t, "jan")
    (thread,) = await env.rows(threads, threads.c.id == out["thread_id"])
    tokened = f"{t['prefix'].upper()}+{thread['token'].upper()}@{MAIL_DOMAIN.upper()}"
    assert (await env.send(mail(to=tokened), tokened))[0] == 250
    env.clock.advance(minutes=1)
    assert (await env.send(mail(to=t["address"], message_id="<new@example.com>"), t["address"]))[0] == 250
    by_token, fresh = await env.inbound(t)
    assert by_token["thread_id"] == out["thread_id"] and by_token["email_headers"]["threaded_by"] == "token"
    assert fresh["thread_id"] != out["thread_id"] and fresh["contact_pk"] == out["contact_pk"]


async def test_a_reply_to_a_16_day_old_message_is_refused_with_a_drop(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    out = await env.outbound(t, "jan")
    env.clock.advance(days=16)
    code, text, _ = await env.send(mail(to=t["address"], in_reply_to=out["email_message_id"]), t["address"])
    assert (code, text) == (550, "5.7.0 Reply window closed")
    assert await env.inbound(t) == []
    (drop,) = await env.drops(t)
    assert (drop["reason"], drop["channel"], drop["sender"]) == ("reply_too_old", "email", JAN)
    assert drop["email_message_id"] == "<m1@example.com>" and drop["subject"] == "Re: your repair"
    (event,) = await env.events(t, "message.dropped")
    assert event["reason"] == "reply_too_old"


# --- who may write -------------------------------------------------------------------------------


async def test_unknown_sender_trusted_domain_and_blocked_contact(env: Env) -> None:
    t = await env.tenant("Serwis", trusted_domains=["firm.pl"])
    await env.contact(t, "blocked", "spam@example.com", blocked=True)
    code, text, _ = await env.send(mail(to=t["address"], sender="eve@evil.example"), t["address"])
    assert (code, text) == (550, "5.7.1 Sender not allowed")
    code, _, _ = await env.send(mail(to=t["address"], sender="spam@example.com"), t["address"])
    assert code == 550
    # A trusted (sub)domain: accepted, linked to no contact, unverified (firm.pl publishes nothing).
    raw = mail(to=t["address"], sender="bob@sales.firm.pl")
    assert (await env.send(raw, t["address"], mail_from="bob@sales.firm.pl"))[0] == 250
    (m,) = await env.inbound(t)
    assert m["contact_pk"] is None and m["sender_verified"] is False
    assert [d["reason"] for d in await env.drops(t)] == ["sender_not_allowed", "contact_blocked"]
    # Refusals of unknown senders are listed, not pushed; the blocked contact's is announced.
    assert [e["reason"] for e in await env.events(t, "message.dropped")] == ["contact_blocked"]


async def test_a_spoofed_from_with_dmarc_reject_is_refused_even_for_a_contact(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "ceo", "ceo@bank.example")
    raw = mail(to=t["address"], sender="ceo@bank.example")
    code, text, _ = await env.send(raw, t["address"], mail_from="attacker@evil.example")
    assert code == 550 and text.startswith("5.7.1") and "DMARC" in text
    (drop,) = await env.drops(t)
    assert drop["reason"] == "dmarc_fail" and "reject" in drop["detail"]
    assert await env.inbound(t) == []


async def test_require_verified_sender_refuses_unverified_mail(env: Env) -> None:
    t = await env.tenant("Serwis", trusted_domains=["firm.pl"], require_verified_sender=True)
    code, text, _ = await env.send(
        mail(to=t["address"], sender="bob@firm.pl"), t["address"], mail_from="bob@firm.pl"
    )
    assert code == 550 and text.startswith("5.7.1") and "verified" in text
    assert [d["reason"] for d in await env.drops(t)] == ["sender_unverified"]
    await env.contact(t, "jan", JAN)
    assert (await env.send(mail(to=t["address"]), t["address"]))[0] == 250  # SPF-aligned: verified


async def test_two_from_headers_are_malformed(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    raw = mail(to=t["address"]).replace(b"From: ", b"From: ceo@bank.example\r\nFrom: ", 1)
    code, text, _ = await env.send(raw, t["address"])
    assert (code, text) == (550, "5.6.0 Malformed message")
    # No From at all: the envelope sender (a contact's address here) does not stand in for it.
    no_from = b"To: " + t["address"].encode() + b"\r\nSubject: hi\r\n\r\nhello\r\n"
    code, text, _ = await env.send(no_from, t["address"], mail_from=JAN)
    assert (code, text) == (550, "5.7.1 Sender not allowed")
    assert [(d["reason"], d["sender"]) for d in await env.drops(t)] == [
        ("malformed", "ceo@bank.example"),  # the first From, as the parser read it
        ("sender_not_allowed", JAN),
    ]


# --- recipients ----------------------------------------------------------------------------------


async def test_rcpt_checks_old_alias_and_mixed_recipients(env: Env) -> None:
    t = await env.tenant("Serwis", mailbox_prefix="serwis")
    other = await env.tenant("Warsztat", mailbox_prefix="warsztat")
    await env.contact(t, "jan", JAN)
    resp = await env.api.patch(
        f"/v1/tenants/{t['id']}", json={"mailbox_prefix": "serwis-nowy"}, headers=env.api.admin
    )
    assert resp.status == 200
    _, _, refused = await env.send(
        b"Subject: x\r\n\r\nx\r\n", f"nobody@{MAIL_DOMAIN}", "jan@elsewhere.example", mail_from=JAN
    )
    assert refused[f"nobody@{MAIL_DOMAIN}"][0] == 550 and refused[f"nobody@{MAIL_DOMAIN}"][1].startswith(
        "5.1.1"
    )
    assert refused["jan@elsewhere.example"][0] == 550 and refused["jan@elsewhere.example"][1].startswith(
        "5.7.1"
    )
    # The old prefix still delivers; the other tenant (Jan is not its contact) refuses: 250 overall.
    old = f"SERWIS@{MAIL_DOMAIN}"
    code, _, refused = await env.send(mail(to=old), old, other["address"])
    assert code == 250 and refused == {}
    (m,) = await env.inbound(t)
    assert m["recipient"] == old.lower()
    assert [d["reason"] for d in await env.drops(other)] == ["sender_not_allowed"]


async def test_the_same_message_twice_is_stored_once(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    raw = mail(to=t["address"])
    assert (await env.send(raw, t["address"]))[0] == 250
    assert (await env.send(raw, t["address"]))[0] == 250
    assert len(await env.inbound(t)) == 1 and len(await env.events(t, "message.received")) == 1


async def test_the_same_refused_message_twice_is_one_drop_and_one_event(env: Env) -> None:
    """A resend after a lost reply (SMTP) or a re-read after a crash (IMAP) of a refused mail gets the
    same answer and adds no second drop record or message.dropped event."""
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    out = await env.outbound(t, "jan")
    env.clock.advance(days=16)
    raw = mail(to=t["address"], in_reply_to=out["email_message_id"])
    for _ in range(2):
        code, text, _ = await env.send(raw, t["address"])
        assert (code, text) == (550, "5.7.0 Reply window closed")
    assert [d["reason"] for d in await env.drops(t)] == ["reply_too_old"]
    assert len(await env.events(t, "message.dropped")) == 1


async def test_an_out_of_office_answer_is_kept_in_its_thread_without_an_event(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    out = await env.outbound(t, "jan")
    raw = mail(
        to=t["address"], in_reply_to=out["email_message_id"], headers=(("Auto-Submitted", "auto-replied"),)
    )
    assert (await env.send(raw, t["address"]))[0] == 250
    (m,) = await env.inbound(t)
    assert m["thread_id"] == out["thread_id"] and m["note"].startswith("automatic reply (Auto-Submitted")
    assert await env.events(t, "message.received") == []


async def test_a_failure_while_storing_is_451_without_our_text(env: Env, monkeypatch: Any) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    handler = env.listener.handler

    async def broken(raw: bytes, envelope: MailEnvelope) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(handler.inbound, "receive", broken)
    code, text, _ = await env.send(mail(to=t["address"]), t["address"])
    assert code == 451 and "hunter2" not in text and "RuntimeError" not in text


# --- attachments ---------------------------------------------------------------------------------


async def test_attachments_listed_when_saving_is_off(env: Env) -> None:
    t = await env.tenant("Serwis")
    await env.contact(t, "jan", JAN)
    assert (await env.send(mail(to=t["address"], files=(("photo.jpg", b"x" * 300),)), t["address"]))[0] == 250
    (m,) = await env.inbound(t)
    (a,) = await env.rows(attachments, attachments.c.message_id == m["id"])
    assert (a["filename"], a["size_bytes"], a["stored"], a["not_stored_reason"]) == (
        "photo.jpg",
        300,
        False,
        "saving_disabled",
    )
    assert not [f for f in (env.data_dir / "attachments").rglob("*") if f.is_file()]  # no bytes kept
    resp = await env.api.get(f"/v1/attachments/{a['id']}", headers=t["auth"])
    assert resp.status in (404, 409)


async def test_attachments_saved_under_quota_deduplicated_and_downloadable(env: Env) -> None:
    t = await env.tenant("Serwis", attachments={"save": True, "quota_bytes": 1000})
    other = await env.tenant("Other")
    await env.contact(t, "jan", JAN)
    a_bytes, b_bytes, c_bytes = b"A" * 600, b"B" * 600, b"C" * 10
    files = (("../../etc/passwd", a_bytes), ("big.bin", b_bytes), ('faktura "żółć"\r\n.txt', c_bytes))
    assert (await env.send(mail(to=t["address"], files=files), t["address"]))[0] == 250
    (m,) = await env.inbound(t)
    saved, over, small = await env.rows(attachments, attachments.c.message_id == m["id"])
    assert (
        saved["stored"] is True and "/" not in saved["filename"] and ".." not in saved["filename"].split("/")
    )
    assert over["stored"] is False and over["not_stored_reason"] == "quota_exceeded"
    assert "big.bin" in m["note"] and "600 bytes" in m["note"] and "1000" in m["note"]
    assert small["stored"] is True  # the next one that fits is still saved
    (tenant,) = await env.rows(tenants, tenants.c.id == t["id"])
    assert tenant["attachments_used_bytes"] == 610
    # The file lives under data_dir/attachments by its hash, never by the name the sender gave.
    path = (env.data_dir / saved["storage_path"]).resolve()
    assert (env.data_dir / "attachments").resolve() in path.parents and path.read_bytes() == a_bytes
    assert path.name == saved["sha256"]
    # Download: the tenant gets the bytes as an attachment; another tenant gets 404.
    resp = await env.api.get(f"/v1/attachments/{saved['id']}", headers=t["auth"])
    assert resp.status == 200 and await resp.read() == a_bytes
    assert resp.headers["Content-Disposition"].startswith("attachment")
    resp = await env.api.get(f"/v1/attachments/{saved['id']}", headers=other["auth"])
    assert resp.status == 404
    # A name with quotes, non-ASCII letters and a line break: a safe header (RFC 6266 / RFC 8187).
    resp = await env.api.get(f"/v1/attachments/{small['id']}", headers=t["auth"])
    assert resp.status == 200 and await resp.read() == c_bytes
    disposition = resp.headers["Content-Disposition"]
    assert disposition.isascii() and "\r" not in disposition and "\n" not in disposition
    assert "filename*=UTF-8''" in disposition and "%C5%BC%C3%B3%C5%82%C4%87" in disposition
    # The same bytes again cost nothing: used stays exact.
    raw = mail(to=t["address"], message_id="<m2@example.com>", files=(("copy.bin", a_bytes),))
    assert (await env.send(raw, t["address"]))[0] == 250
    (tenant,) = await env.rows(tenants, tenants.c.id == t["id"])
    assert tenant["attachments_used_bytes"] == 610
    # The thread API lists both messages' attachments.
    resp = await env.api.get(f"/v1/threads/{m['thread_id']}", headers=t["auth"])
    listed = [a["stored"] for x in (await resp.json())["messages"] for a in x["attachments"]]
    assert listed == [True, False, True]


# --- the daemon, in-process ----------------------------------------------------------------------


async def test_the_daemon_wires_smtp_to_the_inbound_pipeline(db_target: DbTarget, tmp_path: Path) -> None:
    """``gateway run`` with [smtp] enabled: a reply to a tenant's email lands in its thread. DNS goes
    to a closed local port, so the sender cannot be verified (kept, sender_verified false)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead_dns = s.getsockname()[1]
    path = tmp_path / "gateway.toml"
    path.write_text(
        config_head(db_target, tmp_path, ADMIN)
        + f"""[smtp]
enabled = true
port = 0
mail_domain = "{MAIL_DOMAIN}"
message_id_secret = "{MESSAGE_ID_KEY.decode()}"
[mailauth]
nameservers = ["127.0.0.1"]
dns_port = {dead_dns}
dns_timeout_seconds = 0.2
timeout_seconds = 1
"""
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={})
    async with running(runtime), aiohttp.ClientSession() as http:
        gw = ApiClient(runtime, http, ADMIN)
        status, t = await gw.call("POST", "/v1/tenants", gw.admin, json={"name": "Serwis"})
        assert status == 201, t
        auth = {"Authorization": f"Bearer {t['api_key']}"}
        status, _ = await gw.call("PUT", "/v1/contacts/jan", auth, json={"name": "Jan", "emails": [JAN]})
        assert status in (200, 201)
        status, sent = await gw.call(
            "POST", "/v1/messages", auth, json={"contact_id": "jan", "channels": ["email"], "text": "Ready."}
        )
        assert status == 202, sent
        thread_id = sent["messages"][0]["thread_id"]
        db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
        try:
            (out,) = [
                dict(r)
                for r in (
                    await db.read(lambda conn: conn.execute(sa.select(messages.c.email_message_id)))
                ).mappings()
            ]
        finally:
            await db.close()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=runtime.smtp_port, start_tls=False) as c:
            reply = await c.sendmail(
                JAN,
                [t["mailbox_address"]],
                mail(to=t["mailbox_address"], in_reply_to=out["email_message_id"]),
            )
        assert reply[1].startswith("2.0.0")
        status, thread = await gw.call("GET", f"/v1/threads/{thread_id}", auth)
        assert [m["direction"] for m in thread["messages"]] == ["outbound", "inbound"]


# --- the sender cache (InboundEmailSettings.sender_cache_seconds) --------------------------------


class FrozenMonotonic:
    """The service's monotonic clock, standing still: every cached answer stays fresh for the whole
    test, so what the test shows does not depend on how fast the machine runs it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frozen_cache(env: Env) -> InboundEmailService:
    service = env.listener.handler.inbound
    assert isinstance(service, InboundEmailService) and service.settings.sender_cache_seconds > 0
    service.monotonic = FrozenMonotonic()
    return service


async def test_a_cached_sender_blocked_or_removed_since_is_refused_at_once(env: Env) -> None:
    """ "This tenant takes mail from this sender" is remembered before the transaction; the
    transaction reads the contacts and trusted domains again, so the cache never lets in a sender
    refused since: blocked, the address taken off the contact, the trusted domain removed."""
    service = frozen_cache(env)
    t = await env.tenant("Serwis", trusted_domains=["firm.pl"])
    await env.contact(t, "jan", JAN)
    await env.contact(t, "ola", "ola@example.com")
    raw = mail(to=t["address"], message_id="<a1@example.com>")
    assert (await env.send(raw, t["address"]))[0] == 250
    assert service._allowed_before([t["id"]], JAN) == [t["id"]]  # the next mail skips the read
    env.clock.advance(minutes=1)

    # Blocked through the API: the cache still says yes, the transaction says contact_blocked.
    await env.contact(t, "jan", JAN, blocked=True)
    raw = mail(to=t["address"], message_id="<a2@example.com>")
    assert service._allowed_before([t["id"]], JAN) == [t["id"]]  # the refusal below is not the cache's
    assert await env.send(raw, t["address"]) == (550, "5.7.1 Sender not allowed", {})

    # The address taken off its contact: nobody's address now, sender_not_allowed.
    env.clock.advance(minutes=1)  # rows list in time order
    ola = "ola@example.com"
    raw = mail(to=t["address"], sender=ola, message_id="<b1@example.com>")
    assert (await env.send(raw, t["address"], mail_from=ola))[0] == 250
    await env.contact(t, "ola", "ola.new@example.com")
    raw = mail(to=t["address"], sender=ola, message_id="<b2@example.com>")
    assert service._allowed_before([t["id"]], ola) == [t["id"]]
    assert await env.send(raw, t["address"], mail_from=ola) == (550, "5.7.1 Sender not allowed", {})

    # A trusted domain removed (admin PATCH): its senders are refused at once.
    env.clock.advance(minutes=1)
    bob = "bob@firm.pl"
    raw = mail(to=t["address"], sender=bob, message_id="<c1@firm.pl>")
    assert (await env.send(raw, t["address"], mail_from=bob))[0] == 250
    resp = await env.api.patch(f"/v1/tenants/{t['id']}", json={"trusted_domains": []}, headers=env.api.admin)
    assert resp.status == 200, await resp.json()
    raw = mail(to=t["address"], sender=bob, message_id="<c2@firm.pl>")
    assert service._allowed_before([t["id"]], bob) == [t["id"]]
    assert await env.send(raw, t["address"], mail_from=bob) == (550, "5.7.1 Sender not allowed", {})

    stored = await env.inbound(t)
    assert [m["email_message_id"] for m in stored] == ["<a1@example.com>", "<b1@example.com>", "<c1@firm.pl>"]
    assert [(d["reason"], d["sender"], d["email_message_id"]) for d in await env.drops(t)] == [
        ("contact_blocked", JAN, "<a2@example.com>"),
        ("sender_not_allowed", ola, "<b2@example.com>"),
        ("sender_not_allowed", bob, "<c2@firm.pl>"),
    ]
    # Only the blocked contact's refusal is announced (SPEC: unknown senders are listed, not pushed).
    assert [e["reason"] for e in await env.events(t, "message.dropped")] == ["contact_blocked"]


async def test_a_refusal_is_not_cached_a_new_contact_is_accepted_at_once(env: Env) -> None:
    service = frozen_cache(env)
    t = await env.tenant("Serwis")
    eve = "eve@example.com"
    raw = mail(to=t["address"], sender=eve, message_id="<e1@example.com>")
    assert await env.send(raw, t["address"], mail_from=eve) == (550, "5.7.1 Sender not allowed", {})
    assert service._allowed_before([t["id"]], eve) == []
    await env.contact(t, "eve", eve)
    raw = mail(to=t["address"], sender=eve, message_id="<e2@example.com>")
    assert (await env.send(raw, t["address"], mail_from=eve))[0] == 250
    (m,) = await env.inbound(t)
    assert m["email_message_id"] == "<e2@example.com>" and m["sender_verified"] is True
    assert [(d["reason"], d["email_message_id"]) for d in await env.drops(t)] == [
        ("sender_not_allowed", "<e1@example.com>")
    ]
