"""Conversations (issue 7): threads with context, the operators' lists, drops, the event feed with
long-polling, tenant isolation, cursor pagination. On SQLite and PostgreSQL (``db_target``).

The first test runs the whole daemon in-process (``Runtime``) with the test SMSC and the test relay:
a conversation over SMS (both directions) and email (outbound) for one contact in one context, read
back through the API in order. The others use the ``api`` fixture (the real app over the test
database) and an injected clock. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from conftest import PG_URL, DbTarget, FakeClock
from harness import POOL, ApiClient, daemon_config, eventually, running
from harness import h as _h
from smsc import SmscSimulator
from smtp_sink import SmtpSink
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import load
from gateway.http.context import ApiContext
from gateway.runtime import Runtime
from gateway.services.events import event_cursor
from gateway.storage import drops as drops_repo
from gateway.storage import events as events_repo
from gateway.storage import messages as repo
from gateway.storage.db import Database, make_engine
from gateway.storage.tables import attachments, threads

TOKEN = "conversations-admin-token-0123456789"
JAN = "+48500100200"
ANNA = "+48500100300"
REPAIR = {"type": "repair", "id": "R-1042"}


# --- the daemon, in-process ------------------------------------------------------------------------


class Gateway(ApiClient):
    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, sim: SmscSimulator) -> None:
        super().__init__(runtime, http, TOKEN)
        self.sim = sim

    async def get(self, auth: dict[str, str], path: str, **params: Any) -> Any:
        status, body = await self.call("GET", path, _h(auth), params=params)
        assert status == 200, body
        return body

    async def tenant(self, name: str, **extra: Any) -> dict[str, str]:
        status, t = await self.call(
            "POST", "/v1/tenants", self.admin, json={"name": name, "sms_credits": 1000, **extra}
        )
        assert status == 201, t
        return {"Authorization": f"Bearer {t['api_key']}", "id": t["id"], "secret": t["webhook_secret"]}

    async def contact(self, auth: dict[str, str], cid: str, phone: str, **extra: Any) -> None:
        body = {"name": cid, "phones": [phone], **extra}
        status, out = await self.call("PUT", f"/v1/contacts/{cid}", _h(auth), json=body)
        assert status in (200, 201), out

    async def send(self, auth: dict[str, str], **body: Any) -> list[dict[str, Any]]:
        body.setdefault("channels", ["sms"])
        status, out = await self.call("POST", "/v1/messages", _h(auth), json=body)
        assert status == 202, out
        return list(out["messages"])

    async def reply(self, auth: dict[str, str], customer: str, pool_number: str, text: str) -> None:
        """The customer answers from their phone: the SMSC delivers an MO; wait until it is stored."""
        before = len((await self.get(auth, "/v1/messages", status="received"))["messages"])
        await self.sim.mo_text(customer.lstrip("+"), pool_number.lstrip("+"), text)

        async def stored() -> bool:
            return len((await self.get(auth, "/v1/messages", status="received"))["messages"]) > before

        await eventually(stored, f"reply {text!r} stored")

    async def wait_status(self, auth: dict[str, str], message_id: str, statuses: set[str]) -> dict[str, Any]:
        async def reached() -> bool:
            return (await self.get(auth, f"/v1/messages/{message_id}"))["status"] in statuses

        await eventually(reached, f"{message_id} in {statuses}")
        return dict(await self.get(auth, f"/v1/messages/{message_id}"))


@contextlib.asynccontextmanager
async def gateway(
    target: DbTarget, tmp_path: Path, sim: SmscSimulator, extra: str = "", **runtime_kw: Any
) -> AsyncIterator[Gateway]:
    path = daemon_config(
        target,
        tmp_path,
        token=TOKEN,
        smsc_port=sim.port,
        queue={"retry_base_seconds": 0.1, "retry_max_seconds": 0.5},
        connector={"enquire_link_seconds": 1, "response_timeout_seconds": 1},
        extra=extra,
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={}, **runtime_kw)
    async with running(runtime):
        await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield Gateway(runtime, http, sim)


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as s:
        yield s


async def test_a_conversation_over_both_channels_reads_back_in_order(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    async with SmtpSink() as relay:
        email = f"""
