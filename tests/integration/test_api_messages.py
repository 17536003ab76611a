"""POST /v1/messages acceptance (no SMSC needed): checks per channel, credits, senders, idempotency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import POOL, FakeClock


async def new_tenant(api: Any, name: str = "Serwis", credits: int = 100, **extra: Any) -> dict[str, Any]:
    resp = await api.post(
        "/v1/tenants", json={"name": name, "sms_credits": credits, **extra}, headers=api.admin
    )
    assert resp.status == 201, await resp.text()
    t = await resp.json()
    t["auth"] = {"Authorization": f"Bearer {t['api_key']}"}
    return t


async def put_contact(api: Any, t: dict[str, Any], cid: str, **body: Any) -> None:
    resp = await api.put(f"/v1/contacts/{cid}", json={"name": cid, **body}, headers=t["auth"])
    assert resp.status in (200, 201), await resp.text()


async def send(api: Any, t: dict[str, Any], **body: Any) -> Any:
    body.setdefault("channels", ["sms"])
    body.setdefault("text", "Rower gotowy do odbioru")
    return await api.post("/v1/messages", json=body, headers=t["auth"])


async def credits(api: Any, t: dict[str, Any]) -> int:
    resp = await api.get(f"/v1/tenants/{t['id']}", headers=api.admin)
    return int((await resp.json())["sms_credits"])


@pytest.fixture
async def tenant(api: Any) -> dict[str, Any]:
    t = await new_tenant(api)
    await put_contact(api, t, "jan", phones=["+48500100200"], emails=["jan@example.com"])
    return t


async def test_accepts_and_reserves_credits(api: Any, tenant: dict[str, Any]) -> None:
    text = "Zażółć gęślą jaźń " * 12  # 216 UCS-2 units -> 4 parts of 67
    resp = await send(api, tenant, contact_id="jan", text=text)
    assert resp.status == 202, await resp.text()
    (m,) = (await resp.json())["messages"]
    assert m["channel"] == "sms" and m["status"] == "queued" and m["thread_id"].startswith("thr_")
    assert m["sms"]["encoding"] == "ucs2" and m["sms"]["parts"] == 4 and m["sms"]["sender"] in POOL
    assert await credits(api, tenant) == 96
    resp = await api.get(f"/v1/messages/{m['id']}", headers=tenant["auth"])
    got = await resp.json()
    assert got["status"] == "queued" and got["recipient"] == "+48500100200"
    assert [p["status"] for p in got["sms_parts"]] == ["pending"] * 4


async def test_every_refusal_reason_is_a_422_and_writes_nothing(api: Any, tenant: dict[str, Any]) -> None:
    await put_contact(api, tenant, "nophone", emails=["a@example.com"])
    await put_contact(api, tenant, "landline", phones=["+48 22 123 45 67"])
    await put_contact(api, tenant, "abroad", phones=["+1 202 555 0143"])
    await put_contact(api, tenant, "optout", phones=["+48500100201"], consent={"sms": False})
    await put_contact(api, tenant, "blocked", phones=["+48500100202"], blocked=True)
    cases = [
        ({"contact_id": "nophone"}, "sms", "no_phone"),
        ({"contact_id": "landline"}, "sms", "not_mobile"),
        ({"contact_id": "abroad"}, "sms", "region_not_allowed"),
        ({"contact_id": "optout"}, "sms", "sms_opt_out"),
        ({"contact_id": "blocked"}, "sms", "contact_blocked"),
        ({"contact_id": "jan", "category": "marketing"}, "sms", "no_marketing_consent"),
        ({"contact_id": "jan", "text": "x" * 1531}, "sms", "too_many_parts"),
        # Email would pass; the SMS cannot go, so neither goes (every channel is checked first).
        ({"contact_id": "nophone", "channels": ["sms", "email"]}, "sms", "no_phone"),
        ({"to": {"phone": "+48500100202"}}, "sms", "contact_blocked"),  # a bare number of a contact
    ]
    for body, channel, reason in cases:
        resp = await send(api, tenant, **body)
        assert resp.status == 422, (body, await resp.text())
        err = (await resp.json())["error"]
        assert err["code"] == "channel_refused"
        assert err["details"]["channels"][channel]["reason"] == reason, body
    assert await credits(api, tenant) == 100
    poor = await new_tenant(api, "Poor", credits=1)
    await put_contact(api, poor, "jan", phones=["+48500100200"])
    resp = await send(api, poor, contact_id="jan", text="a" * 161)
    assert (await resp.json())["error"]["details"]["channels"]["sms"]["reason"] == "insufficient_credits"
    assert await credits(api, poor) == 1


async def test_bad_requests_name_the_field(api: Any, tenant: dict[str, Any]) -> None:
    for body, status, field in [
        ({"contact_id": "jan", "channels": ["fax"]}, 422, "channels[0]"),
        ({"contact_id": "jan", "channels": []}, 422, "channels"),
        ({"contact_id": "jan", "text": "  "}, 422, "text"),
        ({"contact_id": "jan", "to": {"phone": "+48500100200"}}, 422, "to"),
        ({}, 422, "contact_id"),
        ({"to": {"phone": "12"}}, 422, "to.phone"),
        ({"contact_id": "jan", "send_at": "2026-12-01T10:00:00"}, 422, "send_at"),
        ({"contact_id": "jan", "category": "spam"}, 422, "category"),
    ]:
        resp = await send(api, tenant, **body)
        assert resp.status == status, (body, await resp.text())
        assert (await resp.json())["error"]["details"]["field"] == field, body
    resp = await send(api, tenant, contact_id="nobody")
    assert resp.status == 404


async def test_sticky_pool_numbers(api: Any, clock: FakeClock) -> None:
    a = await new_tenant(api, "A")
    b = await new_tenant(api, "B")
    c = await new_tenant(api, "C")
    for t in (a, b, c):
        await put_contact(api, t, "jan", phones=["+48500100200"])
    first = (await (await send(api, a, contact_id="jan")).json())["messages"][0]["sms"]["sender"]
    other = (await (await send(api, b, contact_id="jan")).json())["messages"][0]["sms"]["sender"]
    assert {first, other} == set(POOL)  # two tenants, one customer: different numbers
    again = (await (await send(api, a, contact_id="jan")).json())["messages"][0]["sms"]["sender"]
    assert again == first  # sticky
    resp = await send(api, c, contact_id="jan")
    assert resp.status == 422
    assert (await resp.json())["error"]["details"]["channels"]["sms"]["reason"] == "no_sender_available"
    clock.advance(days=16)  # A's and B's holds are past the reply window: C may take one over
    resp = await send(api, c, contact_id="jan")
    assert resp.status == 202
    assert (await resp.json())["messages"][0]["sms"]["sender"] in POOL


async def test_alphanumeric_sender(api: Any) -> None:
    t = await new_tenant(api, "Alnum", sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS"})
    await put_contact(api, t, "jan", phones=["+48500100200"])
    resp = await send(api, t, contact_id="jan")
    assert (await resp.json())["messages"][0]["sms"]["sender"] == "SERWIS"


async def test_per_message_alphanumeric_sender(api: Any) -> None:
    """A message may pick another of the tenant's headers; anything else is a 422 naming the reason."""
    t = await new_tenant(
        api,
        "Alnum",
        sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS", "allowed": ["PROMO", "SERWIS"]},
    )
    assert t["sms_sender"]["allowed"] == ["PROMO"]  # the default is not repeated
    await put_contact(api, t, "jan", phones=["+48500100200"])
    resp = await send(api, t, contact_id="jan", sms_sender="PROMO")
    assert resp.status == 202
    assert (await resp.json())["messages"][0]["sms"]["sender"] == "PROMO"
    resp = await send(api, t, contact_id="jan", sms_sender="SERWIS")
    assert (await resp.json())["messages"][0]["sms"]["sender"] == "SERWIS"
    resp = await send(api, t, contact_id="jan", sms_sender="OTHER")
    assert resp.status == 422
    refusal = (await resp.json())["error"]["details"]["channels"]["sms"]
    assert refusal["reason"] == "sender_not_allowed" and "OTHER" in refusal["detail"]
    # A bad header in the list is refused when the tenant is set up, naming the entry.
    resp = await api.patch(
        f"/v1/tenants/{t['id']}",
        json={"sms_sender": {"allowed": ["OK", "TWELVE-CHARS"]}},
        headers=api.admin,
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["details"]["field"] == "sms_sender.allowed[1]"


async def test_pool_tenant_cannot_pick_a_sender(api: Any, tenant: dict[str, Any]) -> None:
    resp = await send(api, tenant, contact_id="jan", sms_sender="SERWIS")
    assert resp.status == 422
    assert (await resp.json())["error"]["details"]["channels"]["sms"]["reason"] == "sender_not_allowed"


async def test_idempotency(api: Any, tenant: dict[str, Any]) -> None:
    body = {"contact_id": "jan", "idempotency_key": "order-1042-ready"}
    first = await send(api, tenant, **body)
    second = await send(api, tenant, **body)
    assert first.status == second.status == 202
    assert await first.json() == await second.json()
    assert await credits(api, tenant) == 99
    resp = await send(api, tenant, **body, text="another text")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "idempotency_key_reused"
    # two at the same moment: one message, one charge, both get the same answer
    twins = await asyncio.gather(
        *(send(api, tenant, contact_id="jan", idempotency_key="twin") for _ in range(2))
    )
    bodies = [await r.json() for r in twins]
    assert [r.status for r in twins] == [202, 202] and bodies[0] == bodies[1]
    assert await credits(api, tenant) == 98


async def test_schedule_and_cancel(api: Any, tenant: dict[str, Any], clock: FakeClock) -> None:
    resp = await send(api, tenant, contact_id="jan", send_at="2026-12-24T08:00:00+01:00")
    m = (await resp.json())["messages"][0]
    assert m["status"] == "scheduled"
    assert await credits(api, tenant) == 99
    resp = await api.delete(f"/v1/messages/{m['id']}", headers=tenant["auth"])
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    assert await credits(api, tenant) == 100
    resp = await api.delete(f"/v1/messages/{m['id']}", headers=tenant["auth"])
    assert resp.status == 409
    other = await new_tenant(api, "Other")
    assert (await api.get(f"/v1/messages/{m['id']}", headers=other["auth"])).status == 404
