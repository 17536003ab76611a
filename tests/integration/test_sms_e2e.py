"""Outbound SMS end to end: HTTP API -> job queue -> SMPP (real TCP) -> test SMSC -> receipts -> status.

The daemon runs in-process (``Runtime``) on both databases; the SMSC is tests/smsc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import DbTarget
from harness import POOL, ApiClient, daemon_config, running
from harness import h as _h
from smsc import SmscSimulator

from gateway.config import load
from gateway.domain import sms_text
from gateway.runtime import Runtime

TOKEN = "e2e-admin-token-0123456789"


class Gateway(ApiClient):
    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession) -> None:
        super().__init__(runtime, http, TOKEN)

    async def tenant(self, name: str, **extra: Any) -> dict[str, str]:
        status, t = await self.call(
            "POST", "/v1/tenants", self.admin, json={"name": name, "sms_credits": 1000, **extra}
        )
        assert status == 201, t
        return {"Authorization": f"Bearer {t['api_key']}", "id": t["id"]}

    async def contact(self, auth: dict[str, str], cid: str, phone: str) -> None:
        status, body = await self.call(
            "PUT", f"/v1/contacts/{cid}", _h(auth), json={"name": cid, "phones": [phone]}
        )
        assert status in (200, 201), body

    async def send(self, auth: dict[str, str], **body: Any) -> dict[str, Any]:
        body.setdefault("channels", ["sms"])
        status, out = await self.call("POST", "/v1/messages", _h(auth), json=body)
        assert status == 202, out
        return dict(out["messages"][0])

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


@contextlib.asynccontextmanager
async def gateway(
    target: DbTarget, tmp_path: Path, sim: SmscSimulator, queue: dict[str, Any] | None = None, **smpp: Any
) -> AsyncIterator[Gateway]:
    path = daemon_config(
        target,
        tmp_path,
        token=TOKEN,
        smsc_port=sim.port,
        queue={"lease_seconds": 10, "retry_base_seconds": 0.2, "retry_max_seconds": 1, **(queue or {})},
        connector={"window": 10, "enquire_link_seconds": 1, "response_timeout_seconds": 1, **smpp},
    )
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={})
    async with running(runtime):
        await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield Gateway(runtime, http)


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as s:
        yield s


async def test_polish_text_goes_as_three_ucs2_parts_and_is_delivered(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    text = ("Zażółć gęślą jaźń, ąćęłńóśźż. " * 7)[:200]
    assert sms_text.preview(text).parts == 3
    async with gateway(db_target, tmp_path, sim) as gw:
        auth = await gw.tenant("Serwis")
        await gw.contact(auth, "jan", "+48500100200")
        m = await gw.send(auth, contact_id="jan", text=text)
        assert m["sms"] == {"encoding": "ucs2", "parts": 3, "sender": m["sms"]["sender"]}
        done = await gw.wait_status(auth, m["id"], {"delivered", "failed"})
        assert done["status"] == "delivered", done
        assert [p["status"] for p in done["sms_parts"]] == ["delivered"] * 3
    parts = sorted(sim.submits, key=lambda s: s.udh["seq"] if s.udh else 0)
    assert len(parts) == 3
    assert {s.data_coding for s in parts} == {8} and {s.esm_class & 0x40 for s in parts} == {0x40}
    assert len({s.udh["ref"] for s in parts}) == 1
    assert [(s.udh["total"], s.udh["seq"], s.udh["ref_bits"]) for s in parts] == [
        (3, 1, 8),
        (3, 2, 8),
        (3, 3, 8),
    ]
    assert "".join(s.payload.decode("utf-16-be") for s in parts) == text
    assert {s.dest_addr for s in parts} == {"48500100200"} and {s.dest_ton for s in parts} == {1}
    assert {s.source_addr for s in parts} <= {p[1:] for p in POOL}


async def test_gsm_text_with_euro_and_senders(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    async with gateway(db_target, tmp_path, sim) as gw:
        a = await gw.tenant("A")
        b = await gw.tenant("B")
        alnum = await gw.tenant(
            "Alnum", sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS", "allowed": ["PROMO"]}
        )
        for t in (a, b, alnum):
            await gw.contact(t, "jan", "+48500100200")
        euro = "Cena naprawy: 120€ " + "x" * 140  # 159 chars, 160 septets: one part
        m1 = await gw.send(a, contact_id="jan", text=euro)
        assert m1["sms"]["encoding"] == "gsm7" and m1["sms"]["parts"] == 1
        m2 = await gw.send(b, contact_id="jan", text="od B")
        m3 = await gw.send(a, contact_id="jan", text="znowu od A")
        m4 = await gw.send(alnum, contact_id="jan", text="Alfanumerycznie")
        m5 = await gw.send(alnum, contact_id="jan", text="Promocja", sms_sender="PROMO")
        for auth, m in ((a, m1), (b, m2), (a, m3), (alnum, m4), (alnum, m5)):
            assert (await gw.wait_status(auth, m["id"], {"delivered"}))["status"] == "delivered"
    by_text = {s.text: s for s in sim.submits}
    assert by_text[euro].data_coding == 0 and by_text[euro].payload.count(b"\x1b\x65") == 1
    assert by_text["od B"].source_addr != by_text[euro].source_addr  # two tenants, two numbers
    assert by_text["znowu od A"].source_addr == by_text[euro].source_addr  # sticky
    assert (by_text["Alfanumerycznie"].source_addr, by_text["Alfanumerycznie"].source_ton) == ("SERWIS", 5)
    assert (by_text["Promocja"].source_addr, by_text["Promocja"].source_ton) == ("PROMO", 5)


async def test_throttling_and_a_dropped_connection_lose_nothing(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    sim.throttle_every = 4
    async with gateway(db_target, tmp_path, sim) as gw:
        auth = await gw.tenant("Busy")
        numbers = [f"+4850010{n:04d}" for n in range(30)]
        for n, phone in enumerate(numbers):
            await gw.contact(auth, f"c{n}", phone)
        sent = [await gw.send(auth, contact_id=f"c{n}", text=f"wiadomosc {n}") for n in range(15)]
        await sim.drop_connections()
        sent += [await gw.send(auth, contact_id=f"c{n}", text=f"wiadomosc {n}") for n in range(15, 30)]
        final = [
            await gw.wait_status(auth, m["id"], {"delivered", "sent", "failed"}, timeout=30) for m in sent
        ]
        assert not [m for m in final if m["status"] == "failed"]
        # A part written just before the drop may be "outcome unknown" (sent, no receipt); every
        # other message reaches the SMSC and its receipt comes back.
        await asyncio.sleep(0.5)
        final = [await gw.wait_status(auth, m["id"], {"delivered", "sent"}) for m in sent]
    reached = {s.text for s in sim.submits}
    assert {f"wiadomosc {n}" for n in range(30)} <= reached | {
        m["text"] for m in final if m["sms_parts"][0]["status"] == "unknown"
    }
    accepted_texts = [s.text for s in sim.submits]
    assert len(accepted_texts) == len(set(accepted_texts))  # nothing sent twice


async def test_receipts_and_failures_move_statuses(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    async with gateway(db_target, tmp_path, sim) as gw:
        auth = await gw.tenant("Receipts")
        await gw.contact(auth, "a", "+48500100201")
        await gw.contact(auth, "b", "+48500100202")
        await gw.contact(auth, "c", "+48500100203")
        sim.receipt_stat = "UNDELIV"
        sim.receipt_err = "001"
        m = await gw.send(auth, contact_id="a", text="nie dojdzie")
        failed = await gw.wait_status(auth, m["id"], {"failed"})
        assert "UNDELIV" in failed["status_reason"]
        sim.receipt_stat, sim.receipt_err = "DELIVRD", "000"
        sim.receipt_before_resp = True  # the receipt overtakes the submit_sm_resp: parked, then applied
        m = await gw.send(auth, contact_id="b", text="szybki raport")
        assert (await gw.wait_status(auth, m["id"], {"delivered"}))["status"] == "delivered"
        sim.receipt_before_resp = False
        sim.fail_destinations["48500100203"] = 0x0B
        _, before = await gw.call("GET", f"/v1/tenants/{auth['id']}", gw.admin)
        m = await gw.send(auth, contact_id="c", text="zły numer")
        failed = await gw.wait_status(auth, m["id"], {"failed"})
        assert failed["status_reason"] == "ESME_RINVDSTADR"
        _, after = await gw.call("GET", f"/v1/tenants/{auth['id']}", gw.admin)
        assert after["sms_credits"] == before["sms_credits"]  # refunded: the SMSC never took it
        async with gw.http.get(gw.base + "/readyz") as resp:
            ready = await resp.json()
        assert ready["checks"]["smpp"]["binds"][0]["state"] == "bound"
        async with gw.http.get(gw.base + "/metrics") as resp:
            assert 'gateway_smpp_bound{connector="main"} 1.0' in await resp.text()


async def test_receipts_arriving_together_settle_each_message_once(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    """Receipts that come in a burst are recorded together: a two-part message whose two receipts
    land together is delivered, each message gets one "delivered" event, and receipts of the burst
    that overtake their submit_sm_resp are parked and then applied."""
    async with gateway(db_target, tmp_path, sim) as gw:
        auth = await gw.tenant("Burst")
        for i in range(30):
            await gw.contact(auth, f"c{i}", f"+485001003{i:02d}")
        long_text = "Odbior auta mozliwy od jutra, prosimy o potwierdzenie. " * 3  # 2 GSM parts
        sim.receipt_delay = 0.3  # the receipts of the burst arrive together

        async def send(i: int) -> dict[str, Any]:
            return await gw.send(auth, contact_id=f"c{i}", text=long_text if i % 2 else f"krotka {i}")

        sent = list(await asyncio.gather(*(send(i) for i in range(20))))
        assert sum(m["sms"]["parts"] for m in sent) == 30
        sim.receipt_before_resp = True
        sent += await asyncio.gather(*(send(i) for i in range(20, 30)))
        for m in sent:
            done = await gw.wait_status(auth, m["id"], {"delivered"})
            assert {p["status"] for p in done["sms_parts"]} == {"delivered"}
        delivered: dict[str, int] = {}
        query = "?limit=200"
        while True:
            status, page = await gw.call("GET", "/v1/events" + query, _h(auth))
            assert status == 200, page
            for e in page["events"]:
                if e["type"] == "message.status" and e["data"]["status"] == "delivered":
                    mid = e["data"]["message_id"]
                    delivered[mid] = delivered.get(mid, 0) + 1
            if not page["events"]:
                break
            query = f"?limit=200&after={page['next']}"
        assert delivered == {m["id"]: 1 for m in sent}


async def test_two_daemons_share_the_receipts_of_one_message(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    """Two daemons on one database, each with its own bind: the SMSC hands out receipts round
    robin, so the two parts of a message are reported to different daemons at the same moment.
    Each message still ends delivered with exactly one "delivered" event (the message lock), and
    concurrent receipt batches do not deadlock."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with gateway(db_target, tmp_path / "a", sim) as a, gateway(db_target, tmp_path / "b", sim) as b:
        await sim.wait_bound(2, timeout=10)
        auth = await a.tenant("Two daemons")
        for i in range(20):
            await a.contact(auth, f"c{i}", f"+485001004{i:02d}")
        sim.receipt_delay = 0.3  # the receipts of the burst arrive together
        long_text = "Samochod gotowy, prosimy o odbior w godzinach pracy warsztatu. " * 3  # 2 parts
        sent = await asyncio.gather(
            *((a if i % 2 else b).send(auth, contact_id=f"c{i}", text=long_text) for i in range(20))
        )
        assert all(m["sms"]["parts"] == 2 for m in sent)
        for m in sent:
            await a.wait_status(auth, m["id"], {"delivered"})
        delivered: Counter[str] = Counter()
        query = "?limit=200"
        while True:
            status, page = await b.call("GET", "/v1/events" + query, _h(auth))
            assert status == 200, page
            delivered.update(
                e["data"]["message_id"]
                for e in page["events"]
                if e["type"] == "message.status" and e["data"]["status"] == "delivered"
            )
            if not page["events"]:
                break
            query = f"?limit=200&after={page['next']}"
        assert delivered == Counter({m["id"]: 1 for m in sent})
        for gw in (a, b):  # both daemons took receipts
            async with gw.http.get(gw.base + "/metrics") as resp:
                metrics = await resp.text()
            matched = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith('gateway_sms_receipts{result="matched"}')
            )
            assert matched > 0