[smtp]
message_id_secret = "conversation-test-secret-0123"
[relay]
host = "127.0.0.1"
port = {relay.port}
starttls = false
"""
        async with gateway(db_target, tmp_path, sim, email) as gw:
            shop = await gw.tenant("Serwis")
            await gw.contact(shop, "jan", JAN, emails=["jan@example.com"])
            await gw.contact(shop, "anna", ANNA)

            [first] = await gw.send(shop, contact_id="jan", text="Rower przyjęty do naprawy", context=REPAIR)
            pool_number = first["sms"]["sender"]
            await gw.wait_status(shop, first["id"], {"delivered"})
            await gw.reply(shop, JAN, pool_number, "Kiedy bedzie gotowy?")
            both = await gw.send(
                shop,
                contact_id="jan",
                channels=["sms", "email"],
                subject="Naprawa R-1042",
                text="Gotowy jutro po 10",
                context=REPAIR,
            )
            assert {m["channel"] for m in both} == {"sms", "email"}
            assert {m["thread_id"] for m in both} == {first["thread_id"]}  # same contact, same context
            for m in both:
                await gw.wait_status(shop, m["id"], {"delivered", "sent"})
            await gw.reply(shop, JAN, pool_number, "Dziekuje, bede o 11")
            # Another case for the same customer, and the same case for another customer: other threads.
            [chat] = await gw.send(shop, contact_id="jan", text="Przy okazji: promocja na opony")
            [annas] = await gw.send(shop, contact_id="anna", text="Pani rower też gotowy", context=REPAIR)
            assert len({first["thread_id"], chat["thread_id"], annas["thread_id"]}) == 3

            found = await gw.get(
                shop, "/v1/threads", contact_id="jan", **{f"context_{k}": v for k, v in REPAIR.items()}
            )
            [summary] = found["threads"]
            assert summary["id"] == first["thread_id"] and summary["context"] == REPAIR
            assert summary["contact_id"] == "jan" and summary["message_count"] == 5
            assert summary["last_message"]["text"] == "Dziekuje, bede o 11"

            thread = await gw.get(shop, f"/v1/threads/{first['thread_id']}")
            got = [(m["direction"], m["channel"], m["text"]) for m in thread["messages"]]
            assert got[:2] == [
                ("outbound", "sms", "Rower przyjęty do naprawy"),
                ("inbound", "sms", "Kiedy bedzie gotowy?"),
            ]
            # The SMS and the email of one request share their moment; either may be listed first.
            assert sorted(got[2:4]) == [
                ("outbound", "email", "Gotowy jutro po 10"),
                ("outbound", "sms", "Gotowy jutro po 10"),
            ]
            assert got[4] == ("inbound", "sms", "Dziekuje, bede o 11")
            by_channel = {m["channel"]: m for m in thread["messages"][2:4]}
            assert (
                by_channel["email"]["status"] == "sent" and by_channel["email"]["subject"] == "Naprawa R-1042"
            )
            assert by_channel["email"]["recipient"] == "jan@example.com"
            assert thread["messages"][0]["status"] == "delivered"
            assert thread["messages"][1]["status"] == "received"
            assert (thread["messages"][1]["sender"], thread["messages"][1]["recipient"]) == (JAN, pool_number)
            assert thread["next_cursor"] is None
            assert len(await relay.wait_messages(1)) == 1

            # The same case, everybody: Anna's thread is the newest.
            both_threads = await gw.get(shop, "/v1/threads", context_type="repair", context_id="R-1042")
            assert [t["contact_id"] for t in both_threads["threads"]] == ["anna", "jan"]
            card = await gw.get(shop, "/v1/contacts/jan/threads")
            assert [t["id"] for t in card["threads"]] == [chat["thread_id"], first["thread_id"]]
            received = await gw.get(shop, "/v1/messages", status="received")
            assert [m["text"] for m in received["messages"]] == [
                "Dziekuje, bede o 11",
                "Kiedy bedzie gotowy?",
            ]
            assert {m["thread_id"] for m in received["messages"]} == {first["thread_id"]}

            feed: dict[str, Any] = {}

            async def feed_has_it_all() -> bool:
                # (Receipts of the last messages are still arriving: read until the feed has them.)
                feed.update(await gw.get(shop, "/v1/events", limit=200))
                kinds = [(e["type"], e["data"].get("status")) for e in feed["events"]]
                return kinds.count(("message.received", None)) == 2 and {
                    ("message.status", s) for s in ("queued", "sending", "delivered")
                } <= set(kinds)

            await eventually(feed_has_it_all, "the conversation's events in the feed")
            events = feed["events"]
            assert len({e["id"] for e in events}) == len(events) and feed["next"] == events[-1]["cursor"]
            first_events = [e["data"]["status"] for e in events if e["data"].get("message_id") == first["id"]]
            # In the order they happened ("sent" is skipped when the receipt beats the submit's record).
            assert first_events in (
                ["queued", "sending", "sent", "delivered"],
                ["queued", "sending", "delivered"],
            )
            later = await gw.get(shop, "/v1/events", after=events[-2]["cursor"])
            assert later["events"][0] == events[-1]


# --- thread rules (the API over the test database) ------------------------------------------------


async def _tenant(api: Any, name: str) -> dict[str, str]:
    resp = await api.post("/v1/tenants", json={"name": name, "sms_credits": 10_000}, headers=api.admin)
    assert resp.status == 201, await resp.text()
    t = await resp.json()
    return {"Authorization": f"Bearer {t['api_key']}", "id": t["id"]}


async def _contact(api: Any, auth: dict[str, str], cid: str, phone: str) -> None:
    resp = await api.put(f"/v1/contacts/{cid}", json={"name": cid, "phones": [phone]}, headers=_h(auth))
    assert resp.status in (200, 201), await resp.text()


async def _send(api: Any, auth: dict[str, str], expect: int = 202, **body: Any) -> dict[str, Any]:
    body.setdefault("channels", ["sms"])
    body.setdefault("text", "Dzień dobry")
    resp = await api.post("/v1/messages", json=body, headers=_h(auth))
    out: dict[str, Any] = await resp.json()
    assert resp.status == expect, out
    return out["messages"][0] if expect == 202 else out


async def _get(api: Any, auth: dict[str, str], path: str, expect: int = 200, **params: Any) -> Any:
    resp = await api.get(path, params=params, headers=_h(auth) if "Authorization" in auth else auth)
    body = await resp.json()
    assert resp.status == expect, body
    return body


async def test_thread_rules(api: Any, api_context: ApiContext, clock: FakeClock) -> None:
    shop = await _tenant(api, "Serwis")
    await _contact(api, shop, "jan", JAN)
    await _contact(api, shop, "anna", ANNA)
    a = await _send(api, shop, contact_id="jan", context=REPAIR)
    clock.advance(seconds=1)
    assert (await _send(api, shop, contact_id="jan", context=REPAIR))["thread_id"] == a["thread_id"]
    # Same context, another contact: that contact's own thread.
    assert (await _send(api, shop, contact_id="anna", context=REPAIR))["thread_id"] != a["thread_id"]
    # Without a context: the contact's latest context-free thread (never a context thread).
    plain = await _send(api, shop, contact_id="jan")
    assert plain["thread_id"] != a["thread_id"]
    clock.advance(seconds=1)
    assert (await _send(api, shop, contact_id="jan"))["thread_id"] == plain["thread_id"]
    # thread_id names a thread outright: this tenant's and this contact's, else refused.
    assert (await _send(api, shop, contact_id="jan", thread_id=a["thread_id"]))["thread_id"] == a["thread_id"]
    err = await _send(api, shop, 422, contact_id="anna", thread_id=a["thread_id"])
    assert err["error"]["details"]["field"] == "thread_id"
    err = await _send(
        api, shop, 422, contact_id="jan", thread_id=a["thread_id"], context={"type": "order", "id": "9"}
    )
    assert err["error"]["details"]["field"] == "context"
    err = await _send(api, shop, 404, contact_id="jan", thread_id="thr_doesnotexist")
    assert err["error"]["details"] == {"kind": "thread", "id": "thr_doesnotexist"}
    other = await _tenant(api, "Inny")
    await _contact(api, other, "jan", JAN)
    err = await _send(api, other, 404, contact_id="jan", thread_id=a["thread_id"])  # another tenant's
    assert err["error"]["code"] == "not_found"
    # A bare number that is nobody's contact: the number stands in for the contact.
    bare1 = await _send(api, shop, to={"phone": "+48500999001"}, context=REPAIR)
    assert (await _send(api, shop, to={"phone": "500 999 001"}, context=REPAIR))["thread_id"] == bare1[
        "thread_id"
    ]
    assert (await _send(api, shop, to={"phone": "+48500999002"}, context=REPAIR))["thread_id"] != bare1[
        "thread_id"
    ]

    # Requests racing to open the same new context's thread open one (PostgreSQL: a lock; SQLite: one writer).
    racing = await asyncio.gather(
        *(_send(api, shop, contact_id="jan", context={"type": "order", "id": "O-7"}) for _ in range(6))
    )
    assert len({m["thread_id"] for m in racing}) == 1


async def test_tenants_never_see_each_other(api: Any, api_context: ApiContext, clock: FakeClock) -> None:
    a = await _tenant(api, "A")
    b = await _tenant(api, "B")
    await _contact(api, a, "jan", JAN)
    await _contact(api, b, "ola", ANNA)
    sent = await _send(api, a, contact_id="jan", context=REPAIR)
    drop_ids = []
    for tenant_id in (a["id"], None):
        drop_ids.append(
            await api_context.db.write(
                lambda conn, t=tenant_id: drops_repo.record_drop(
                    conn,
                    announce=False,
                    channel="sms",
                    tenant_id=t,
                    reason="reply_too_old" if t else "unsolicited",
                    sender=JAN,
                    recipient=POOL[0],
                    size_bytes=12,
                    detail="test",
                    now=clock(),
                )
            )
        )
    # A sees its own ...
    assert [t["id"] for t in (await _get(api, a, "/v1/threads"))["threads"]] == [sent["thread_id"]]
    assert len((await _get(api, a, "/v1/events", wait=5))["events"]) == 1
    [own_drop] = (await _get(api, a, "/v1/drops"))["drops"]
    assert own_drop["id"] == drop_ids[0] and own_drop["reason"] == "reply_too_old"
    # ... B sees nothing of A's, and A's ids are simply not found.
    assert (await _get(api, b, "/v1/threads"))["threads"] == []
    assert (await _get(api, b, "/v1/threads", context_type="repair"))["threads"] == []
    assert (await _get(api, b, "/v1/events"))["events"] == []
    assert (await _get(api, b, "/v1/drops"))["drops"] == []
    assert (await _get(api, b, "/v1/messages"))["messages"] == []
    await _get(api, b, f"/v1/threads/{sent['thread_id']}", 404)
    await _get(api, b, f"/v1/messages/{sent['id']}", 404)
    await _get(api, b, "/v1/contacts/jan/threads", 404)
    err = await _get(api, b, "/v1/drops", 403, tenant_id=a["id"])
    assert err["error"]["code"] == "forbidden"
    # The admin token: nobody's drops by default, a tenant's on request.
    assert [d["id"] for d in (await _get(api, api.admin, "/v1/drops"))["drops"]] == [drop_ids[1]]
    assert [d["id"] for d in (await _get(api, api.admin, "/v1/drops", tenant_id=a["id"]))["drops"]] == [
        drop_ids[0]
    ]
    await _get(api, api.admin, "/v1/threads", 403)  # tenant routes need a tenant key


async def test_long_poll_wakes_on_a_new_event(
    api: Any, api_context: ApiContext, db_target: DbTarget, clock: FakeClock
) -> None:
    shop = await _tenant(api, "Serwis")
    await _contact(api, shop, "jan", JAN)
    conversations = api_context.conversations
    assert conversations is not None
    conversations.poll_interval = 30  # only the in-process wake-up can answer within the bounds below

    started = time.monotonic()
    poll = asyncio.create_task(_get(api, shop, "/v1/events", wait=20))
    await asyncio.sleep(0.3)
    assert not poll.done()
    sent = await _send(api, shop, contact_id="jan")
    body = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started < 5
    [event] = body["events"]
    assert event["type"] == "message.status" and event["data"]["message_id"] == sent["id"]
    assert body["next"] == event["cursor"]

    # Nothing new: an empty answer after about wait= seconds, with the same cursor back.
    started = time.monotonic()
    body = await _get(api, shop, "/v1/events", after=event["cursor"], wait="0.4")
    assert body == {"events": [], "next": event["cursor"]}
    assert 0.35 <= time.monotonic() - started < 5

    # An event written by another process does not pass through our hub: the poll finds it anyway.
    conversations.poll_interval = 0.1
    poll = asyncio.create_task(_get(api, shop, "/v1/events", after=event["cursor"], wait=20))
    await asyncio.sleep(0.2)
    other = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        await other.write(lambda conn: repo.add_event(conn, shop["id"], "message.status", {"x": 1}, clock()))
    finally:
        await other.close()
    body = await asyncio.wait_for(poll, 5)
    assert [e["data"] for e in body["events"]] == [{"x": 1}]

    # Shutting down answers every waiting poll at once.
    conversations.poll_interval = 30
    poll = asyncio.create_task(_get(api, shop, "/v1/events", after=body["next"], wait=20))
    await asyncio.sleep(0.2)
    conversations.hub.close()
    assert (await asyncio.wait_for(poll, 2))["events"] == []

    for bad in ({"wait": "31"}, {"wait": "soon"}, {"after": "-1"}, {"limit": "0"}, {"since": "x"}):
        err = await _get(api, shop, "/v1/events", 422, **bad)
        assert err["error"]["details"]["field"] == next(iter(bad))


async def test_cursor_pagination(api: Any, api_context: ApiContext, clock: FakeClock) -> None:
    shop = await _tenant(api, "Serwis")
    sent = []
    for n in range(7):
        await _contact(api, shop, f"c{n}", f"+4850010{n:04d}")
        sent.append(await _send(api, shop, contact_id=f"c{n}", text=f"wiadomość {n}"))
        clock.advance(seconds=1)
    newest_first = [m["thread_id"] for m in reversed(sent)]

    pages, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await _get(api, shop, "/v1/threads", **params)
        pages.append([t["id"] for t in page["threads"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [t for p in pages for t in p] == newest_first

    # A thread that moves while a client pages: it is listed where it now is (newest activity).
    first = await _get(api, shop, "/v1/threads", limit=3)
    await _send(api, shop, contact_id="c0")  # c0's thread is now the newest, behind the cursor
    rest = await _get(api, shop, "/v1/threads", limit=10, cursor=first["next_cursor"])
    assert sent[0]["thread_id"] not in [t["id"] for t in rest["threads"]]
    assert (await _get(api, shop, "/v1/threads", limit=1))["threads"][0]["id"] == sent[0]["thread_id"]

    # Messages: newest first, paged, filtered by status and time.
    page1 = await _get(api, shop, "/v1/messages", limit=4)
    page2 = await _get(api, shop, "/v1/messages", limit=4, cursor=page1["next_cursor"])
    assert page2["next_cursor"] is None
    texts = [m["text"] for m in page1["messages"] + page2["messages"]]
    assert texts == ["Dzień dobry", *[f"wiadomość {n}" for n in reversed(range(7))]]
    since = (clock.now - timedelta(seconds=1)).isoformat()
    assert len((await _get(api, shop, "/v1/messages", since=since))["messages"]) == 2
    assert (await _get(api, shop, "/v1/messages", status="delivered"))["messages"] == []

    # A thread's messages page oldest first.
    thread = sent[0]["thread_id"]
    one = await _get(api, shop, f"/v1/threads/{thread}", limit=1)
    two = await _get(api, shop, f"/v1/threads/{thread}", limit=1, cursor=one["next_cursor"])
    assert [m["text"] for m in one["messages"] + two["messages"]] == ["wiadomość 0", "Dzień dobry"]
    assert two["next_cursor"] is None

    # Wrong cursors, limits and parameters are errors that name the parameter.
    for path, params in (
        ("/v1/threads", {"cursor": "nonsense"}),
        ("/v1/drops", {"cursor": first["next_cursor"]}),  # a threads cursor on the drops list
        ("/v1/threads", {"limit": "201"}),
        ("/v1/threads", {"contactid": "c1"}),
        ("/v1/messages", {"status": "lost"}),
        ("/v1/messages", {"since": "2026-11-24T12:00:00"}),  # no UTC offset
    ):
        err = await _get(api, shop, path, 422, **params)
        assert err["error"]["details"]["field"] == next(iter(params)), (path, params)


async def test_attachments_are_listed_and_stored_ones_downloadable(
    api: Any, api_context: ApiContext, clock: FakeClock
) -> None:
    shop = await _tenant(api, "Serwis")
    await _contact(api, shop, "jan", JAN)
    sent = await _send(api, shop, contact_id="jan")
    conversations = api_context.conversations
    assert conversations is not None
    folder = conversations.data_dir / "attachments"
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(b"\xff\xd8jpeg bytes")

    async def add(conn: AsyncConnection) -> None:
        base = {"tenant_id": shop["id"], "message_id": sent["id"], "sha256": "0" * 64, "created_at": clock()}
        await conn.execute(
            sa.insert(attachments),
            [
                {
                    **base,
                    "id": "att_stored",
                    "filename": "photo.jpg",
                    "content_type": "image/jpeg",
                    "size_bytes": 13,
                    "stored": True,
                    "storage_path": "attachments/photo.jpg",
                    "not_stored_reason": None,
                },
                {
                    **base,
                    "id": "att_listed",
                    "filename": "big.pdf",
                    "content_type": "application/pdf",
                    "size_bytes": 10**8,
                    "stored": False,
                    "storage_path": None,
                    "not_stored_reason": "quota_exceeded",
                },
            ],
        )

    await api_context.db.write(add)
    thread = await _get(api, shop, f"/v1/threads/{sent['thread_id']}")
    listed = {a["id"]: a for a in thread["messages"][0]["attachments"]}
    assert listed["att_stored"]["download_url"] == "/v1/attachments/att_stored"
    assert listed["att_listed"]["download_url"] is None
    assert listed["att_listed"]["not_stored_reason"] == "quota_exceeded"
    resp = await api.get("/v1/attachments/att_stored", headers=_h(shop))
    assert resp.status == 200 and await resp.read() == b"\xff\xd8jpeg bytes"
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="photo.jpg"'
    err = await _get(api, shop, "/v1/attachments/att_listed", 409)
    assert err["error"]["code"] == "attachment_not_stored"
    other = await _tenant(api, "Inny")
    await _get(api, other, "/v1/attachments/att_stored", 404)


async def test_events_committing_late_are_never_skipped(
    db_target: DbTarget, db: Database, api_context: ApiContext, api: Any, clock: FakeClock
) -> None:
    """PostgreSQL assigns event ids at INSERT and commits transactions in any order. A reader must
    never hand out a position that an event committing later would fall behind."""
    if db_target.backend != "postgresql":
        pytest.skip("SQLite commits one writer at a time, in id order")
    shop = await _tenant(api, "Serwis")
    t = shop["id"]

    async def feed(after: tuple[int, int] = (0, 0)) -> list[Any]:
        return await db.read(lambda conn: events_repo.events_after(conn, t, after, 10))

    async def add(conn: Any, n: int) -> None:
        await repo.add_event(conn, t, "message.status", {"n": n}, clock())

    engine = make_engine(PG_URL, null_pool=True, pg_schema=db_target.pg_schema)
    try:
        # 1. A transaction still running holds event 1; event 2 commits meanwhile: neither is handed
        #    out (2 could not be returned without the reader passing 1 by).
        async with engine.connect() as slow:
            await slow.begin()
            await add(slow, 1)
            await db.write(lambda conn: add(conn, 2))
            assert await feed() == []
            await slow.commit()

        async def both() -> bool:
            return [e.payload["n"] for e in await feed()] == [1, 2]

        await eventually(both, "events 1 and 2, in that order", timeout=5)
        seen = (await feed())[-1].position

        # 2. A transaction that started writing first (older xid) inserts its event *after* a younger
        #    one did (so its id is higher), and commits first. Ordered by id the younger one's event,
        #    committing later with the lower id, would land behind the cursor and be lost.
        async with engine.connect() as older, engine.connect() as younger:
            await older.begin()
            await older.execute(sa.text("SELECT pg_current_xact_id()"))  # takes its xid now
            await younger.begin()
            await add(younger, 3)  # the lower id, the higher xid
            await add(older, 4)
            await older.commit()

            async def four() -> bool:
                return [e.payload["n"] for e in await feed(seen)] == [4]

            await eventually(four, "event 4 (its transaction is older)", timeout=5)
            after_four = (await feed(seen))[-1].position
            await younger.commit()

        async def three() -> bool:
            return [e.payload["n"] for e in await feed(after_four)] == [3]

        await eventually(three, "event 3 after the cursor that passed event 4", timeout=5)
    finally:
        await engine.dispose()


async def test_thread_uniqueness_is_per_contact_and_context(api: Any, api_context: ApiContext) -> None:
    shop = await _tenant(api, "Serwis")
    await _contact(api, shop, "jan", JAN)
    m = await _send(api, shop, contact_id="jan", context=REPAIR)

    async def duplicate(conn: AsyncConnection) -> None:
        row = (await conn.execute(sa.select(threads).where(threads.c.id == m["thread_id"]))).mappings().one()
        await conn.execute(sa.insert(threads).values({**row, "id": "thr_dup", "token": "dup"}))

    with pytest.raises(sa.exc.IntegrityError):
        await api_context.db.write(duplicate)


async def test_shutdown_answers_waiting_long_polls(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    async with gateway(db_target, tmp_path, sim) as gw:
        shop = await gw.tenant("Serwis")
        poll = asyncio.create_task(gw.call("GET", "/v1/events", _h(shop), params={"wait": "30"}))
        await asyncio.sleep(0.3)
        assert not poll.done()
        started = time.monotonic()
        gw.runtime.stop.set()  # the daemon stops while the poll waits: it answers, empty, at once
        status, body = await asyncio.wait_for(poll, 5)
        assert status == 200 and body == {"events": [], "next": event_cursor((0, 0))}
        assert time.monotonic() - started < 3
