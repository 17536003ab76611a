"""SMS requests accepted together (Database.write_batched) are decided as if one after another:
credits run out at the right request, a contact's first two messages share one new thread and one
pool number, another tenant gets another number, refusals write nothing (both engines)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from conftest import POOL, SMS_SETTINGS, DbTarget, FakeClock
from test_api_messages import credits, new_tenant, put_contact

from gateway.http.context import ApiContext
from gateway.services.errors import ChannelsRefusedError, ConflictError, NotFoundError
from gateway.services.outbound import OutboundService, SendRequest
from gateway.storage.db import Database
from gateway.storage.tables import credit_ledger, messages


def _sms(contact_id: str, text: str = "Rower gotowy", **extra: Any) -> SendRequest:
    return SendRequest(channels=("sms",), text=text, contact_id=contact_id, **extra)


async def test_requests_accepted_together_decide_in_order(api: Any, api_context: ApiContext) -> None:
    shop = await new_tenant(api, "Serwis", credits=5)
    other = await new_tenant(api, "Taxi", credits=10)
    for cid, phone in [("ala", "+48500100201"), ("ola", "+48500100202"), ("ela", "+48500100203")]:
        await put_contact(api, shop, cid, phones=[phone])
    await put_contact(api, shop, "blk", phones=["+48500100204"], blocked=True)
    await put_contact(api, other, "ala-too", phones=["+48500100201"])
    long_text = "Zażółć gęślą jaźń " * 5  # 90 UCS-2 units: 2 parts
    batch = [
        (shop, _sms("ala")),
        (shop, _sms("blk")),
        (other, _sms("ala-too")),
        (shop, _sms("ala", text=long_text)),  # same new contact again: its thread, its number
        (shop, _sms("nobody")),
        (shop, _sms("ola")),
        (shop, _sms("ela")),  # 1 + 2 + 1 = 4 credits taken before it: 1 left, it needs 1
        (shop, _sms("ola")),  # none left
    ]
    sizes: list[int] = []
    accept = api_context.outbound._accept_sms

    async def spy(conn: Any, items: list[Any]) -> list[Any]:
        sizes.append(len(items))
        return await accept(conn, items)

    api_context.outbound._accept_sms = spy  # type: ignore[method-assign]
    outcomes = await asyncio.gather(
        *(api_context.outbound.send(t["id"], req, "") for t, req in batch), return_exceptions=True
    )
    assert sizes == [len(batch)]  # one unit for all of them
    ok = [o[1]["messages"][0] if isinstance(o, tuple) else o for o in outcomes]
    assert isinstance(ok[1], ChannelsRefusedError) and ok[1].refusals["sms"][0] == "contact_blocked"
    assert isinstance(ok[4], NotFoundError)
    assert isinstance(ok[7], ChannelsRefusedError) and ok[7].refusals["sms"][0] == "insufficient_credits"
    ala1, taxi, ala2, ola, ela = ok[0], ok[2], ok[3], ok[5], ok[6]
    assert all(m["status"] == "queued" for m in (ala1, taxi, ala2, ola, ela))
    assert ala1["thread_id"] == ala2["thread_id"] and ala1["sms"]["sender"] == ala2["sms"]["sender"]
    assert ala2["sms"]["parts"] == 2
    assert taxi["sms"]["sender"] in POOL and taxi["sms"]["sender"] != ala1["sms"]["sender"]
    assert len({ala1["thread_id"], ola["thread_id"], ela["thread_id"], taxi["thread_id"]}) == 4
    assert await credits(api, shop) == 0 and await credits(api, other) == 9

    async def ledger(conn: Any) -> list[tuple[Any, ...]]:
        rows = await conn.execute(
            sa.select(credit_ledger.c.delta, credit_ledger.c.balance_after, credit_ledger.c.message_id)
            .where(credit_ledger.c.tenant_id == shop["id"], credit_ledger.c.reason == "sms_reserved")
            .order_by(credit_ledger.c.id)
        )
        return [tuple(r) for r in rows]

    assert await api_context.db.read(ledger) == [
        (-1, 4, ala1["id"]),
        (-2, 2, ala2["id"]),
        (-1, 1, ola["id"]),
        (-1, 0, ela["id"]),
    ]

    async def count(conn: Any) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())

    assert await api_context.db.read(count) == 5  # refusals wrote nothing

    # Later, alone: the contact keeps its thread and its number.
    await api.post(f"/v1/tenants/{shop['id']}/credits", json={"amount": 5}, headers=api.admin)
    _, body = await api_context.outbound.send(shop["id"], _sms("ala"), "")
    (again,) = body["messages"]
    assert again["thread_id"] == ala1["thread_id"] and again["sms"]["sender"] == ala1["sms"]["sender"]


async def test_a_batch_with_contexts_and_alphanumeric_senders(api: Any, api_context: ApiContext) -> None:
    shop = await new_tenant(
        api, "Serwis", credits=10, sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS"}
    )
    await put_contact(api, shop, "jan", phones=["+48500100200"])
    outcomes = await asyncio.gather(
        api_context.outbound.send(shop["id"], _sms("jan", context=("repair", "R-1")), ""),
        api_context.outbound.send(shop["id"], _sms("jan", context=("repair", "R-1")), ""),
        api_context.outbound.send(shop["id"], _sms("jan", context=("repair", "R-2")), ""),
        api_context.outbound.send(shop["id"], _sms("jan"), ""),
    )
    got = [body["messages"][0] for _, body in outcomes]
    assert [m["sms"]["sender"] for m in got] == ["SERWIS"] * 4
    assert got[0]["thread_id"] == got[1]["thread_id"]
    assert len({got[0]["thread_id"], got[2]["thread_id"], got[3]["thread_id"]}) == 3


async def test_idempotency_keys_inside_a_batch(api: Any, api_context: ApiContext) -> None:
    shop = await new_tenant(api, "Serwis", credits=10)
    await put_contact(api, shop, "jan", phones=["+48500100200"])
    await put_contact(api, shop, "blk", phones=["+48500100204"], blocked=True)
    send = api_context.outbound.send
    _, earlier = await send(shop["id"], _sms("jan", idempotency_key="old"), "h-old")
    outcomes = await asyncio.gather(
        send(shop["id"], _sms("jan", idempotency_key="a"), "h-a"),
        send(shop["id"], _sms("jan", idempotency_key="a"), "h-a"),  # its twin: the same answer
        send(shop["id"], _sms("jan", idempotency_key="b"), "h-b"),
        send(shop["id"], _sms("jan", idempotency_key="b", text="inna"), "h-b2"),  # key reused: 409
        send(shop["id"], _sms("jan", idempotency_key="old"), "h-old"),  # stored earlier: replayed
        send(shop["id"], _sms("blk", idempotency_key="c"), "h-c"),
        send(shop["id"], _sms("blk", idempotency_key="c"), "h-c"),  # twin of a refused one
        return_exceptions=True,
    )
    a1, a2, b1, b2, old, c1, c2 = outcomes
    assert isinstance(a1, tuple) and a1 == a2 and a1[0] == 202
    assert isinstance(b1, tuple) and b1[0] == 202
    assert isinstance(b2, ConflictError) and b2.code == "idempotency_key_reused"
    assert old == (202, earlier)
    for refused in (c1, c2):
        assert isinstance(refused, ChannelsRefusedError) and refused.refusals["sms"][0] == "contact_blocked"
    assert await credits(api, shop) == 7  # old, a, b

    async def count(conn: Any) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())

    assert await api_context.db.read(count) == 3


async def test_two_daemons_with_the_same_idempotency_key(
    api: Any, api_context: ApiContext, db_target: DbTarget, clock: FakeClock
) -> None:
    """Scale-out (PostgreSQL) or two processes on one SQLite file: the same key sent through two
    daemons at once is one message, one charge, and the same answer from both."""
    shop = await new_tenant(api, "Serwis", credits=10)
    await put_contact(api, shop, "jan", phones=["+48500100200"])
    other_db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        other = OutboundService(other_db, clock, SMS_SETTINGS)
        for round_ in range(5):
            req = _sms("jan", idempotency_key=f"k{round_}")
            first, second = await asyncio.gather(
                api_context.outbound.send(shop["id"], req, "h"), other.send(shop["id"], req, "h")
            )
            assert first == second and first[0] == 202
    finally:
        await other_db.close()
    assert await credits(api, shop) == 5


async def test_two_daemons_spending_the_same_credits_never_overdraw(
    api: Any, api_context: ApiContext, db_target: DbTarget, clock: FakeClock
) -> None:
    """Batches of two daemons race for the last credits: every request is either accepted and
    charged or refused with insufficient_credits (never an error), and the balance ends at zero."""
    shop = await new_tenant(api, "Serwis", credits=25)
    for i in range(40):
        await put_contact(api, shop, f"c{i}", phones=[f"+485001{i:05d}"])
    other_db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        other = OutboundService(other_db, clock, SMS_SETTINGS)
        daemons = [api_context.outbound, other]
        outcomes = await asyncio.gather(
            *(daemons[i % 2].send(shop["id"], _sms(f"c{i}"), "") for i in range(40)), return_exceptions=True
        )
    finally:
        await other_db.close()
    accepted = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if not isinstance(o, tuple)]
    assert len(accepted) == 25 and all(o[0] == 202 for o in accepted)
    assert all(
        isinstance(o, ChannelsRefusedError) and o.refusals["sms"][0] == "insufficient_credits"
        for o in refused
    ), refused
    assert await credits(api, shop) == 0
