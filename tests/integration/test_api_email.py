"""POST /v1/messages with the email channel (no relay needed): checks, refusal reasons, header
injection, what is stored and enqueued."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import EMAIL_SETTINGS, MAIL_DOMAIN, MESSAGE_ID_KEY, SMS_SETTINGS

from gateway.domain.email_ids import parse_message_id
from gateway.domain.model import Consent
from gateway.services.errors import ChannelsRefusedError
from gateway.services.outbound import OutboundService, SendRequest
from gateway.services.tenants import TenantSettings
from gateway.storage.db import Database
from gateway.storage.tables import events, jobs, messages


async def new_tenant(api: Any, name: str = "Serwis", **extra: Any) -> dict[str, Any]:
    resp = await api.post("/v1/tenants", json={"name": name, "sms_credits": 100, **extra}, headers=api.admin)
    assert resp.status == 201, await resp.text()
    t = await resp.json()
    t["auth"] = {"Authorization": f"Bearer {t['api_key']}"}
    return t


async def put_contact(api: Any, t: dict[str, Any], cid: str, **body: Any) -> Any:
    return await api.put(f"/v1/contacts/{cid}", json={"name": cid, **body}, headers=t["auth"])


async def send(api: Any, t: dict[str, Any], **body: Any) -> Any:
    body.setdefault("channels", ["email"])
    body.setdefault("text", "Rower gotowy do odbioru")
    return await api.post("/v1/messages", json=body, headers=t["auth"])


@pytest.fixture
async def tenant(api: Any) -> dict[str, Any]:
    t = await new_tenant(api)
    resp = await put_contact(api, t, "jan", phones=["+48500100200"], emails=["jan@example.com"])
    assert resp.status == 201
    return t


async def test_accepted_email_is_stored_with_its_job_and_event(
    api: Any, db: Database, tenant: dict[str, Any]
) -> None:
    resp = await send(api, tenant, contact_id="jan", subject="Gotowe", html="<p>Gotowe</p>")
    assert resp.status == 202, await resp.text()
    (m,) = (await resp.json())["messages"]
    assert m["channel"] == "email" and m["status"] == "queued"
    assert m["email"]["sender"] == f"{tenant['mailbox_prefix']}@{MAIL_DOMAIN}"
    assert m["email"]["recipient"] == "jan@example.com" and m["email"]["subject"] == "Gotowe"
    ref = parse_message_id(MESSAGE_ID_KEY, m["email"]["message_id"])
    assert ref is not None and (ref.message_id, ref.thread_id, ref.tenant_id) == (
        m["id"],
        m["thread_id"],
        tenant["id"],
    )
    resp = await api.get(f"/v1/messages/{m['id']}", headers=tenant["auth"])
    got = await resp.json()
    assert got["email"] == {
        "subject": "Gotowe",
        "message_id": m["email"]["message_id"],
        "in_reply_to": None,
        "html": True,
    }
    assert got["sms"] is None and got["sms_parts"] is None

    async def rows(conn: Any) -> tuple[Any, Any]:
        job = (
            await conn.execute(sa.select(jobs.c.kind, jobs.c.payload).where(jobs.c.message_id == m["id"]))
        ).all()
        ev = (await conn.execute(sa.select(events.c.type, events.c.payload))).all()
        return job, ev

    job, ev = await db.read(rows)
    assert job == [("email.send", {"message_id": m["id"]})]
    assert (
        "message.status",
        {"message_id": m["id"], "channel": "email", "status": "queued", "thread_id": m["thread_id"]},
    ) in ev


async def test_subject_defaults_to_the_first_line(api: Any, tenant: dict[str, Any]) -> None:
    long_line = "Dzień dobry, " + "bardzo długa wiadomość " * 6
    resp = await send(api, tenant, contact_id="jan", text=f"\n{long_line}\ndruga linia")
    subject = (await resp.json())["messages"][0]["email"]["subject"]
    assert subject.endswith("…") and len(subject) <= 78 and long_line.startswith(subject[:-1])


async def test_bare_address_and_internationalised_forms(api: Any, tenant: dict[str, Any]) -> None:
    resp = await send(api, tenant, to={"email": "Anna@Bücher.example"})
    assert (await resp.json())["messages"][0]["email"]["recipient"] == "anna@xn--bcher-kva.example"
    resp = await send(api, tenant, to={"email": "józef@example.com"})  # SMTPUTF8 needed at the relay
    assert (await resp.json())["messages"][0]["email"]["recipient"] == "józef@example.com"


async def test_email_refusals_name_the_reason_and_write_nothing(
    api: Any, db: Database, tenant: dict[str, Any]
) -> None:
    await put_contact(api, tenant, "nomail", phones=["+48500100201"])
    await put_contact(api, tenant, "optout", emails=["o@example.com"], consent={"email": False})
    await put_contact(api, tenant, "blocked", emails=["b@example.com"], blocked=True)
    cases = [
        ({"contact_id": "nomail"}, "no_email"),
        ({"contact_id": "optout"}, "email_opt_out"),
        ({"contact_id": "blocked"}, "contact_blocked"),
        ({"to": {"email": "b@example.com"}}, "contact_blocked"),  # a bare address of a blocked contact
        ({"to": {"email": "not-an-address"}}, "invalid_email"),
        ({"to": {"email": "x@localhost"}}, "invalid_email"),
        ({"contact_id": "jan", "category": "marketing"}, "no_marketing_consent"),
        ({"to": {"email": "new@example.com"}, "category": "marketing"}, "no_marketing_consent"),
        # SMS would go; email cannot: nothing goes (SPEC 2.3).
        ({"contact_id": "nomail", "channels": ["sms", "email"]}, "no_email"),
    ]
    for body, reason in cases:
        resp = await send(api, tenant, **body)
        assert resp.status == 422, (body, await resp.text())
        err = (await resp.json())["error"]
        assert err["code"] == "channel_refused"
        assert err["details"]["channels"]["email"]["reason"] == reason, body
    count = await db.read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(messages)))
    assert count.scalar_one() == 0
    resp = await api.get(f"/v1/tenants/{tenant['id']}", headers=api.admin)
    assert (await resp.json())["sms_credits"] == 100


async def test_line_breaks_in_header_fields_are_422_naming_the_field(
    api: Any, tenant: dict[str, Any]
) -> None:
    for body, field in [
        ({"contact_id": "jan", "subject": "Hello\r\nBcc: victim@example.com"}, "subject"),
        ({"contact_id": "jan", "subject": "line\nbreak"}, "subject"),
        ({"to": {"email": "a@example.com\r\nBcc: b@example.com"}}, "to.email"),
    ]:
        resp = await send(api, tenant, **body)
        assert resp.status == 422, body
        err = (await resp.json())["error"]
        assert err["code"] == "validation_error" and err["details"]["field"] == field
    resp = await put_contact(api, tenant, "evil", name="Jan\nBcc: x@example.com", emails=["e@example.com"])
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "name"
    resp = await put_contact(api, tenant, "evil", emails=["e@example.com\r\nX: y"])
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "emails[0]"
    resp = await api.post("/v1/tenants", json={"name": "Evil\r\nX-Header: 1"}, headers=api.admin)
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "name"
    resp = await api.patch(f"/v1/tenants/{tenant['id']}", json={"name": "A\rB"}, headers=api.admin)
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "name"


async def test_bounce_is_a_reserved_prefix(api: Any) -> None:
    resp = await api.post("/v1/tenants", json={"name": "X", "mailbox_prefix": "bounce"}, headers=api.admin)
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "mailbox_prefix"


async def test_the_optional_deliverability_check_runs_before_the_transaction(
    db: Database, clock: Any, api_context: Any
) -> None:
    checked: list[str] = []

    async def deliverability(address: str) -> str | None:
        checked.append(address)
        return "The domain name nowhere.example does not accept email." if "nowhere" in address else None

    tenants = api_context.tenants
    t = (await tenants.create(TenantSettings(name="Dns"))).tenant
    await api_context.contacts.put(
        t.id, "jan", name="Jan", phones=[], emails=["jan@nowhere.example"], consent=Consent(), blocked=False
    )
    outbound = OutboundService(
        db, clock, SMS_SETTINGS, email=dataclasses.replace(EMAIL_SETTINGS, deliverability=deliverability)
    )
    with pytest.raises(ChannelsRefusedError) as err:
        await outbound.send(t.id, SendRequest(channels=("email",), text="x", contact_id="jan"), "h1")
    assert err.value.refusals["email"][0] == "invalid_email"
    status, body = await outbound.send(
        t.id, SendRequest(channels=("email",), text="x", to_email="ok@example.com"), "h2"
    )
    assert status == 202 and body["messages"][0]["email"]["recipient"] == "ok@example.com"
    assert checked == ["jan@nowhere.example", "ok@example.com"]


async def test_mail_goes_out_from_the_current_prefix(api: Any, tenant: dict[str, Any]) -> None:
    resp = await api.patch(
        f"/v1/tenants/{tenant['id']}", json={"mailbox_prefix": "nowy-serwis"}, headers=api.admin
    )
    assert resp.status == 200, await resp.text()
    resp = await send(api, tenant, contact_id="jan")
    assert (await resp.json())["messages"][0]["email"]["sender"] == f"nowy-serwis@{MAIL_DOMAIN}"
