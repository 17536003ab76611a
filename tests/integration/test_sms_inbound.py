"""Inbound SMS end to end (issue 4): MO deliver_sm from the test SMSC over real SMPP/TCP into the daemon
(``Runtime`` in-process, with an injected clock), on SQLite and PostgreSQL.

Every wait is bounded; the deliver_sm_resp is sent only after the commit, so once the SMSC has it the
database can be read directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from conftest import DbTarget, FakeClock
from harness import POOL, ApiClient, daemon_config, eventually, running
from harness import h as _h
from smsc import SmscSimulator
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import load
from gateway.domain.sms_text import Encoding, encode_parts, encode_ucs2
from gateway.runtime import Runtime
from gateway.storage.db import Database
from gateway.storage.tables import contacts, drops, events, messages, sms_mo_parts

TOKEN = "inbound-admin-token-0123456789"
JAN = "+48500100200"
ESME_RX_T_APPN = 0x64


class Gateway(ApiClient):
    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, sim: SmscSimulator) -> None:
        super().__init__(runtime, http, TOKEN)
        self.sim = sim
        self.resps = 0  # deliver_sm_resp seen so far

    async def tenant(self, name: str, **extra: Any) -> dict[str, str]:
        status, t = await self.call(
            "POST", "/v1/tenants", self.admin, json={"name": name, "sms_credits": 1000, **extra}
        )
        assert status == 201, t
        return {"Authorization": f"Bearer {t['api_key']}", "id": t["id"]}

    async def contact(self, auth: dict[str, str], cid: str, phone: str, **extra: Any) -> None:
        body = {"name": cid, "phones": [phone], **extra}
        status, out = await self.call("PUT", f"/v1/contacts/{cid}", _h(auth), json=body)
        assert status in (200, 201), out

    async def send(self, auth: dict[str, str], cid: str, text: str) -> dict[str, Any]:
        status, out = await self.call(
            "POST", "/v1/messages", _h(auth), json={"contact_id": cid, "channels": ["sms"], "text": text}
        )
        assert status == 202, out
        return dict(out["messages"][0])

    async def mo(self, send: Callable[[], Awaitable[Any]], deliveries: int = 1) -> list[tuple[int, int]]:
        """Have the SMSC send ``deliveries`` deliver_sm; wait for our answers; return them."""
        await send()
        self.resps += deliveries
        return (await self.sim.wait_deliver_resps(self.resps, timeout=10))[-deliveries:]

    async def rows(self, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
        async def q(conn: AsyncConnection) -> list[dict[str, Any]]:
            stmt = sa.select(table).where(*where)
            if "id" in table.c and table.c.id.type.python_type is int:
                stmt = stmt.order_by(table.c.id)
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

        assert self.runtime.db is not None
        return await self.runtime.db.read(q)

    async def inbound(self) -> list[dict[str, Any]]:
        return await self.rows(messages, messages.c.direction == "inbound")

    async def events(self, tenant: dict[str, str], type_: str) -> list[dict[str, Any]]:
        rows = await self.rows(events, events.c.tenant_id == tenant["id"], events.c.type == type_)
        return [r["payload"] for r in rows]


def _digits(e164: str) -> str:
    return e164.lstrip("+")


@contextlib.asynccontextmanager
async def gateway(
    target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock, **sms: Any
) -> AsyncIterator[Gateway]:
    path = daemon_config(
        target,
        tmp_path,
        token=TOKEN,
        smsc_port=sim.port,
        sms={"housekeeping_seconds": 0.05, **sms},
        connector={"enquire_link_seconds": 1, "response_timeout_seconds": 1},
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={}, clock=clock)
    async with running(runtime):
        await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield Gateway(runtime, http, sim)
    assert not sim.protocol_errors


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as s:
        s.receipts = False
        yield s


async def test_reply_threads_and_after_16_days_is_dropped(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", JAN)
        out = await gw.send(auth, "jan", "Rower gotowy do odbioru. Kiedy Pan przyjdzie?")
        pool_number = out["sms"]["sender"]
        assert pool_number in POOL

        [(_, status)] = await gw.mo(
            lambda: sim.mo_text(_digits(JAN), _digits(pool_number), "Jutro o 10 {ok}")
        )
        assert status == 0
        [reply] = await gw.inbound()
        assert reply["thread_id"] == out["thread_id"]
        assert (reply["status"], reply["channel"], reply["sender"], reply["recipient"]) == (
            "received",
            "sms",
            JAN,
            pool_number,
        )
        assert (reply["text"], reply["sms_encoding"], reply["note"]) == ("Jutro o 10 {ok}", "gsm7", None)
        [received] = await gw.events(auth, "message.received")
        assert received == {
            "message_id": reply["id"],
            "thread_id": out["thread_id"],
            "contact_id": "jan",
            "channel": "sms",
            "text": "Jutro o 10 {ok}",
            "sender": JAN,
            "recipient": pool_number,
        }
        status_code, api_view = await gw.call("GET", f"/v1/messages/{reply['id']}", _h(auth))
        assert status_code == 200 and api_view["status"] == "received" and api_view["direction"] == "inbound"

        clock.advance(days=16)  # the same reply, too late: no time.sleep, the daemon's clock moves
        [(_, status)] = await gw.mo(
            lambda: sim.mo_text(_digits(JAN), _digits(pool_number), "Jednak w piątek")
        )
        assert status == 0  # acknowledged: a refusal would only make the SMSC resend it forever
        assert len(await gw.inbound()) == 1
        [drop] = await gw.rows(drops)
        assert (drop["reason"], drop["tenant_id"], drop["sender"], drop["recipient"]) == (
            "reply_too_old",
            auth["id"],
            JAN,
            pool_number,
        )
        [dropped] = await gw.events(auth, "message.dropped")
        assert dropped["reason"] == "reply_too_old" and dropped["drop_id"] == drop["id"]

        # A new outbound message opens the window again, and the next reply joins the thread.
        await gw.send(auth, "jan", "Przypominamy o odbiorze")
        await gw.mo(lambda: sim.mo_text(_digits(JAN), _digits(pool_number), "OK"))
        assert [m["text"] for m in await gw.inbound()] == ["Jutro o 10 {ok}", "OK"]


async def test_unsolicited_unknown_destination_and_alphanumeric(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        alnum = await gw.tenant("Alnum", sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS"})
        await gw.contact(alnum, "jan", JAN)
        sent = await gw.send(alnum, "jan", "Twoje auto jest gotowe")
        assert sent["sms"]["sender"] == "SERWIS"
        await sim.wait_submits(1)
        assert (sim.submits[0].source_addr, sim.submits[0].source_ton) == ("SERWIS", 5)
        # GSM 03.40: an alphanumeric originator cannot be answered, so no handset sends this; if an
        # SMSC passed one on anyway it would be to an address that is not ours.
        await gw.mo(lambda: sim.send_mo(_digits(JAN), "SERWIS", b"Dzieki", dest_ton=5))
        # To a number that is not in the pool (e.g. a carrier misroute):
        await gw.mo(lambda: sim.mo_text(_digits(JAN), "48999000111", "Halo?"))
        # To a pool number, from a number nobody wrote to from there:
        await gw.mo(lambda: sim.mo_text("48600700800", _digits(POOL[0]), "Kto to?"))
        assert await gw.inbound() == []
        got = [(d["reason"], d["tenant_id"], d["sender"], d["recipient"]) for d in await gw.rows(drops)]
        assert got == [
            ("unknown_destination", None, JAN, "SERWIS"),
            ("unknown_destination", None, JAN, "+48999000111"),
            ("unsolicited", None, "+48600700800", POOL[0]),
        ]
        assert await gw.events(alnum, "message.dropped") == []  # nobody's drops: the admin's list


async def test_three_part_ucs2_reply_out_of_order_is_joined(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    text = "Dzień dobry, rower odbiorę w środę po 17:00, proszę też sprawdzić hamulce. Dziękuję! 🚲 " * 2
    _, payloads = encode_parts(text, Encoding.UCS2)
    assert len(payloads) == 3
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", JAN)
        out = await gw.send(auth, "jan", "Rower gotowy")
        pool = _digits(out["sms"]["sender"])
        # The last part first (Jasmin loses such a message), then the first; nothing is stored yet.
        await gw.mo(
            lambda: sim.mo_concat(_digits(JAN), pool, payloads, ref=0x42, data_coding=8, order=[2, 0]), 2
        )
        assert await gw.inbound() == [] and len(await gw.rows(sms_mo_parts)) == 2
        await gw.mo(lambda: sim.mo_concat(_digits(JAN), pool, payloads, ref=0x42, data_coding=8, order=[1]))
        [reply] = await gw.inbound()
        assert (reply["text"], reply["sms_parts"], reply["sms_encoding"]) == (text, 3, "ucs2")
        assert reply["thread_id"] == out["thread_id"] and reply["note"] is None
        assert await gw.rows(sms_mo_parts) == []

        # 16-bit references, and a surrogate pair cut between two parts by the phone: the octets
        # are joined before decoding, so the emoji survives.
        raw = encode_ucs2("Ok 👍 dziękuję")
        cut = raw.index("👍".encode("utf-16-be")) + 2  # between the high and the low surrogate
        chunks = [raw[:cut], raw[cut:]]
        await gw.mo(
            lambda: sim.mo_concat(
                _digits(JAN), pool, chunks, ref=0x1234, data_coding=8, ref_bits=16, order=[1, 0]
            ),
            2,
        )
        assert [m["text"] for m in await gw.inbound()][-1] == "Ok 👍 dziękuję"


async def test_duplicate_delivery_is_stored_once(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = Database.write
    crash_on: set[int] = set()
    inbound_writes = 0

    async def commit_then_crash(self: Database, unit: Any) -> Any:
        # Fault injection: the unit of work commits, then the daemon "dies" before the deliver_sm_resp
        # (the session answers ESME_RX_T_APPN, as for a crash or a lost connection the SMSC resends).
        nonlocal inbound_writes
        result = await real_write(self, unit)
        if "InboundSmsService.receive" in getattr(unit, "__qualname__", ""):
            inbound_writes += 1
            if inbound_writes in crash_on:
                raise ConnectionResetError("simulated crash after the commit")
        return result

    monkeypatch.setattr(Database, "write", commit_then_crash)
    sim.redeliver_after = 0.2
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", JAN)
        pool = _digits((await gw.send(auth, "jan", "Potwierdza Pan wizytę?"))["sms"]["sender"])
        crash_on.add(1)
        resps = await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Tak"), deliveries=2)
        assert [status for _, status in resps] == [ESME_RX_T_APPN, 0]
        assert sim.redeliveries == 1 and [d.attempt for d in sim.delivers] == [1, 2]
        [reply] = await gw.inbound()
        assert reply["text"] == "Tak"
        [dup] = await gw.rows(drops)  # the resend is visible, not silent, and names what it repeats
        assert (
            dup["reason"] == "duplicate" and dup["tenant_id"] == auth["id"] and reply["id"] in dup["detail"]
        )
        assert len(await gw.events(auth, "message.received")) == 1

        # A multi-part message: the first part and the completing part each committed, then "crashed".
        crash_on.update({3, 5})  # 3: part 1 (crash), 4: its resend, 5: part 2 completes (crash), 6: resend
        parts = [b"Pierwsza czesc, ", b"druga czesc."]
        await gw.mo(lambda: sim.mo_concat(_digits(JAN), pool, parts, ref=7, order=[0]), deliveries=2)
        await gw.mo(lambda: sim.mo_concat(_digits(JAN), pool, parts, ref=7, order=[1]), deliveries=2)
        assert [status for _, status in sim.deliver_resps[-4:]] == [ESME_RX_T_APPN, 0, ESME_RX_T_APPN, 0]
        assert [m["text"] for m in await gw.inbound()] == ["Tak", "Pierwsza czesc, druga czesc."]
        assert await gw.rows(sms_mo_parts) == []
        assert [d["reason"] for d in await gw.rows(drops)] == ["duplicate"] * 3

        # Once answered, the same words again are a new message (the customer's second "Tak"): an
        # SMSC never resends a deliver_sm we acknowledged.
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Tak"))
        assert [m["text"] for m in await gw.inbound()] == ["Tak", "Pierwsza czesc, druga czesc.", "Tak"]


async def test_stop_opts_out_and_start_opts_back_in(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", JAN)
        out = await gw.send(auth, "jan", "Promocja na przeglądy")
        pool = _digits(out["sms"]["sender"])
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "  stop "))
        [reply] = await gw.inbound()
        assert reply["text"] == "  stop " and reply["thread_id"] == out["thread_id"]  # still stored
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is False
        [changed] = await gw.events(auth, "contact.opted_out")
        assert changed["contact_id"] == "jan" and changed["consent"] is False
        assert changed["message_id"] == reply["id"] and changed["channel"] == "sms"
        status, refused = await gw.call(
            "POST", "/v1/messages", _h(auth), json={"contact_id": "jan", "channels": ["sms"], "text": "Hej"}
        )
        assert status == 422, refused
        assert refused["error"]["details"]["channels"]["sms"]["reason"] == "sms_opt_out"

        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "STOP"))  # again: no second event
        assert len(await gw.events(auth, "contact.opted_out")) == 1
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Start"))
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is True
        [opted_in] = await gw.events(auth, "contact.opted_in")
        assert opted_in["contact_id"] == "jan" and opted_in["consent"] is True
        await gw.send(auth, "jan", "Dziękujemy, znów wysyłamy")

        # The tenant's own words (Polish here): "koniec" opts out, "STOP" is now an ordinary reply.
        status, t = await gw.call(
            "PATCH", f"/v1/tenants/{auth['id']}", gw.admin, json={"sms_keywords": {"stop": ["KONIEC"]}}
        )
        assert status == 200 and t["sms_keywords"] == {"stop": ["KONIEC"], "start": ["START", "UNSTOP"]}
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "STOP"))
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is True
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Koniec"))
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is False
        assert [m["text"] for m in await gw.inbound()] == ["  stop ", "STOP", "Start", "STOP", "Koniec"]


async def test_blocked_contact_and_shared_number(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        # A family shares a number: the contact the message went to gets the reply.
        await gw.contact(auth, "anna", JAN)
        await gw.contact(auth, "jan", JAN)
        out = await gw.send(auth, "jan", "Dla Jana")
        pool = _digits(out["sms"]["sender"])
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Jan tu"))
        [reply] = await gw.inbound()
        [jan] = await gw.rows(contacts, contacts.c.contact_id == "jan")
        assert reply["contact_pk"] == jan["pk"]
        assert (await gw.events(auth, "message.received"))[0]["contact_id"] == "jan"

        await gw.contact(auth, "jan", JAN, blocked=True)
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "Halo?"))
        assert len(await gw.inbound()) == 1
        [drop] = await gw.rows(drops)
        assert (drop["reason"], drop["tenant_id"]) == ("contact_blocked", auth["id"])
        # An opt-out is honoured even though its message is dropped (too old, or blocked).
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, "STOP"))
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is False and len(await gw.inbound()) == 1
        [changed] = await gw.events(auth, "contact.opted_out")
        assert changed["message_id"] is None and changed["contact_id"] == "jan"


async def test_incomplete_concatenation_is_stored_after_the_timeout(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock, concat_timeout_minutes=30) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", JAN)
        pool = _digits((await gw.send(auth, "jan", "Wycena"))["sms"]["sender"])
        parts = [b"Zgadzam sie na ", b"wycene 300 zl, ", b"prosze dzwonic."]
        await gw.mo(lambda: sim.mo_concat(_digits(JAN), pool, parts, ref=9, order=[0, 2]), 2)
        await asyncio.sleep(0.3)  # several housekeeping rounds: not yet due
        assert await gw.inbound() == [] and len(await gw.rows(sms_mo_parts)) == 2
        clock.advance(minutes=31)

        async def stored() -> bool:
            return len(await gw.inbound()) == 1

        await eventually(stored, "incomplete message stored by the housekeeping task")
        [reply] = await gw.inbound()
        assert reply["text"] == "Zgadzam sie na prosze dzwonic."
        assert reply["sms_parts"] == 2
        assert (
            reply["note"]
            == "incomplete concatenated message: parts 1, 3 of 3 (the rest did not arrive within 30 minutes)"
        )
        assert await gw.rows(sms_mo_parts) == []


async def test_odd_messages(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        auth = await gw.tenant("Serwis")
        # A bare number (no contact yet): the assignment names no contact ...
        status, out = await gw.call(
            "POST", "/v1/messages", _h(auth), json={"to": {"phone": JAN}, "channels": ["sms"], "text": "Hej"}
        )
        assert status == 202, out
        pool = _digits(out["messages"][0]["sms"]["sender"])
        # ... so the reply goes to the tenant's contact with that number, once there is one.
        await gw.contact(auth, "jan", JAN)
        # 8-bit data (SMPP 3.4 §5.2.19 0x04) is kept as bytes with a note, never taken for a keyword.
        await gw.mo(lambda: sim.send_mo(_digits(JAN), pool, b"STOP\x00\xff", data_coding=0x04))
        # A national number (TON 2) is read in [sms] default_region (PL).
        await gw.mo(lambda: sim.send_mo("500100200", pool, b"Krajowy", source_ton=2, source_npi=1))
        # A data_sm-style payload in message_payload (over 254 octets).
        long_text = "Dlugi tekst " * 30
        await gw.mo(lambda: sim.mo_text(_digits(JAN), pool, long_text))
        # The phone reused reference 5 while an earlier long message still waits for its part 2: the
        # earlier one is stored as incomplete, the new one is joined.
        await gw.mo(lambda: sim.mo_concat(_digits(JAN), pool, [b"Stara 1 ", b"Stara 2"], ref=5, order=[0]))
        # (Its parts one after the other: sent together they could be processed in either order, and
        # "part 2 of ref 5" would then rightly complete the earlier message.)
        for index in (0, 1):
            await gw.mo(
                lambda i=index: sim.mo_concat(_digits(JAN), pool, [b"Nowa 1 ", b"Nowa 2"], ref=5, order=[i])
            )
        got = await gw.inbound()
        [jan] = await gw.rows(contacts, contacts.c.contact_id == "jan")
        assert {m["contact_pk"] for m in got} == {jan["pk"]}
        assert {m["thread_id"] for m in got} == {out["messages"][0]["thread_id"]}
        binary, national, long_one, old, new = got
        assert (binary["text"], binary["sms_encoding"]) == ("53544f5000ff", "binary")
        assert "6 octets kept as hex" in binary["note"]
        assert national["sender"] == JAN and national["text"] == "Krajowy"
        assert long_one["text"] == long_text
        assert old["text"] == "Stara 1 " and "parts 1 of 2" in old["note"] and "same reference" in old["note"]
        assert (new["text"], new["sms_parts"], new["note"]) == ("Nowa 1 Nowa 2", 2, None)
        _, contact = await gw.call("GET", "/v1/contacts/jan", _h(auth))
        assert contact["consent"]["sms"] is True
        async with gw.http.get(gw.base + "/metrics") as resp:
            metrics = await resp.text()
        assert 'gateway_sms_inbound{outcome="stored"} 5.0' in metrics, [
            m for m in metrics.splitlines() if "inbound" in m
        ]


async def test_tenant_keyword_lists_are_validated(api: Any) -> None:
    resp = await api.post("/v1/tenants", json={"name": "Serwis"}, headers=api.admin)
    t = await resp.json()
    assert t["sms_keywords"] == {
        "stop": ["STOP", "STOP ALL", "STOPALL", "UNSUBSCRIBE"],
        "start": ["START", "UNSTOP"],
    }
    for body, field in (
        ({"stop": ["STOP", "stop"]}, "sms_keywords.stop[1]"),
        ({"stop": ["START"]}, "sms_keywords.start[0]"),
        ({"start": [" "]}, "sms_keywords.start[0]"),
        ({"stop": ["x" * 41]}, "sms_keywords.stop[0]"),
    ):
        resp = await api.patch(f"/v1/tenants/{t['id']}", json={"sms_keywords": body}, headers=api.admin)
        assert resp.status == 422, (body, await resp.text())
        assert (await resp.json())["error"]["details"]["field"] == field
    resp = await api.post(
        "/v1/tenants",
        json={"name": "Inny", "sms_keywords": {"stop": ["Koniec"], "start": []}},
        headers=api.admin,
    )
    assert (await resp.json())["sms_keywords"] == {"stop": ["Koniec"], "start": []}
    resp = await api.patch(
        f"/v1/tenants/{t['id']}", json={"sms_keywords": {"start": ["Wracam"]}}, headers=api.admin
    )
    assert (await resp.json())["sms_keywords"]["start"] == ["Wracam"]
    resp = await api.patch(f"/v1/tenants/{t['id']}", json={"sms_keywords": None}, headers=api.admin)
    assert (await resp.json())["sms_keywords"]["start"] == ["START", "UNSTOP"]
