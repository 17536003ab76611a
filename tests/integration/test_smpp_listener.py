"""The SMPP listener (issue 9) over real SMPP/TCP: a test carrier (tests/smpp_carrier.py) outbinds or
binds to us, pushes MO and receipts, and misbehaves; each time another carrier session keeps working.

The first tests drive :class:`SmppListener` alone (``on_deliver`` records); the last ones run the whole
daemon (``Runtime``) on SQLite and PostgreSQL with the test SMSC for our outbound side, so an MO that
arrives through the listener threads and a receipt moves a message's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from conftest import DbTarget, FakeClock
from harness import ApiClient, daemon_config, eventually, running, self_signed_cert
from harness import h as _h
from smpp_carrier import Carrier, close_all, cstr
from smsc import (
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    ENQUIRE_LINK,
    GENERIC_NACK,
    UNBIND,
    SmscSimulator,
    decode_sm,
    encode_pdu,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import SmppCarrierConfig, SmppConnectorConfig, SmppListenerConfig, load
from gateway.domain.sms_text import Encoding, encode_parts
from gateway.runtime import Runtime
from gateway.smpp.listener import SmppListener
from gateway.smpp.types import DeliverSm
from gateway.storage.tables import messages
from gateway.tls import server_context

ESME_ROK, ESME_RINVCMDLEN, ESME_RINVCMDID, ESME_RBINDFAIL, ESME_RX_T_APPN = 0x00, 0x02, 0x03, 0x0D, 0x64
SUBMIT_SM = 0x04

CARRIERS = (
    SmppCarrierConfig(system_id="car1", password="pw1", max_connections=1),
    SmppCarrierConfig(system_id="car2", password="pw2"),
    SmppCarrierConfig(system_id="obc", password="obpw", connector="back", outbind=True),
    SmppCarrierConfig(
        system_id="obt", password="obpw", connector="back", outbind=True, outbind_bind="transceiver"
    ),
    SmppCarrierConfig(system_id="subm", password="pw", accept_submit=True),
)
BACK = SmppConnectorConfig(name="back", host="127.0.0.1", port=1, system_id="gw", password="secret")


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, DeliverSm]] = []
        self.fail = False

    async def __call__(self, name: str, pdu: DeliverSm) -> None:
        if self.fail:
            raise RuntimeError("database down")
        self.messages.append((name, pdu))


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[SmppListener, Recorder]]:
    recorder = Recorder()
    config = SmppListenerConfig(
        name="edge", host="127.0.0.1", port=0, carriers=CARRIERS, bind_timeout_seconds=0.5, **overrides
    )
    listener = SmppListener(config, on_deliver=recorder, connectors={"back": BACK}, unbind_timeout_seconds=2)
    await listener.start()
    try:
        yield listener, recorder
    finally:
        await close_all()
        await listener.close(5)


async def bound(
    port: int, system_id: str = "car2", password: str = "pw2", mode: str = "transmitter"
) -> Carrier:
    carrier = await Carrier.connect(port)
    assert await carrier.bind(mode, system_id, password) == ESME_ROK
    return carrier


async def still_serving(witness: Carrier, recorder: Recorder) -> None:
    """The witness session delivers an MO (answered ROK) and a new carrier can bind."""
    before = len(recorder.messages)
    assert await witness.deliver("48600100200", "48500000001", b"still here") == ESME_ROK
    assert len(recorder.messages) == before + 1


async def test_carrier_bind_delivers_and_misbehaving_peers_do_not_disturb_it() -> None:
    async with serving() as (listener, recorder):
        port = listener.port
        assert port is not None
        witness = await bound(port)
        await still_serving(witness, recorder)
        name, pdu = recorder.messages[0]
        assert (name, pdu.source_addr, pdu.short_message) == ("edge.car2", "48600100200", b"still here")

        # Wrong password: bind_transmitter_resp ESME_RBINDFAIL, connection closed, counted.
        wrong = await Carrier.connect(port)
        assert await wrong.bind("transmitter", "car1", "nope") == ESME_RBINDFAIL
        await wrong.wait_closed()
        unknown = await Carrier.connect(port)
        assert await unknown.bind("transceiver", "nobody", "pw1") == ESME_RBINDFAIL
        await unknown.wait_closed()
        await still_serving(witness, recorder)

        # A 100 MB command_length: generic_nack ESME_RINVCMDLEN and close; the body is never read.
        huge = await Carrier.connect(port)
        huge.write(struct.pack(">IIII", 100 * 1024 * 1024, 0x00000002, 0, 7))
        await huge.wait_closed()
        assert [(r.command_id, r.status, r.seq) for r in huge.responses()] == [
            (GENERIC_NACK, ESME_RINVCMDLEN, 7)
        ]

        # Random-looking bytes: at most a generic_nack, then closed.
        noise = await Carrier.connect(port)
        noise.write(bytes.fromhex("deadbeef") + bytes(range(256)) * 4)
        await noise.wait_closed()
        assert all(r.command_id == GENERIC_NACK for r in noise.responses())

        # Half a PDU, then silence: closed at the bind timeout.
        half = await Carrier.connect(port)
        half.write(encode_pdu(0x00000002, 0, 1, cstr("car2") + cstr("pw2"))[:20])
        await half.wait_closed()

        # An unknown command before binding: generic_nack ESME_RINVCMDID, and the bind still works.
        early = await Carrier.connect(port)
        nack = await early.request(0x00000099)
        assert (nack.command_id, nack.status) == (GENERIC_NACK, ESME_RINVCMDID)
        assert await early.bind("transmitter", "car1", "pw1") == ESME_ROK
        # A submit_sm from a carrier: we are not its SMSC.
        assert await early.deliver("48600100200", "48500000001", b"x", command_id=SUBMIT_SM) == ESME_RINVCMDID
        # A data_sm is an inbound message like a deliver_sm.
        assert await early.data_sm("48600100200", "48500000001", b"data") == ESME_ROK
        assert recorder.messages[-1][1].command == "data_sm"
        # car1 allows one connection.
        second = await Carrier.connect(port)
        assert await second.bind("transmitter", "car1", "pw1") == ESME_RBINDFAIL
        await second.wait_closed()

        # From an address outside every carrier's networks: closed before anything is read.
        with contextlib.suppress(OSError):
            outsider = await Carrier.connect(port, local_host="127.0.0.2")
            outsider.write(
                encode_pdu(0x00000002, 0, 1, cstr("car2") + cstr("pw2") + cstr("") + b"\x34\0\0\0")
            )
            await outsider.wait_closed()
            assert outsider.responses() == []
            assert listener.counters["rejected_network"] == 1

        await still_serving(witness, recorder)
        snap = listener.snapshot()
        car1 = next(c for c in snap["carriers"] if c["system_id"] == "car1")
        car2 = next(c for c in snap["carriers"] if c["system_id"] == "car2")
        assert car1["counters"] == {"bind_failed": 1, "bind": 1, "over_limit": 1}
        assert car2["bound"] == 1 and car2["sessions"][0]["state"] == "bound"
        for key in ("bad_length", "bind_timeout"):
            assert snap["counters"][key] >= 1, key
        # Unbind from the carrier: answered and closed.
        assert await early.unbind() == ESME_ROK
        await early.wait_closed()
        await witness.close()
        await eventually(_no_sessions(listener), "sessions gone")


def _no_sessions(listener: SmppListener) -> Any:
    async def check() -> bool:
        return all(not c["sessions"] for c in listener.snapshot()["carriers"])

    return check


async def test_malformed_pdus_after_bind_failures_and_the_window() -> None:
    async with serving(window=1) as (listener, recorder):
        assert listener.port is not None
        carrier = await bound(listener.port)
        # A deliver_sm whose source_addr has no NUL: generic_nack, the session lives on.
        resp = await carrier.request(0x00000005, b"\0\x01\x0148600")
        assert resp.command_id == GENERIC_NACK
        # The pipeline fails: ESME_RX_T_APPN, so the carrier sends it again later.
        recorder.fail = True
        assert await carrier.deliver("48600100200", "48500000001", b"retry me") == ESME_RX_T_APPN
        recorder.fail = False
        assert await carrier.deliver("48600100200", "48500000001", b"retry me") == ESME_ROK
        # The listener's enquire_link is answered by the carrier; ours is answered by the listener.
        assert (await carrier.request(ENQUIRE_LINK)).status == ESME_ROK
        # A second bind on a bound session: ESME_RALYBND.
        assert await carrier.bind("transmitter", "car2", "pw2") == 0x05
        await carrier.close()


async def test_submit_sm_accepted_when_configured() -> None:
    async with serving() as (listener, recorder):
        assert listener.port is not None
        carrier = await bound(listener.port, "subm", "pw")
        resp = await carrier.request(SUBMIT_SM, _sm_body("48600100200", "48500000001", b"as submit"))
        assert resp.status == ESME_ROK and resp.body.endswith(b"\0") and len(resp.body) > 1
        [(name, pdu)] = recorder.messages
        assert (name, pdu.command, pdu.short_message) == ("edge.subm", "submit_sm", b"as submit")
        await carrier.close()


def _sm_body(source: str, destination: str, text: bytes) -> bytes:
    from smsc import encode_sm

    return encode_sm(source_addr=source, dest_addr=destination, short_message=text)


async def test_outbind_binds_back_with_the_connector_and_unbinds_at_shutdown() -> None:
    async with serving() as (listener, recorder):
        assert listener.port is not None
        # Wrong password in the outbind: closed, no bind back, counted.
        bad = await Carrier.connect(listener.port)
        bad.write(encode_pdu(0x0B, 0, 1, cstr("obc") + cstr("wrong")))
        await bad.wait_closed()
        assert bad.requests == []
        # A carrier that may not outbind.
        nope = await Carrier.connect(listener.port)
        nope.write(encode_pdu(0x0B, 0, 1, cstr("car2") + cstr("pw2")))
        await nope.wait_closed()

        carrier = await Carrier.connect(listener.port)
        bind = await carrier.outbind("obc", "obpw")
        assert bind.command_id == BIND_RECEIVER
        assert bind.body.startswith(cstr("gw") + cstr("secret"))  # the connector's account
        assert await carrier.deliver("48600100200", "48500000001", b"after outbind") == ESME_ROK
        [(name, pdu)] = recorder.messages
        assert (name, pdu.short_message) == ("back", b"after outbind")
        snap = listener.snapshot()
        obc = next(c for c in snap["carriers"] if c["system_id"] == "obc")
        assert obc["sessions"][0]["kind"] == "outbind" and obc["sessions"][0]["mode"] == "receiver"
        assert snap["counters"]["outbind_failed"] == 2
        transceiver = await Carrier.connect(listener.port)
        assert (await transceiver.outbind("obt", "obpw")).command_id == BIND_TRANSCEIVER
        await listener.close(5)
        # Shutdown: each session sent unbind (answered by the carrier), then closed.
        await carrier.wait_closed()
        await transceiver.wait_closed()
        assert carrier.requests[-1].command_id == UNBIND
        assert transceiver.requests[-1].command_id == UNBIND


async def test_tls_listener(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_cert(tmp_path)
    config = SmppListenerConfig(name="tls", host="127.0.0.1", port=0, carriers=CARRIERS)
    recorder = Recorder()
    listener = SmppListener(
        config, on_deliver=recorder, ssl_context=server_context(str(cert_file), str(key_file))
    )
    await listener.start()
    try:
        client = ssl.create_default_context(cafile=str(cert_file))
        assert listener.port is not None
        carrier = await Carrier.connect(listener.port, host="127.0.0.1", tls=_for_localhost(client))
        assert await carrier.bind("transceiver", "car2", "pw2") == ESME_ROK
        assert await carrier.deliver("48600100200", "48500000001", b"over tls") == ESME_ROK
        assert recorder.messages[0][1].short_message == b"over tls"
        await carrier.close()
    finally:
        await close_all()
        await listener.close(5)


def _for_localhost(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False  # we connect to 127.0.0.1; the certificate is still verified
    return context


# --------------------------------------------------------------------------- through the daemon

TOKEN = "listener-admin-token-0123456789"
JAN = "+48500100200"


class Gateway(ApiClient):
    async def tenant(self) -> dict[str, str]:
        status, t = await self.call(
            "POST", "/v1/tenants", self.admin, json={"name": "Serwis", "sms_credits": 100}
        )
        assert status == 201, t
        auth = {"Authorization": f"Bearer {t['api_key']}"}
        status, out = await self.call("PUT", "/v1/contacts/jan", auth, json={"name": "Jan", "phones": [JAN]})
        assert status in (200, 201), out
        return auth

    async def send(self, auth: dict[str, str], text: str) -> dict[str, Any]:
        body = {"contact_id": "jan", "channels": ["sms"], "text": text}
        status, out = await self.call("POST", "/v1/messages", _h(auth), json=body)
        assert status == 202, out
        return dict(out["messages"][0])

    async def inbound(self, thread_id: str) -> list[dict[str, Any]]:
        """Inbound messages of the thread, oldest first (read from the database: committed before
        the deliver_sm_resp)."""

        async def q(conn: AsyncConnection) -> list[dict[str, Any]]:
            stmt = sa.select(messages).where(
                messages.c.direction == "inbound", messages.c.thread_id == thread_id
            )
            return [dict(r) for r in (await conn.execute(stmt.order_by(messages.c.created_at))).mappings()]

        assert self.runtime.db is not None
        return await self.runtime.db.read(q)


@contextlib.asynccontextmanager
async def gateway(
    target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock, carrier: str = ""
) -> AsyncIterator[Gateway]:
    """The daemon with connector "main" (the test SMSC) and listener "edge" for "carrier1";
    ``carrier``: more lines for that carrier's table."""
    listener = f"""
[[smpp.listeners]]
name = "edge"
port = 0
[[smpp.listeners.carriers]]
system_id = "carrier1"
password = "cpw"
connector = "main"
outbind = true
{carrier}
"""
    path = daemon_config(target, tmp_path, token=TOKEN, smsc_port=sim.port, extra=listener)
    runtime = Runtime(config=load(path, {}), config_path=str(path), environ={}, clock=clock)
    async with running(runtime):
        await sim.wait_bound(1, timeout=10)
        async with aiohttp.ClientSession() as http:
            yield Gateway(runtime, http, TOKEN)


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as s:
        s.receipts = False
        yield s


