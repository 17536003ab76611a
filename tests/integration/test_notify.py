"""Notifications (issue 8) over the HTTP API on both databases: templates, delays, business hours,
dedupe keys, event rules and reminders; and, with the daemon and the test SMSC, a delayed message
that goes out once, when due and not before."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import DbTarget, FakeClock
from harness import ApiClient, daemon_config, eventually, running
from harness import h as _h
from smsc import SmscSimulator
from test_api_messages import credits, new_tenant, put_contact

from gateway.config import load
from gateway.runtime import Runtime
from gateway.storage import messages as messages_repo

HOURS = {
    "timezone": "Europe/Warsaw",
    "weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
    "closed": ["2026-12-24"],
    "locations": {"krakow": {"weekly": {"sat": ["10:00-14:00"]}}},
}


@pytest.fixture
async def shop(api: Any) -> dict[str, Any]:
    t = await new_tenant(api, "Serwis", business_hours=HOURS)
    await put_contact(api, t, "jan", phones=["+48500100200"], emails=["jan@example.com"])
    return t


async def call(api: Any, method: str, path: str, t: dict[str, Any], body: Any = None) -> tuple[int, Any]:
    resp = await api.request(method, path, json=body, headers=t["auth"])
    return resp.status, (await resp.json() if resp.status != 204 else None)


async def send(api: Any, t: dict[str, Any], **body: Any) -> tuple[int, Any]:
    body.setdefault("channels", ["sms"])
    body.setdefault("contact_id", "jan")
    return await call(api, "POST", "/v1/messages", t, body)


async def message(api: Any, t: dict[str, Any], message_id: str) -> dict[str, Any]:
    status, m = await call(api, "GET", f"/v1/messages/{message_id}", t)
    assert status == 200, m
    return dict(m)


READY = {
    "sms": {"text": "{{ name }}, your {{ item }} is ready for pickup (order {{ order }})."},
    "email": {
        "subject": "Order {{ order }} is ready",
        "text": "Hello {{ name }},\nyour {{ item }} is ready.",
        "html": "<p>Hello {{ name }}, your {{ item }} is ready.</p>",
    },
}


# --- templates -------------------------------------------------------------------------------------


async def test_templates_crud_and_preview(api: Any, shop: dict[str, Any]) -> None:
    status, created = await call(api, "PUT", "/v1/templates/ready", shop, READY)
    assert status == 201, created
    assert created["variables"] == ["item", "name", "order"]
    status, replaced = await call(api, "PUT", "/v1/templates/ready", shop, {**READY, "description": "v2"})
    assert status == 200 and replaced["description"] == "v2"
    status, listed = await call(api, "GET", "/v1/templates", shop)
    assert [t["name"] for t in listed["templates"]] == ["ready"]
    status, out = await call(
        api,
        "POST",
        "/v1/templates/ready/render",
        shop,
        {"variables": {"name": "Jan", "item": "rower <Kross>", "order": "R-1042"}},
    )
    assert status == 200, out
    assert out["sms"]["text"] == "Jan, your rower <Kross> is ready for pickup (order R-1042)."
    assert out["sms"]["encoding"] == "gsm7" and out["sms"]["parts"] == 1
    assert out["email"]["subject"] == "Order R-1042 is ready"
    assert out["email"]["html"] == "<p>Hello Jan, your rower &lt;Kross&gt; is ready.</p>"  # HTML only
    other = await new_tenant(api, "Other")
    assert (await call(api, "GET", "/v1/templates/ready", other))[0] == 404
    assert (await call(api, "DELETE", "/v1/templates/ready", shop))[0] == 204
    assert (await call(api, "GET", "/v1/templates/ready", shop))[0] == 404


async def test_template_errors_are_422_naming_line_and_variable(api: Any, shop: dict[str, Any]) -> None:
    status, err = await call(api, "PUT", "/v1/templates/bad", shop, {"sms": {"text": "Hello\n{{ name "}})
    assert status == 422 and err["error"]["details"]["field"] == "sms.text"
    assert "line 2" in err["error"]["message"]
    status, err = await call(api, "PUT", "/v1/templates/none", shop, {"description": "no body"})
    assert status == 422
    await call(api, "PUT", "/v1/templates/ready", shop, READY)
    # At send time a missing variable is a 422 naming it; nothing is sent or charged.
    status, err = await send(api, shop, template="ready", variables={"name": "Jan", "order": "R-1"})
    assert status == 422, err
    assert err["error"]["details"]["field"] == "variables.item" and "item" in err["error"]["message"]
    assert await credits(api, shop) == 100
    # The preview says the same.
    status, err = await call(api, "POST", "/v1/templates/ready/render", shop, {"variables": {}})
    assert status == 422 and err["error"]["details"]["field"].startswith("variables.")
    # The sandbox refuses Python internals.
    await call(api, "PUT", "/v1/templates/evil", shop, {"sms": {"text": "{{ x.__class__.__mro__ }}"}})
    status, err = await send(api, shop, template="evil", variables={"x": 1})
    assert status == 422 and "not allowed" in err["error"]["message"]
    for body, field in [
        ({"template": "ready", "text": "both"}, "template"),
        ({"template": "nope", "variables": {}}, "template"),
        ({"text": "x", "variables": {"a": 1}}, "variables"),
        ({"template": "ready", "variables": {}, "channels": ["sms", "fax"]}, "variables.item"),
    ]:
        status, err = await send(api, shop, **body)
        assert status == 422 and err["error"]["details"]["field"] == field, (body, err)


async def test_send_with_a_template_per_channel(api: Any, shop: dict[str, Any]) -> None:
    await call(api, "PUT", "/v1/templates/ready", shop, READY)
    variables = {"name": "Jan", "item": "rower", "order": "R-1042"}
    status, out = await send(api, shop, channels=["sms", "email"], template="ready", variables=variables)
    assert status == 202, out
    sms, email = out["messages"]
    assert (await message(api, shop, sms["id"]))["text"].startswith("Jan, your rower is ready for pickup")
    got = await message(api, shop, email["id"])
    assert (
        got["text"] == "Hello Jan,\nyour rower is ready."
        and got["email"]["subject"] == "Order R-1042 is ready"
    )
    assert got["email"]["html"] is True
    await call(api, "PUT", "/v1/templates/sms-only", shop, {"sms": {"text": "Hi {{ name }}"}})
    status, err = await send(api, shop, channels=["email"], template="sms-only", variables={"name": "J"})
    assert status == 422 and err["error"]["details"]["field"] == "channels[0]"


# --- timing ----------------------------------------------------------------------------------------


async def test_delay(api: Any, shop: dict[str, Any], clock: FakeClock) -> None:
    status, out = await send(api, shop, text="soon", delay="PT15M")
    assert status == 202 and out["messages"][0]["status"] == "scheduled"
    got = await message(api, shop, out["messages"][0]["id"])
    assert datetime.fromisoformat(got["send_at"]) == clock.now + timedelta(minutes=15)
    status, out = await send(api, shop, text="now", delay=0)
    assert out["messages"][0]["status"] == "queued"
    for body, field in [
        ({"delay": 60, "send_at": "2026-12-01T10:00:00+01:00"}, "delay"),
        ({"delay": "P1M"}, "delay"),
        ({"delay": "15 minutes"}, "delay"),
        ({"delay": -5}, "delay"),
        ({"location": "krakow"}, "location"),
    ]:
        status, err = await send(api, shop, text="x", **body)
        assert status == 422 and err["error"]["details"]["field"] == field, (body, err)


@pytest.mark.parametrize(
    ("now", "expected", "location"),
    [
        # Tuesday 24 November 2026 22:00 in Warsaw (21:00 UTC) -> Wednesday 9:00 CET.
        (datetime(2026, 11, 24, 21, 0, tzinfo=UTC), "2026-11-25T08:00:00Z", None),
        # Open now: goes now.
        (datetime(2026, 11, 24, 12, 0, tzinfo=UTC), None, None),
        # Saturday 28 March 2026 22:00 CET; the clocks go forward that night -> Monday 9:00 CEST.
        (datetime(2026, 3, 28, 21, 0, tzinfo=UTC), "2026-03-30T07:00:00Z", None),
        # Friday 23 October 2026 22:00 CEST; they go back on Sunday -> Monday 9:00 CET.
        (datetime(2026, 10, 23, 20, 0, tzinfo=UTC), "2026-10-26T08:00:00Z", None),
        # 23 December 22:00, the 24th closed -> Friday 25th 9:00.
        (datetime(2026, 12, 23, 21, 0, tzinfo=UTC), "2026-12-25T08:00:00Z", None),
        # The Krakow location opens on Saturdays only.
        (datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "2026-11-28T09:00:00Z", "krakow"),
    ],
)
async def test_business_hours_only(
    api: Any,
    shop: dict[str, Any],
    clock: FakeClock,
    now: datetime,
    expected: str | None,
    location: str | None,
) -> None:
    clock.now = now
    status, out = await send(api, shop, text="x", business_hours_only=True, location=location)
    assert status == 202, out
    (m,) = out["messages"]
    got = await message(api, shop, m["id"])
    if expected is None:
        assert m["status"] == "queued" and got["send_at"] is None
    else:
        assert m["status"] == "scheduled"
        assert datetime.fromisoformat(got["send_at"]) == datetime.fromisoformat(expected)


async def test_business_hours_are_validated_and_needed(api: Any) -> None:
    resp = await api.post(
        "/v1/tenants",
        json={"name": "Bad", "business_hours": {"timezone": "Europe/Warsaw", "weekly": {"mon": ["9-17"]}}},
        headers=api.admin,
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["details"]["field"] == "business_hours.weekly.mon[0]"
    plain = await new_tenant(api, "Plain")
    await put_contact(api, plain, "jan", phones=["+48500100200"])
    status, err = await send(api, plain, text="x", business_hours_only=True)
    assert status == 422 and err["error"]["details"]["field"] == "business_hours_only"


# --- dedupe keys -----------------------------------------------------------------------------------


async def test_dedupe_key_replaces_cancels_and_never_resends(
    api: Any, api_context: Any, shop: dict[str, Any]
) -> None:
    key = "reminder:visit:881"
    status, first = await send(api, shop, text="a" * 200, delay="P1D", dedupe_key=key)  # 2 parts
    assert status == 202 and await credits(api, shop) == 98
    status, second = await send(api, shop, text="b", delay="P2D", dedupe_key=key)  # 1 part
    assert status == 202, second
    old = await message(api, shop, first["messages"][0]["id"])
    assert old["status"] == "cancelled" and "dedupe_key" in old["status_reason"]
    assert await credits(api, shop) == 99  # 2 back, 1 reserved
    # A refused replacement leaves the scheduled one alone (one transaction).
    status, err = await send(api, shop, text="c", category="marketing", dedupe_key=key)
    assert status == 422
    assert (await message(api, shop, second["messages"][0]["id"]))["status"] == "scheduled"
    # Cancel by key.
    status, out = await call(api, "DELETE", f"/v1/messages?dedupe_key={key}", shop)
    assert status == 200 and [m["status"] for m in out["messages"]] == ["cancelled"]
    assert await credits(api, shop) == 100
    assert (await call(api, "DELETE", f"/v1/messages?dedupe_key={key}", shop))[0] == 409
    assert (await call(api, "DELETE", "/v1/messages?dedupe_key=nobody", shop))[0] == 404
    assert (await call(api, "DELETE", "/v1/messages", shop))[0] == 422
    # After a cancel the key is free; once its message went out, it is not sent again.
    status, third = await send(api, shop, text="d", dedupe_key=key)
    assert status == 202
    third_id = third["messages"][0]["id"]
    now = datetime.now(UTC)
    await api_context.db.write(lambda conn: messages_repo.set_message_status(conn, third_id, "sent", now))
    status, err = await send(api, shop, text="e", delay=60, dedupe_key=key)
    assert status == 409 and err["error"]["code"] == "already_sent"
    assert err["error"]["details"]["message_ids"] == [third_id]
    other = await new_tenant(api, "Other")
    await put_contact(api, other, "jan", phones=["+48500100200"])
    assert (await send(api, other, text="f", dedupe_key=key))[0] == 202  # keys are per tenant


# --- rules and app events --------------------------------------------------------------------------


async def test_rules_fire_on_matching_events_only(api: Any, shop: dict[str, Any]) -> None:
    await call(
        api, "PUT", "/v1/templates/ready", shop, {"sms": {"text": "{{ item }} ready ({{ context.id }})"}}
    )
    status, rule = await call(
        api,
        "POST",
        "/v1/rules",
        shop,
        {
            "event": "order.status_changed",
            "match": {"status": "ready"},
            "channels": ["sms"],
            "template": "ready",
        },
    )
    assert status == 201, rule
    event = {
        "type": "order.status_changed",
        "contact_id": "jan",
        "context": {"type": "repair", "id": "R-1042"},
        "data": {"status": "ready", "item": "Rower"},
    }
    status, out = await call(api, "POST", "/v1/app-events", shop, event)
    assert status == 200, out
    (result,) = out["results"]
    assert result["rule_id"] == rule["id"] and result["outcome"] == "queued"
    (m,) = result["messages"]
    assert (await message(api, shop, m["id"]))["text"] == "Rower ready (R-1042)"
    status, threads = await call(api, "GET", "/v1/threads?context_type=repair&context_id=R-1042", shop)
    assert status == 200 and threads["threads"][0]["id"] == m["thread_id"]
    # Not on another status, not on another event type.
    for other in ({**event, "data": {"status": "in_repair"}}, {**event, "type": "order.created"}):
        status, out = await call(api, "POST", "/v1/app-events", shop, other)
        assert status == 200 and out["results"] == []
    # A missing variable is that rule's error, not the request's.
    status, out = await call(api, "POST", "/v1/app-events", shop, {**event, "data": {"status": "ready"}})
    assert out["results"][0]["outcome"] == "error" and out["results"][0]["field"] == "variables.item"
    # Refused by policy: reported per rule.
    await put_contact(api, shop, "jan", phones=["+48500100200"], consent={"sms": False})
    status, out = await call(api, "POST", "/v1/app-events", shop, event)
    assert out["results"][0]["outcome"] == "refused" and out["results"][0]["reason"] == "sms_opt_out"
    # Disabled rules do not fire; deleted ones are gone.
    status, patched = await call(api, "PATCH", f"/v1/rules/{rule['id']}", shop, {"enabled": False})
    assert status == 200 and patched["enabled"] is False
    assert (await call(api, "POST", "/v1/app-events", shop, event))[1]["results"] == []
    status, listed = await call(api, "GET", "/v1/rules", shop)
    assert [r["id"] for r in listed["rules"]] == [rule["id"]]
    assert (await call(api, "DELETE", f"/v1/rules/{rule['id']}", shop))[0] == 204
    assert (await call(api, "GET", f"/v1/rules/{rule['id']}", shop))[0] == 404


async def test_rule_validation(api: Any, shop: dict[str, Any]) -> None:
    await call(api, "PUT", "/v1/templates/t", shop, {"sms": {"text": "x"}})
    base = {"event": "visit.time_changed", "channels": ["sms"], "template": "t"}
    for body, field in [
        ({**base, "template": "missing"}, "template"),
        ({**base, "channels": ["email"]}, "channels[0]"),
        ({**base, "remind_before": "P1D"}, "time_field"),
        ({**base, "time_field": "visit_at"}, "time_field"),
        ({**base, "remind_before": "P1D", "time_field": "visit_at", "delay": 5}, "delay"),
        ({**base, "match": {"status": {"like": "r%"}}}, "match.status"),
        ({**base, "match": {"status": [1, 2]}}, "match.status"),
        ({**base, "event": "bad event"}, "event"),
        ({**base, "delay": "P1Y"}, "delay"),
    ]:
        status, err = await call(api, "POST", "/v1/rules", shop, body)
        assert status == 422 and err["error"]["details"]["field"] == field, (body, err)


async def test_match_operators(api: Any, shop: dict[str, Any]) -> None:
    await call(api, "PUT", "/v1/templates/t", shop, {"sms": {"text": "courier {{ status }}"}})
    _, rule = await call(
        api,
        "POST",
        "/v1/rules",
        shop,
        {
            "event": "delivery.update",
            "match": {"status": {"in": ["on_the_way", "arriving"]}, "courier.eta_minutes": {"exists": True}},
            "channels": ["sms"],
            "template": "t",
        },
    )
    assert "id" in rule, rule

    async def fired(data: dict[str, Any]) -> bool:
        event = {"type": "delivery.update", "contact_id": "jan", "data": data}
        status, out = await call(api, "POST", "/v1/app-events", shop, event)
        assert status == 200, out
        return bool(out["results"])

    assert await fired({"status": "arriving", "courier": {"eta_minutes": 5}})
    assert not await fired({"status": "arriving"})
    assert not await fired({"status": "delivered", "courier": {"eta_minutes": 0}})


async def test_a_moved_visit_moves_its_reminder(api: Any, shop: dict[str, Any], clock: FakeClock) -> None:
    await call(
        api,
        "PUT",
        "/v1/templates/visit-reminder",
        shop,
        {"sms": {"text": "Reminder: your visit {{ visit_at | datetime('%d.%m at %H:%M') }}."}},
    )
    status, rule = await call(
        api,
        "POST",
        "/v1/rules",
        shop,
        {
            "event": "visit.time_changed",
            "channels": ["sms"],
            "template": "visit-reminder",
            "remind_before": "P1D",
            "time_field": "visit_at",
        },
    )
    assert status == 201, rule
    context = {"type": "booking", "id": "881"}

    async def visit(at: str) -> dict[str, Any]:
        event = {
            "type": "visit.time_changed",
            "contact_id": "jan",
            "context": context,
            "data": {"visit_at": at},
        }
        status, out = await call(api, "POST", "/v1/app-events", shop, event)
        assert status == 200, out
        (result,) = out["results"]
        return dict(result)

    first = await visit("2026-11-27T12:00:00+01:00")  # clock: 24 Nov 12:00 UTC
    assert first["outcome"] == "scheduled" and first["dedupe_key"] == f"rule:{rule['id']}:booking:881"
    m1 = await message(api, shop, first["messages"][0]["id"])
    assert m1["text"] == "Reminder: your visit 27.11 at 12:00."  # the tenant's time zone
    assert datetime.fromisoformat(m1["send_at"]) == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    moved = await visit("2026-11-30T09:30:00+01:00")
    m2 = await message(api, shop, moved["messages"][0]["id"])
    assert datetime.fromisoformat(m2["send_at"]) == datetime(2026, 11, 29, 8, 30, tzinfo=UTC)
    assert (await message(api, shop, m1["id"]))["status"] == "cancelled"
    assert await credits(api, shop) == 99  # one reminder charged, not two
    # Moved to within 24 h: remind now. Moved into the past: nothing.
    soon = await visit("2026-11-25T08:00:00+01:00")
    assert soon["outcome"] == "queued"
    clock.advance(days=10)
    late = await visit("2026-11-30T09:30:00+01:00")
    assert late["outcome"] == "skipped" and late["reason"] == "too_late"
    bad = await visit("tomorrow")
    assert bad["outcome"] == "error" and bad["field"] == "data.visit_at"


async def test_an_event_id_sends_once(api: Any, shop: dict[str, Any]) -> None:
    await call(api, "PUT", "/v1/templates/t", shop, {"sms": {"text": "Car departed"}})
    await call(
        api, "POST", "/v1/rules", shop, {"event": "ride.departed", "channels": ["sms"], "template": "t"}
    )
    event = {
        "type": "ride.departed",
        "contact_id": "jan",
        "id": "evt-77",
        "context": {"type": "ride", "id": "77"},
    }
    _, first = await call(api, "POST", "/v1/app-events", shop, event)
    _, again = await call(api, "POST", "/v1/app-events", shop, event)
    assert first["results"][0]["messages"] == again["results"][0]["messages"]
    assert await credits(api, shop) == 99


# --- the daemon: a delayed message goes out once, when due ------------------------------------------

TOKEN = "notify-admin-token-0123456789"


@contextlib.asynccontextmanager
async def daemon(
    target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> AsyncIterator[ApiClient]:
    path = daemon_config(
        target, tmp_path, token=TOKEN, smsc_port=sim.port, connector={"enquire_link_seconds": 1}
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={}, clock=clock)
    async with running(runtime):
        await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield ApiClient(runtime, http, TOKEN)


async def test_a_delayed_message_is_not_sent_early_and_is_sent_once(
    db_target: DbTarget, tmp_path: Path, clock: FakeClock
) -> None:
    async with (
        SmscSimulator(system_id="gw", password="secret") as sim,
        daemon(db_target, tmp_path, sim, clock) as gw,
    ):
        status, t = await gw.call("POST", "/v1/tenants", gw.admin, json={"name": "Taxi", "sms_credits": 10})
        auth = {"Authorization": f"Bearer {t['api_key']}"}
        await gw.call("PUT", "/v1/contacts/jan", auth, json={"name": "Jan", "phones": ["+48500100200"]})
        await gw.call("PUT", "/v1/templates/arriving", auth, json={"sms": {"text": "Taxi {{ car }} arrives"}})
        body = {
            "contact_id": "jan",
            "channels": ["sms"],
            "template": "arriving",
            "variables": {"car": "WA 123"},
        }
        status, later = await gw.call("POST", "/v1/messages", _h(auth), json={**body, "delay": "PT15M"})
        assert status == 202 and later["messages"][0]["status"] == "scheduled", later
        # A message sent after it, due now, goes out; the delayed one has not (the queue is ordered
        # by due time and polled every 50 ms, so by now it would have gone if it were due).
        status, now = await gw.call("POST", "/v1/messages", _h(auth), json=body)
        (submit,) = await sim.wait_submits(1)
        await eventually(lambda: _status(gw, auth, now["messages"][0]["id"], "sent"), "immediate sent")
        assert submit.text == "Taxi WA 123 arrives" and len(sim.submits) == 1
        assert (await gw.call("GET", f"/v1/messages/{later['messages'][0]['id']}", auth))[1][
            "status"
        ] == "scheduled"
        clock.advance(minutes=14, seconds=59)
        await gw.call("POST", "/v1/messages", _h(auth), json={**body, "variables": {"car": "probe"}})
        await sim.wait_submits(2)
        assert [s.text for s in sim.submits][-1] == "Taxi probe arrives"
        assert (await gw.call("GET", f"/v1/messages/{later['messages'][0]['id']}", auth))[1][
            "status"
        ] == "scheduled"
        clock.advance(seconds=1)
        await eventually(lambda: _status(gw, auth, later["messages"][0]["id"], "sent"), "delayed sent")
        clock.advance(hours=1)
        await gw.call("POST", "/v1/messages", _h(auth), json={**body, "variables": {"car": "last"}})
        await sim.wait_submits(4)
        assert [s.text for s in sim.submits].count("Taxi WA 123 arrives") == 2  # the immediate + delayed
        assert sim.submits[-1].text == "Taxi last arrives"


async def _status(gw: ApiClient, auth: dict[str, str], message_id: str, wanted: str) -> bool:
    _, m = await gw.call("GET", f"/v1/messages/{message_id}", auth)
    return bool(m["status"] == wanted or (wanted == "sent" and m["status"] == "delivered"))


async def test_a_reminder_within_business_hours_still_comes_before_the_visit(
    api: Any, shop: dict[str, Any], clock: FakeClock
) -> None:
    await call(api, "PUT", "/v1/templates/r", shop, {"sms": {"text": "Visit {{ visit_at | datetime }}"}})
    rule = {
        "event": "visit.time_changed",
        "channels": ["sms"],
        "template": "r",
        "remind_before": "P1D",
        "time_field": "visit_at",
        "business_hours_only": True,
    }
    assert (await call(api, "POST", "/v1/rules", shop, rule))[0] == 201

    async def send_at(visit_at: str) -> datetime:
        event = {"type": "visit.time_changed", "contact_id": "jan", "data": {"visit_at": visit_at}}
        _, out = await call(api, "POST", "/v1/app-events", shop, event)
        (result,) = out["results"]
        assert result["outcome"] == "scheduled", result
        return datetime.fromisoformat((await message(api, shop, result["messages"][0]["id"]))["send_at"])

    # Thursday 26 Nov 12:00 -> due Wednesday 12:00, open: then.
    assert await send_at("2026-11-26T12:00:00+01:00") == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    # Thursday 26 Nov 19:00 -> due Wednesday 19:00, closed -> Thursday 9:00, before the visit.
    assert await send_at("2026-11-26T19:00:00+01:00") == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    # Monday 30 Nov 8:30 -> due Sunday 8:30 -> Monday 9:00 would be after the visit: Friday 9:00.
    assert await send_at("2026-11-30T08:30:00+01:00") == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
