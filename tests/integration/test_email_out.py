"""Outbound email end to end: HTTP API -> job queue -> MIME + DKIM -> relay (real SMTP) -> sink,
and bounces back through our SMTP listener. The daemon runs in-process (``Runtime``) on both
databases; the relay is tests/smtp_sink.py, the SMSC tests/smsc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import dkim
import pytest
import sqlalchemy as sa
from conftest import MAIL_DOMAIN, MESSAGE_ID_KEY, DbTarget
from harness import ApiClient, daemon_config, running, toml_keys
from harness import h as _h
from smsc import SmscSimulator
from smtp_sink import DROP, SmtpSink, make_dsn

from gateway.config import load
from gateway.domain.email_ids import parse_message_id, parse_verp
from gateway.runtime import Runtime
from gateway.storage import messages as repo
from gateway.storage.db import Database
from gateway.storage.tables import events, messages

TOKEN = "email-admin-token-0123456789"
SECRET = MESSAGE_ID_KEY.decode()
ROOT = Path(__file__).resolve().parents[2]
SELECTOR = "gw"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """`gateway dkim-keygen` as an operator runs it: (private key file, record name, TXT value)."""
    out = tmp_path_factory.mktemp("dkim")
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/gateway"), "dkim-keygen", "--out", str(out), "--selector", SELECTOR],
        env={**os.environ, "GATEWAY_SMTP__MAIL_DOMAIN": MAIL_DOMAIN},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if " IN TXT " in x)
    name = line.split()[0]
    value = "".join(re.findall(r'"([^"]*)"', line)).encode()
    assert name == f"{SELECTOR}._domainkey.{MAIL_DOMAIN}."
    assert (out / f"{SELECTOR}.private").stat().st_mode & 0o077 == 0  # not readable by others
    return out / f"{SELECTOR}.private", name, value


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the relay's), made with the openssl binary."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=relay.test", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True,
            check=True,
            timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    return cert, key


def dns_for(record: tuple[Path, str, bytes]) -> Any:
    _, name, value = record

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes | None:
        return value if qname.decode() == name else None

    return dnsfunc


class Gateway(ApiClient):
    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, target: DbTarget) -> None:
        super().__init__(runtime, http, TOKEN)
        self.target = target

    async def tenant(self, name: str, **extra: Any) -> dict[str, str]:
        status, t = await self.call(
            "POST", "/v1/tenants", self.admin, json={"name": name, "sms_credits": 100, **extra}
        )
        assert status == 201, t
        return {"Authorization": f"Bearer {t['api_key']}", "id": t["id"], "prefix": t["mailbox_prefix"]}

    async def contact(self, auth: dict[str, str], cid: str, **body: Any) -> None:
        status, out = await self.call("PUT", f"/v1/contacts/{cid}", _h(auth), json={"name": cid, **body})
        assert status in (200, 201), out

    async def send(self, auth: dict[str, str], **body: Any) -> list[dict[str, Any]]:
        body.setdefault("channels", ["email"])
        status, out = await self.call("POST", "/v1/messages", _h(auth), json=body)
        assert status == 202, out
        return list(out["messages"])

    async def wait_status(
        self, auth: dict[str, str], message_id: str, statuses: set[str], timeout: float = 15
    ) -> dict[str, Any]:
        m: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    _, m = await self.call("GET", f"/v1/messages/{message_id}", _h(auth))
                    if m["status"] in statuses:
                        return dict(m)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"still {m.get('status')} after {timeout}s: {m}") from None

    async def db(self) -> Database:
        return await Database.open(self.target.url, pg_schema=self.target.pg_schema)


@contextlib.asynccontextmanager
async def gateway(
    target: DbTarget,
    tmp_path: Path,
    sink: SmtpSink,
    *,
    dkim_file: Path | None = None,
    sim: SmscSimulator | None = None,
    relay: dict[str, Any] | None = None,
) -> AsyncIterator[Gateway]:
    relay_keys = {"host": "127.0.0.1", "port": sink.port, "starttls": False, **(relay or {})}
    email = f"""
[smtp]
enabled = true
port = 0
mail_domain = "{MAIL_DOMAIN}"
message_id_secret = "{SECRET}"
[relay]
{toml_keys(relay_keys)}
[dkim]
selector = "{SELECTOR}"
private_key_file = "{dkim_file or ""}"
"""
    path = daemon_config(
        target,
        tmp_path,
        token=TOKEN,
        smsc_port=None if sim is None else sim.port,
        queue={"lease_seconds": 10, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5, "max_attempts": 4},
        connector={"enquire_link_seconds": 1},
        extra=email,
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={})
    async with running(runtime):
        if sim is not None:
            await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield Gateway(runtime, http, target)


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text(part: EmailMessage) -> str:
    """A text part's content as the API took it (CRLF on the wire; the last one is the MIME
    boundary's in a multipart, RFC 2046 §5.1.1)."""
    return str(part.get_content()).replace("\r\n", "\n").removesuffix("\n")