async def test_sar_connector_sends_tlvs_instead_of_a_udh(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    text = "Twój rower czeka na odbiór w serwisie przy ulicy Długiej. " * 3  # 174 UCS-2 units: 3 parts
    async with gateway(db_target, tmp_path, sim, long_messages="sar") as gw:
        auth = await gw.tenant("Sar")
        await gw.contact(auth, "jan", "+48500100200")
        m = await gw.send(auth, contact_id="jan", text=text)
        assert (await gw.wait_status(auth, m["id"], {"delivered"}))["status"] == "delivered"
    parts = sorted(sim.submits, key=lambda s: s.concat[2] if s.concat else 0)
    assert len(parts) == 3
    assert all(s.udh is None and not s.esm_class & 0x40 for s in parts)  # never SAR together with UDH
    assert [s.concat[1:] for s in parts if s.concat] == [(3, 1), (3, 2), (3, 3)]
    assert len({s.concat[0] for s in parts if s.concat}) == 1
    assert "".join(s.payload.decode("utf-16-be") for s in parts) == text


async def test_a_message_whose_first_attempt_found_no_route_goes_later_once(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator
) -> None:
    """The first attempt marks the message "sending" and finds no bound connector; the retried job
    finds it "sending" already and sends it once the bind is back."""
    # A short lease: the attempt waits lease / 2 = 1 s for a route, then the job is retried.
    queue = {"lease_seconds": 2, "retry_max_seconds": 0.5}
    async with gateway(db_target, tmp_path, sim, queue=queue) as gw:
        auth = await gw.tenant("Later")
        await gw.contact(auth, "c", "+48500100200")
        sim.bind_fail_next = 10**6
        await sim.drop_connections()
        m = await gw.send(auth, contact_id="c", text="po awarii")
        await gw.wait_status(auth, m["id"], {"sending"}, timeout=10)
        await asyncio.sleep(1.5)  # the attempt's wait for a route (1 s) ran out: retried later
        assert not sim.submits
        sim.bind_fail_next = 0
        await gw.wait_status(auth, m["id"], {"sent", "delivered"}, timeout=30)
    assert [s.text for s in sim.submits] == ["po awarii"]