async def test_outbind_mo_threads_and_carrier_bind_pushes_concat_and_receipt(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    async with gateway(db_target, tmp_path, sim, clock) as gw:
        port = gw.runtime.smpp_listeners[0].port
        assert port is not None
        auth = await gw.tenant()
        out = await gw.send(auth, "Rower gotowy do odbioru")
        pool_number = out["sms"]["sender"].lstrip("+")
        [submit] = await sim.wait_submits(1)

        # The carrier outbinds; we bind back as a receiver with the "main" account; an MO threads.
        outbound = await Carrier.connect(port)
        assert (await outbound.outbind("carrier1", "cpw")).body.startswith(cstr("gw") + cstr("secret"))
        assert await outbound.deliver(JAN.lstrip("+"), pool_number, b"Jutro o 10") == ESME_ROK
        [reply] = await gw.inbound(out["thread_id"])
        assert (reply["text"], reply["sender"]) == ("Jutro o 10", JAN)

        # The same carrier binds as a transmitter and pushes a 3-part MO, last part first.
        text = "Dzien dobry, rower odbiore w srode po 17:00, prosze tez sprawdzic hamulce. Dziekuje! " * 4
        _, payloads = encode_parts(text, Encoding.GSM7)
        assert len(payloads) == 3
        pusher = await Carrier.connect(port)
        assert await pusher.bind("transmitter", "carrier1", "cpw") == ESME_ROK
        assert await pusher.mo_concat(JAN.lstrip("+"), pool_number, payloads, 0x42, [2, 0, 1]) == [0, 0, 0]
        replies = await gw.inbound(out["thread_id"])
        assert sorted(m["text"] for m in replies) == sorted(["Jutro o 10", text])  # one clock tick

        # A receipt for our message (its id from the SMSC's submit_sm_resp) moves its status.
        assert await pusher.receipt(pool_number, JAN.lstrip("+"), submit.message_id) == ESME_ROK

        async def delivered() -> bool:
            _, m = await gw.call("GET", f"/v1/messages/{out['id']}", _h(auth))
            return bool(m["status"] == "delivered")

        await eventually(delivered, "delivered status")

        # /readyz and /metrics list the listener sessions per carrier.
        status, ready = await gw.call("GET", "/readyz", {})
        assert status == 200, ready
        [edge] = ready["checks"]["smpp_listeners"]["listeners"]
        [carrier] = edge["carriers"]
        assert carrier["system_id"] == "carrier1" and carrier["bound"] == 2
        assert sorted(s["kind"] for s in carrier["sessions"]) == ["bind", "outbind"]
        async with gw.http.get(gw.base + "/metrics") as resp:
            metrics = await resp.text()
        assert 'gateway_smpp_listener_sessions{carrier="carrier1",listener="edge"} 2.0' in metrics
    # Shutdown: both sessions were unbound by us before the daemon stopped.
    await asyncio.wait_for(asyncio.gather(outbound.wait_closed(), pusher.wait_closed()), 10)
    assert outbound.requests[-1].command_id == UNBIND and pusher.requests[-1].command_id == UNBIND
    await close_all()


async def test_an_outbind_transceiver_is_a_route_for_our_submits_until_it_unbinds(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, clock: FakeClock
) -> None:
    """``outbind_bind = "transceiver"``: the session we bind back joins the connector pool under the
    connector's name ("main"), so a message sent through the API can go out as a submit_sm over it
    and the carrier's receipt for that id matches. Once the carrier unbinds, the pool forgets it:
    every later message goes through the remaining connector (the test SMSC)."""
    async with gateway(db_target, tmp_path, sim, clock, 'outbind_bind = "transceiver"') as gw:
        port = gw.runtime.smpp_listeners[0].port
        pool = gw.runtime.smpp_pool
        assert port is not None and pool is not None
        auth = await gw.tenant()
        carrier = await Carrier.connect(port)
        bind = await carrier.outbind("carrier1", "cpw")
        assert bind.command_id == BIND_TRANSCEIVER and bind.body.startswith(cstr("gw") + cstr("secret"))

        async def two_routes() -> bool:
            return len(pool.healthy()) == 2

        await eventually(two_routes, "the outbind session bound in the pool")
        assert sorted(s.name for s in pool.healthy()) == ["main", "main"]

        # Weighted round-robin over both routes: within a few messages one goes to the carrier.
        sent: list[dict[str, Any]] = []
        for n in range(4):
            sent.append(await gw.send(auth, f"Rower gotowy {n}"))
            await _submitted(sim, carrier, len(sent))
            if carrier.submits:
                break
        [raw] = carrier.submits
        submit = decode_sm(raw.body)
        assert (submit.dest_addr, submit.text) == (JAN.lstrip("+"), f"Rower gotowy {len(sent) - 1}")
        ours = sent[-1]
        carrier_id = f"C{raw.seq:06d}"  # what the carrier answered (tests/smpp_carrier.py)

        async def sent_via_carrier() -> bool:
            _, m = await gw.call("GET", f"/v1/messages/{ours['id']}", _h(auth))
            parts = m.get("sms_parts") or []
            return [(p["connector"], p["smsc_message_id"]) for p in parts] == [("main", carrier_id)]

        await eventually(sent_via_carrier, "the part recorded with the carrier's message id")
        # The carrier's receipt over the same session matches (its connector's name, "main").
        pool_number = ours["sms"]["sender"].lstrip("+")
        assert await carrier.receipt(pool_number, JAN.lstrip("+"), carrier_id) == ESME_ROK

        async def delivered() -> bool:
            _, m = await gw.call("GET", f"/v1/messages/{ours['id']}", _h(auth))
            return bool(m["status"] == "delivered")

        await eventually(delivered, "delivered status")

        # The carrier unbinds: answered, closed, and the pool no longer routes to it.
        assert await carrier.unbind() == ESME_ROK
        await carrier.wait_closed()

        async def one_route() -> bool:
            return len(pool.sessions) == 1 and len(pool.healthy()) == 1

        await eventually(one_route, "the outbind session gone from the pool")
        assert pool.healthy() == [pool.session("main")] and pool.healthy()[0].config.port == sim.port
        before = len(sim.submits)
        for n in range(3):
            await gw.send(auth, f"Po rozlaczeniu {n}")
        later = await sim.wait_submits(before + 3)
        assert sorted(s.text for s in later[before:]) == [f"Po rozlaczeniu {n}" for n in range(3)]
        assert len(carrier.submits) == 1
    await close_all()


async def _submitted(sim: SmscSimulator, carrier: Carrier, n: int) -> None:
    """Until ``n`` submit_sm in all reached the test SMSC and the carrier."""

    async def check() -> bool:
        return sim.accepted_count + len(carrier.submits) >= n

    await eventually(check, f"{n} submit_sm")