async def bounce(port: int, rcpt: str, data: bytes) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10) as client:
        await client.sendmail("", [rcpt], data)


# --- the "Done when" ----------------------------------------------------------------------


async def test_every_channel_combination_relayed_signed_threaded_and_bounced(
    db_target: DbTarget, tmp_path: Path, sink: SmtpSink, dkim_key: tuple[Path, str, bytes]
) -> None:
    async with (
        SmscSimulator(system_id="gw", password="secret") as sim,
        gateway(db_target, tmp_path, sink, dkim_file=dkim_key[0], sim=sim) as gw,
    ):
        auth = await gw.tenant("Serwis Łódź", mailbox_prefix="serwis-lodz")
        await gw.contact(
            auth, "jan", phones=["+48500100200"], emails=["Jan@Example.com"], name="Jan Kowalski"
        )

        # sms alone: the SMSC gets it, the relay nothing.
        (sms_only,) = await gw.send(auth, contact_id="jan", channels=["sms"], text="Rower gotowy")
        assert (await gw.wait_status(auth, sms_only["id"], {"delivered"}))["status"] == "delivered"

        # email alone, with an HTML alternative.
        (first,) = await gw.send(
            auth,
            contact_id="jan",
            subject="Zamówienie 1042 — gotowe",
            text="Dzień dobry,\nrower czeka na odbiór.",
            html="<p>Dzień dobry,<br>rower <b>czeka</b> na odbiór.</p>",
        )
        assert first["email"]["sender"] == f"serwis-lodz@{MAIL_DOMAIN}"
        assert (await gw.wait_status(auth, first["id"], {"sent"}))["status"] == "sent"

        # The customer answers by email (the inbound MX is a later issue: the row is written here).
        db = await gw.db()
        try:
            now = datetime.now(UTC)
            await db.write(
                lambda conn: repo.insert_message(
                    conn,
                    {
                        "id": "msg_inbound00000001",
                        "tenant_id": auth["id"],
                        "thread_id": first["thread_id"],
                        "contact_pk": None,
                        "direction": "inbound",
                        "channel": "email",
                        "status": "received",
                        "category": "transactional",
                        "sender": "jan@example.com",
                        "recipient": f"serwis-lodz@{MAIL_DOMAIN}",
                        "subject": "Re: Zamówienie 1042 — gotowe",
                        "text": "Będę jutro",
                        "html": None,
                        "sms_encoding": None,
                        "sms_parts": None,
                        "email_message_id": "<reply-1@example.com>",
                        "in_reply_to": None,
                        "size_bytes": 100,
                        "note": None,
                        "send_at": None,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            )
        finally:
            await db.close()

        # sms + email in one request, answering that reply.
        both = await gw.send(
            auth, contact_id="jan", channels=["sms", "email"], text="Zapraszamy jutro od 9:00"
        )
        assert {m["channel"] for m in both} == {"sms", "email"}
        assert len({m["thread_id"] for m in both}) == 1
        answer = next(m for m in both if m["channel"] == "email")
        for m in both:
            assert (await gw.wait_status(auth, m["id"], {"sent", "delivered"}))["status"] in {
                "sent",
                "delivered",
            }
        relayed = await sink.wait_messages(2)
        assert len(relayed) == 2 and len(sim.submits) == 2

        for received, accepted in zip(relayed, (first, answer), strict=True):
            # DKIM against the record `gateway dkim-keygen` printed.
            assert dkim.verify(received.data, dnsfunc=dns_for(dkim_key)), received.data[:600]
            msg = parse(received.data)
            assert msg["DKIM-Signature"] is not None and "a=rsa-sha256" in str(msg["DKIM-Signature"])
            assert "c=relaxed/relaxed" in str(msg["DKIM-Signature"])
            frm = msg["From"].addresses[0]
            assert (frm.display_name, frm.addr_spec) == ("Serwis Łódź", f"serwis-lodz@{MAIL_DOMAIN}")
            assert b"=?utf-8?" in received.data.split(b"\r\n\r\n")[0]  # an encoded-word, not raw UTF-8
            assert msg["Reply-To"].addresses[0].addr_spec == f"serwis-lodz@{MAIL_DOMAIN}"
            to = msg["To"].addresses[0]
            assert (to.display_name, to.addr_spec) == ("Jan Kowalski", "jan@example.com")
            assert received.rcpt_tos == ["jan@example.com"]
            # VERP return path naming the message; Message-ID naming tenant and thread.
            assert parse_verp(MESSAGE_ID_KEY, received.mail_from.split("@")[0]) == accepted["id"]
            assert received.mail_from.endswith(f"@{MAIL_DOMAIN}")
            ref = parse_message_id(MESSAGE_ID_KEY, msg["Message-ID"])
            assert ref is not None and (ref.message_id, ref.thread_id, ref.tenant_id) == (
                accepted["id"],
                accepted["thread_id"],
                auth["id"],
            )
            assert msg["Message-ID"] == accepted["email"]["message_id"]
            assert msg["Date"].datetime is not None
            assert b"Return-Path" not in received.data  # the final MTA writes it (RFC 5321 §4.4)

        one, two = (parse(r.data) for r in relayed)
        assert one["Subject"] == "Zamówienie 1042 — gotowe"
        assert one.get_content_type() == "multipart/alternative"
        plain, html = one.get_payload()  # type: ignore[misc]
        assert text(plain) == "Dzień dobry,\nrower czeka na odbiór."
        assert "<b>czeka</b>" in html.get_content()
        assert one["In-Reply-To"] is None and one["References"] is None
        # The answer threads under the customer's reply: In-Reply-To it, References end with it.
        assert two["In-Reply-To"] == "<reply-1@example.com>"
        assert str(two["References"]).split() == [one["Message-ID"], "<reply-1@example.com>"]
        assert two["Subject"] == "Re: Zamówienie 1042 — gotowe"
        assert two.get_content_type() == "text/plain" and text(two) == "Zapraszamy jutro od 9:00"

        # A bounce for the first email, to its VERP address, through our SMTP listener.
        port = gw.runtime.smtp_port
        assert port
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await bounce(port, f"someone@{MAIL_DOMAIN}", b"Subject: x\r\n\r\nx\r\n")
        assert refused.value.recipients[0].code == 550 and "5.1.1" in refused.value.recipients[0].message
        forged = relayed[0].mail_from.replace(relayed[0].mail_from.split(".")[-3][-2:], "00")
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await bounce(port, forged, b"Subject: x\r\n\r\nx\r\n")
        await bounce(port, relayed[0].mail_from, make_dsn(to=relayed[0].mail_from))
        failed = await gw.wait_status(auth, first["id"], {"failed"}, timeout=5)
        assert failed["status_reason"].startswith("5.1.1 smtp; 550 5.1.1 <jan@example.com>")
        # The other one is untouched, and the bounce is no conversation message.
        assert (await gw.wait_status(auth, answer["id"], {"sent"}))["status"] == "sent"
        db = await gw.db()
        try:
            feed = await db.read(
                lambda conn: conn.execute(
                    sa.select(events.c.payload).where(events.c.tenant_id == auth["id"]).order_by(events.c.id)
                )
            )
            payloads = [p for (p,) in feed]
            thread_rows = await db.read(
                lambda conn: conn.execute(
                    sa.select(messages.c.direction, messages.c.channel).where(
                        messages.c.thread_id == first["thread_id"]
                    )
                )
            )
            rows = list(thread_rows)
        finally:
            await db.close()
        statuses = [(p["message_id"], p["status"]) for p in payloads if p.get("channel") == "email"]
        assert statuses.count((first["id"], "failed")) == 1
        assert [s for m, s in statuses if m == first["id"]] == ["queued", "sending", "sent", "failed"]
        bounce_event = next(p for p in payloads if p["message_id"] == first["id"] and p["status"] == "failed")
        assert bounce_event["bounce"]["status"] == "5.1.1"
        assert sorted(rows) == sorted(
            [
                ("outbound", "email"),
                ("outbound", "email"),
                ("outbound", "sms"),
                ("outbound", "sms"),
                ("inbound", "email"),
            ]
        )


# --- relay behaviour ---------------------------------------------------------------------------------


async def test_4xx_and_a_lost_connection_are_retried_then_sent(
    db_target: DbTarget, tmp_path: Path, sink: SmtpSink
) -> None:
    sink.data_replies.extend(["451 4.3.0 Try again later", DROP])
    async with gateway(db_target, tmp_path, sink) as gw:
        auth = await gw.tenant("Retry")
        (m,) = await gw.send(auth, to={"email": "anna@example.com"}, subject="Hej", text="Druga próba")
        done = await gw.wait_status(auth, m["id"], {"sent", "failed"})
        assert done["status"] == "sent" and done["status_reason"] is None
    # 451, then the data went out and the connection died before the reply (may have been
    # delivered: resent, the documented duplicate window), then 250.
    assert sink.data_seen == 3
    (received,) = sink.messages
    assert parse(received.data)["Subject"] == "Hej"


async def test_5xx_fails_the_message_with_the_relays_reply(
    db_target: DbTarget, tmp_path: Path, sink: SmtpSink
) -> None:
    sink.rcpt_replies["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: Recipient address rejected"
    async with gateway(db_target, tmp_path, sink) as gw:
        auth = await gw.tenant("Fail")
        (bad,) = await gw.send(auth, to={"email": "nobody@example.com"}, text="x")
        (good,) = await gw.send(auth, to={"email": "somebody@example.com"}, text="y")
        failed = await gw.wait_status(auth, bad["id"], {"failed", "sent"})
        assert failed["status"] == "failed"
        assert failed["status_reason"] == "550 5.1.1 <nobody@example.com>: Recipient address rejected"
        assert (await gw.wait_status(auth, good["id"], {"sent"}))["status"] == "sent"
    assert [r.rcpt_tos for r in sink.messages] == [["somebody@example.com"]]


async def test_many_messages_share_a_few_kept_alive_connections(
    db_target: DbTarget, tmp_path: Path, sink: SmtpSink
) -> None:
    async with gateway(db_target, tmp_path, sink, relay={"connections": 2}) as gw:
        auth = await gw.tenant("Busy")
        sent = []
        for n in range(20):
            sent += await gw.send(auth, to={"email": f"c{n}@example.com"}, text=f"wiadomość {n}")
        await sink.wait_messages(20)
        for m in sent:
            assert (await gw.wait_status(auth, m["id"], {"sent"}))["status"] == "sent"
        async with gw.http.get(gw.base + "/readyz") as resp:
            ready = await resp.json()
        assert ready["checks"]["relay"]["state"] == "ok" and ready["checks"]["smtp"]["port"]
        async with gw.http.get(gw.base + "/metrics") as resp:
            metrics = await resp.text()
        assert 'gateway_email_relay{result="sent"} 20.0' in metrics
    assert sink.connections <= 2
    assert sorted(r.rcpt_tos[0] for r in sink.messages) == sorted(f"c{n}@example.com" for n in range(20))


@pytest.mark.parametrize("mode", ["starttls", "implicit_tls"])
async def test_tls_and_auth(
    db_target: DbTarget, tmp_path: Path, tls_files: tuple[Path, Path], mode: str
) -> None:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relay = {"ca_file": str(cert), "username": "gw", "password": "relay-pass"}
    relay.update({"starttls": True} if mode == "starttls" else {"implicit_tls": True, "starttls": False})
    async with (
        SmtpSink(
            tls=context, require_tls=True, implicit_tls=mode == "implicit_tls", auth={"gw": "relay-pass"}
        ) as sink,
        gateway(db_target, tmp_path, sink, relay=relay) as gw,
    ):
        auth = await gw.tenant("Tls")
        (m,) = await gw.send(auth, to={"email": "anna@example.com"}, text="przez TLS")
        assert (await gw.wait_status(auth, m["id"], {"sent", "failed"}))["status"] == "sent"
    (received,) = sink.messages
    assert received.tls and received.authenticated == "gw"


async def test_scheduled_email_waits_and_cancel_stops_it(
    db_target: DbTarget, tmp_path: Path, sink: SmtpSink
) -> None:
    async with gateway(db_target, tmp_path, sink) as gw:
        auth = await gw.tenant("Later")
        (m,) = await gw.send(
            auth, to={"email": "anna@example.com"}, text="później", send_at="2099-01-01T08:00:00+01:00"
        )
        assert m["status"] == "scheduled"
        status, cancelled = await gw.call("DELETE", f"/v1/messages/{m['id']}", _h(auth))
        assert status == 200 and cancelled["status"] == "cancelled"
        assert cancelled["email"]["subject"] == "później"
    assert sink.messages == []


@pytest.mark.parametrize("offered", [True, False], ids=["smtputf8", "no-smtputf8"])
async def test_an_internationalised_address_needs_smtputf8(
    db_target: DbTarget, tmp_path: Path, offered: bool
) -> None:
    async with SmtpSink(smtputf8=offered) as sink, gateway(db_target, tmp_path, sink) as gw:
        auth = await gw.tenant("Utf")
        (m,) = await gw.send(auth, to={"email": "józef@example.com"}, text="cześć")
        done = await gw.wait_status(auth, m["id"], {"sent", "failed"})
    if offered:
        assert done["status"] == "sent"
        (received,) = sink.messages
        assert received.rcpt_tos == ["józef@example.com"]
        assert "\r\nTo: józef@example.com\r\n".encode() in received.data  # raw UTF-8 (RFC 6532 §3.2)
    else:
        assert done["status"] == "failed" and "SMTPUTF8" in done["status_reason"]
        assert sink.messages == []
