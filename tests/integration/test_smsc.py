"""Self-test of the SMPP 3.4 test SMSC (tests/smsc.py).

It is driven by a tiny raw-socket ESME written here with ``struct`` (independent of the simulator's
codec and of smpplib), then cross-checked against smpplib's own PDU codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import smpplib.smpp
from smsc import SmscSimulator, Submit

HDR = struct.Struct(">IIII")

BIND_RECEIVER = 0x01
BIND_TRANSMITTER = 0x02
SUBMIT_SM = 0x04
DELIVER_SM = 0x05
UNBIND = 0x06
BIND_TRANSCEIVER = 0x09
ENQUIRE_LINK = 0x15
RESP = 0x80000000
GENERIC_NACK = 0x80000000

RECEIPT_RE = re.compile(
    rb"^id:(?P<id>\S+) sub:001 dlvrd:001 submit date:\d{10} done date:\d{10}"
    rb" stat:DELIVRD err:000 text:(?P<text>.*)$"
)


@dataclass
class Pdu:
    command_id: int
    status: int
    seq: int
    body: bytes

    @property
    def raw(self) -> bytes:
        return HDR.pack(16 + len(self.body), self.command_id, self.status, self.seq) + self.body


def cstr(value: str) -> bytes:
    return value.encode("ascii") + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def bind_body(system_id: str = "gw", password: str = "secret") -> bytes:
    # §4.1.1: system_id, password, system_type, interface_version, addr_ton, addr_npi, address_range
    return cstr(system_id) + cstr(password) + cstr("") + bytes((0x34, 0, 0)) + cstr("")


def submit_body(
    dest: str = "48600111222",
    sm: bytes = b"hello",
    *,
    source: str = "GW",
    source_ton: int = 5,
    source_npi: int = 0,
    dest_ton: int = 1,
    dest_npi: int = 1,
    service_type: str = "",
    esm: int = 0,
    protocol_id: int = 0,
    priority: int = 0,
    schedule: str = "",
    validity: str = "",
    rd: int = 0,
    replace: int = 0,
    dc: int = 0,
    default_msg_id: int = 0,
    tlvs: bytes = b"",
) -> bytes:
    # §4.4.1 submit_sm, field by field.
    return (
        cstr(service_type)
        + struct.pack(">BB", source_ton, source_npi)
        + cstr(source)
        + struct.pack(">BB", dest_ton, dest_npi)
        + cstr(dest)
        + struct.pack(">BBB", esm, protocol_id, priority)
        + cstr(schedule)
        + cstr(validity)
        + struct.pack(">BBBBB", rd, replace, dc, default_msg_id, len(sm))
        + sm
        + tlvs
    )


def parse_sm(body: bytes) -> dict[str, Any]:
    """§4.6.1 deliver_sm body -> fields (the test's own decoder)."""
    out: dict[str, Any] = {}

    def cs(pos: int) -> tuple[str, int]:
        end = body.index(b"\0", pos)
        return body[pos:end].decode("ascii"), end + 1

    out["service_type"], p = cs(0)
    out["source_ton"], out["source_npi"] = body[p], body[p + 1]
    out["source_addr"], p = cs(p + 2)
    out["dest_ton"], out["dest_npi"] = body[p], body[p + 1]
    out["dest_addr"], p = cs(p + 2)
    out["esm_class"], out["protocol_id"], out["priority_flag"] = body[p : p + 3]
    out["schedule"], p = cs(p + 3)
    out["validity"], p = cs(p)
    (out["registered_delivery"], out["replace"], out["data_coding"], out["default_msg_id"], sm_length) = body[
        p : p + 5
    ]
    p += 5
    out["short_message"] = body[p : p + sm_length]
    p += sm_length
    tlvs: dict[int, bytes] = {}
    while p < len(body):
        tag, length = struct.unpack_from(">HH", body, p)
        tlvs[tag] = body[p + 4 : p + 4 + length]
        p += 4 + length
    assert p == len(body)
    out["tlvs"] = tlvs
    return out


class RawEsme:
    """A minimal SMPP client speaking raw PDUs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seq = 0

    @classmethod
    async def connect(cls, port: int) -> RawEsme:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, command_id: int, body: bytes = b"", *, status: int = 0, seq: int | None = None) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.writer.write(HDR.pack(16 + len(body), command_id, status, seq) + body)
        return seq

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, timeout: float = 5.0) -> Pdu:
        header = await asyncio.wait_for(self.reader.readexactly(16), timeout)
        length, command_id, status, seq = HDR.unpack(header)
        body = await asyncio.wait_for(self.reader.readexactly(length - 16), timeout)
        return Pdu(command_id, status, seq, body)

    async def expect(self, command_id: int, seq: int | None = None, timeout: float = 5.0) -> Pdu:
        pdu = await self.read(timeout)
        assert pdu.command_id == command_id, f"got 0x{pdu.command_id:08X}, expected 0x{command_id:08X}"
        if seq is not None:
            assert pdu.seq == seq
        return pdu

    async def bind(self, command_id: int = BIND_TRANSCEIVER, password: str = "secret") -> Pdu:
        seq = self.send(command_id, bind_body(password=password))
        return await self.expect(command_id | RESP, seq)

    async def submit(self, body: bytes) -> Pdu:
        seq = self.send(SUBMIT_SM, body)
        return await self.expect(SUBMIT_SM | RESP, seq)

    async def assert_silent(self, seconds: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await self.read(seconds)

    async def at_eof(self, timeout: float = 5.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as simulator:
        yield simulator
        assert simulator.protocol_errors == []


@pytest.fixture
async def esme(sim: SmscSimulator) -> AsyncIterator[RawEsme]:
    client = await RawEsme.connect(sim.port)
    resp = await client.bind()
    assert resp.status == 0
    yield client
    await client.close()


def message_id(resp: Pdu) -> str:
    assert resp.status == 0
    assert resp.body.endswith(b"\0") and resp.body.count(b"\0") == 1
    return resp.body[:-1].decode("ascii")


# ------------------------------------------------------------------------------------------------


async def test_bind_modes_and_wrong_password(sim: SmscSimulator) -> None:
    client = await RawEsme.connect(sim.port)
    bad = await client.bind(password="wrong")
    assert (bad.status, bad.body) == (0x0D, b"")  # ESME_RBINDFAIL, no body (§4.1.2)
    assert sim.bind_failures[0]["status"] == 0x0D and sim.binds == []
    # The socket stays open: the same connection may bind again.
    ok = await client.bind()
    assert ok.status == 0
    assert ok.body == b"SMSCSIM\0" + tlv(0x0210, b"\x34")  # system_id + sc_interface_version
    again = await client.bind()
    assert again.status == 0x05  # ESME_RALYBND

    tx = await RawEsme.connect(sim.port)
    rx = await RawEsme.connect(sim.port)
    assert (await tx.bind(BIND_TRANSMITTER)).status == 0
    assert (await rx.bind(BIND_RECEIVER)).status == 0
    assert [b["mode"] for b in sim.binds] == ["transceiver", "transmitter", "receiver"]
    assert all(b["system_id"] == "gw" and b["peer"][0] == "127.0.0.1" for b in sim.binds)
    assert len(await sim.wait_bound(3, timeout=1)) == 3
    # A receiver may not submit (§4.4: ESME_RINVBNDSTS).
    assert (await rx.submit(submit_body())).status == 0x04
    sim.bind_fail_next = 1
    other = await RawEsme.connect(sim.port)
    assert (await other.bind()).status == 0x0D
    for c in (client, tx, rx, other):
        await c.close()


async def test_submit_recorded_with_all_fields(sim: SmscSimulator, esme: RawEsme) -> None:
    text = "Zażółć gęślą jaźń"
    body = submit_body(
        "48600111222",
        text.encode("utf-16-be"),
        source="Acme",
        source_ton=5,
        source_npi=0,
        dest_ton=1,
        dest_npi=1,
        service_type="CMT",
        protocol_id=0x3F,
        priority=1,
        validity="000001000000000R",
        rd=0,
        replace=1,
        dc=8,
        tlvs=tlv(0x0204, b"\x00\x07"),  # user_message_reference, kept raw
    )
    resp = await esme.submit(body)
    mid = message_id(resp)
    assert re.fullmatch(r"[0-9A-F]{8}", mid)
    [sub] = await sim.wait_submits(1, timeout=1)
    assert isinstance(sub, Submit)
    assert (sub.seq, sub.system_id, sub.message_id) == (resp.seq, "gw", mid)
    assert (sub.source_addr, sub.source_ton, sub.source_npi) == ("Acme", 5, 0)
    assert (sub.dest_addr, sub.dest_ton, sub.dest_npi) == ("48600111222", 1, 1)
    assert (sub.service_type, sub.esm_class, sub.protocol_id, sub.priority_flag) == ("CMT", 0, 0x3F, 1)
    assert (sub.schedule_delivery_time, sub.validity_period) == ("", "000001000000000R")
    assert (sub.registered_delivery, sub.replace_if_present_flag, sub.data_coding) == (0, 1, 8)
    assert sub.short_message == sub.payload == text.encode("utf-16-be")
    assert sub.udh is None and sub.text == text and sub.concat is None
    assert sub.tlvs == {0x0204: b"\x00\x07"}
    assert sub.received_at > 0

    # Message ids increase; the decimal format is a switch away.
    mid2 = message_id(await esme.submit(submit_body()))
    assert int(mid2, 16) == int(mid, 16) + 1
    sim.message_id_format = "decimal"
    mid3 = message_id(await esme.submit(submit_body()))
    assert mid3 == str(int(mid, 16) + 2)
    assert [s.message_id for s in sim.submits] == [mid, mid2, mid3]


async def test_udh_and_sar_and_message_payload(sim: SmscSimulator, esme: RawEsme) -> None:
    # 8-bit reference concatenation IE (0x00) plus an application port IE (0x05), kept raw.
    udh8 = bytes((11, 0x00, 3, 0x7A, 2, 1, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0))
    await esme.submit(submit_body(sm=udh8 + b"part one", esm=0x40))
    # 16-bit reference (0x08).
    udh16 = bytes((6, 0x08, 4, 0x12, 0x34, 3, 2))
    await esme.submit(submit_body(sm=udh16 + b"part two", esm=0x43))
    # SAR TLVs with the text in message_payload (sm_length 0).
    sar = tlv(0x020C, b"\x01\x02") + tlv(0x020E, b"\x02") + tlv(0x020F, b"\x02") + tlv(0x0424, b"x" * 300)
    await esme.submit(submit_body(sm=b"", tlvs=sar))
    # UDH inside message_payload.
    await esme.submit(submit_body(sm=b"", esm=0x40, tlvs=tlv(0x0424, udh16 + b"y" * 260)))
    s8, s16, s_sar, s_payload = await sim.wait_submits(4, timeout=1)
    assert s8.udh == {
        "ref": 0x7A,
        "total": 2,
        "seq": 1,
        "ref_bits": 8,
        "other": [(0x05, b"\x0b\x84\x23\xf0")],
    }
    assert (s8.payload, s8.short_message, s8.concat) == (b"part one", udh8 + b"part one", (0x7A, 2, 1))
    assert s16.udh == {"ref": 0x1234, "total": 3, "seq": 2, "ref_bits": 16, "other": []}
    assert (s16.payload, s16.esm_class) == (b"part two", 0x43)
    assert s_sar.udh is None and s_sar.payload == b"x" * 300 and s_sar.concat == (0x0102, 2, 2)
    assert s_sar.tlvs[0x020C] == b"\x01\x02" and s_sar.short_message == b""
    assert s_payload.udh is not None and s_payload.udh["ref"] == 0x1234 and s_payload.payload == b"y" * 260

    # Malformed: UDHI set but UDHL longer than the data -> ESME_RINVESMCLASS, logged.
    bad = await esme.submit(submit_body(sm=bytes((9, 0, 3, 1)), esm=0x40))
    assert (bad.status, bad.body) == (0x43, b"")
    # short_message and message_payload together -> ESME_ROPTPARNOTALLWD.
    assert (await esme.submit(submit_body(sm=b"a", tlvs=tlv(0x0424, b"b")))).status == 0xC1
    # Truncated TLV -> ESME_RINVOPTPARSTREAM; destination over 21 octets -> ESME_RINVDSTADR.
    assert (await esme.submit(submit_body(tlvs=b"\x02\x04\x00\x05\x00"))).status == 0xC0
    assert (await esme.submit(submit_body(dest="1" * 21))).status == 0x0B
    assert len(sim.protocol_errors) == 4 and len(sim.submits) == 4
    sim.protocol_errors.clear()


async def test_rejection_knobs(sim: SmscSimulator, esme: RawEsme) -> None:
    sim.throttle_every = 3
    statuses = [(await esme.submit(submit_body(sm=b"%d" % i))).status for i in range(6)]
    assert statuses == [0, 0, 0x58, 0, 0, 0x58]
    sim.throttle_every = None

    sim.throttle_next = 1
    sim.queue_full_next = 2
    statuses = [(await esme.submit(submit_body())).status for _ in range(4)]
    assert statuses == [0x58, 0x14, 0x14, 0]
    assert (sim.throttle_next, sim.queue_full_next) == (0, 0)

    sim.fail_destinations = {"48600999999": 0x0B}
    assert (await esme.submit(submit_body("48600999999"))).status == 0x0B
    assert (await esme.submit(submit_body("48600111222"))).status == 0
    sim.fail_destinations = {}

    sim.fail_every = 2
    sim.fail_status = 0x45  # ESME_RSUBMITFAIL
    first, second = (await esme.submit(submit_body())).status, (await esme.submit(submit_body())).status
    assert sorted([first, second]) == [0, 0x45]
    # Rejected submits are not recorded as accepted.
    assert sim.accepted_count == len(sim.submits) == 7
    assert [s.status for s in sim.rejected] == [0x58, 0x58, 0x58, 0x14, 0x14, 0x0B, 0x45]
    assert all(s.message_id == "" for s in sim.rejected)


async def test_enquire_link_generic_nack_and_framing(sim: SmscSimulator, esme: RawEsme) -> None:
    seq = esme.send(ENQUIRE_LINK)
    resp = await esme.expect(ENQUIRE_LINK | RESP, seq)
    assert (resp.status, resp.body) == (0, b"")
    # Unknown command id -> generic_nack ESME_RINVCMDID with the same sequence; still serving.
    seq = esme.send(0x00000099, b"junk")
    nack = await esme.expect(GENERIC_NACK, seq)
    assert nack.status == 0x03
    assert (await esme.submit(submit_body())).status == 0
    sim.stall_enquire_link = True
    esme.send(ENQUIRE_LINK)
    await esme.assert_silent(0.3)
    assert sim.enquire_links == 2
    # command_length < 16 closes the connection.
    esme.send_raw(struct.pack(">IIII", 8, ENQUIRE_LINK, 0, 99))
    assert await esme.at_eof()
    assert sim.protocol_errors and "command_length 8" in sim.protocol_errors[0]
    sim.protocol_errors.clear()
    await sim.wait_until(lambda: sim.bound_count == 0, timeout=2)

    # ... and so does a command_length above 64 KiB.
    big = await RawEsme.connect(sim.port)
    big.send_raw(struct.pack(">IIII", 70_000, SUBMIT_SM, 0, 1))
    assert await big.at_eof()
    sim.protocol_errors.clear()
    await big.close()


async def test_receipt_with_tlvs_and_text(sim: SmscSimulator, esme: RawEsme) -> None:
    resp = await esme.submit(
        submit_body("48600111222", b"Hello receipt world, and more", source="Acme", rd=1)
    )
    mid = message_id(resp)
    dsm = await esme.expect(DELIVER_SM)
    f = parse_sm(dsm.body)
    assert f["esm_class"] == 0x04
    assert (f["source_addr"], f["source_ton"], f["source_npi"]) == ("48600111222", 1, 1)
    assert (f["dest_addr"], f["dest_ton"], f["dest_npi"]) == ("Acme", 5, 0)
    m = RECEIPT_RE.match(f["short_message"])
    assert m is not None, f["short_message"]
    assert m["id"].decode() == mid and m["text"] == b"Hello receipt world,"
    assert f["tlvs"] == {0x001E: mid.encode() + b"\0", 0x0427: b"\x02"}
    esme.send(DELIVER_SM | RESP, b"\0", seq=dsm.seq)
    assert await sim.wait_deliver_resps(1, timeout=2) == [(dsm.seq, 0)]
    assert sim.delivers[0].kind == "receipt" and sim.delivers[0].message_id == mid

    # No receipt when registered_delivery does not ask for one.
    await esme.submit(submit_body(rd=0))
    await esme.assert_silent(0.2)

    # Receipt BEFORE the submit_sm_resp, text only, failure stat.
    sim.receipt_before_resp = True
    sim.receipt_tlvs = False
    sim.receipt_stat, sim.receipt_err = "UNDELIV", "001"
    seq = esme.send(SUBMIT_SM, submit_body(rd=1))
    first = await esme.read()
    second = await esme.read()
    assert (first.command_id, second.command_id, second.seq) == (DELIVER_SM, SUBMIT_SM | RESP, seq)
    f = parse_sm(first.body)
    assert f["tlvs"] == {}
    assert f"id:{message_id(second)} sub:001 dlvrd:000 ".encode() in f["short_message"]
    assert b" stat:UNDELIV err:001 text:hello" in f["short_message"]
    esme.send(DELIVER_SM | RESP, b"\0", seq=first.seq)
    await sim.wait_deliver_resps(2, timeout=2)


async def test_receipt_redelivery_and_queueing(sim: SmscSimulator) -> None:
    tx = await RawEsme.connect(sim.port)
    assert (await tx.bind(BIND_TRANSMITTER)).status == 0
    sim.redeliver_after = 0.2
    mid = message_id(await tx.submit(submit_body(rd=1)))
    # No receiver yet: the SMSC keeps the receipt and delivers it when one binds.
    await tx.assert_silent(0.1)
    rx = await RawEsme.connect(sim.port)
    assert (await rx.bind(BIND_RECEIVER)).status == 0
    d1 = await rx.expect(DELIVER_SM)
    assert parse_sm(d1.body)["tlvs"][0x001E] == mid.encode() + b"\0"
    rx.send(DELIVER_SM | RESP, b"\0", status=0x08, seq=d1.seq)  # ESME_RSYSERR: try again later
    d2 = await rx.expect(DELIVER_SM, timeout=2)
    assert d2.seq != d1.seq and d2.body == d1.body
    # Not answered at all: resent again after redeliver_after.
    d3 = await rx.expect(DELIVER_SM, timeout=2)
    assert d3.body == d1.body
    rx.send(DELIVER_SM | RESP, b"\0", seq=d3.seq)
    await sim.wait_deliver_resps(2, timeout=2)
    await rx.assert_silent(0.4)
    assert sim.deliver_resps == [(d1.seq, 0x08), (d3.seq, 0)]
    assert [d.attempt for d in sim.delivers] == [1, 2, 3] and sim.redeliveries == 2
    await tx.close()
    await rx.close()


async def test_response_delay_and_window(sim: SmscSimulator, esme: RawEsme) -> None:
    sim.response_delay = 0.2
    sim.response_jitter = 0.1
    seqs = [esme.send(SUBMIT_SM, submit_body(sm=b"%d" % i)) for i in range(8)]
    resps = [await esme.read() for _ in seqs]
    assert sorted(r.seq for r in resps) == seqs and all(r.status == 0 for r in resps)
    assert sim.max_window_seen == 8
    assert sim.sessions[0]["max_window"] == 8 and sim.sessions[0]["outstanding"] == 0


async def test_stalled_submits(sim: SmscSimulator, esme: RawEsme) -> None:
    sim.stall_submits = True
    seq = esme.send(SUBMIT_SM, submit_body())
    await esme.assert_silent(0.3)
    assert [s.seq for s in sim.stalled] == [seq] and sim.submits == []
    sim.stall_submits = False
    assert await sim.release_stalled() == 1
    resp = await esme.expect(SUBMIT_SM | RESP, seq)
    assert resp.status == 0 and sim.stalled == [] and len(sim.submits) == 1


async def test_mo_messages(sim: SmscSimulator, esme: RawEsme) -> None:
    seq = await sim.send_mo("48600111222", "1234", b"raw", data_coding=3, tlvs={0x0204: b"\x00\x01"})
    pdu = await esme.expect(DELIVER_SM, seq)
    f = parse_sm(pdu.body)
    assert (f["source_addr"], f["dest_addr"], f["short_message"], f["data_coding"]) == (
        "48600111222",
        "1234",
        b"raw",
        3,
    )
    assert f["esm_class"] == 0 and f["tlvs"] == {0x0204: b"\x00\x01"}
    esme.send(DELIVER_SM | RESP, b"\0", seq=seq)

    seq = await sim.mo_text("48600111222", "1234", "Hi @ there {ok} $5_")
    f = parse_sm((await esme.expect(DELIVER_SM, seq)).body)
    assert f["data_coding"] == 0
    assert f["short_message"] == b"Hi \x00 there \x1b\x28ok\x1b\x29 \x025\x11"
    seq = await sim.mo_text("48600111222", "1234", "Cześć")
    f = parse_sm((await esme.expect(DELIVER_SM, seq)).body)
    assert (f["data_coding"], f["short_message"]) == (8, "Cześć".encode("utf-16-be"))
    with pytest.raises(ValueError):
        await sim.mo_text("48600111222", "1234", "back`tick")

    seqs = await sim.mo_concat("48600111222", "1234", [b"AAA", b"BBB"], ref=0x1234, order=[1, 0], ref_bits=16)
    p1, p2 = [parse_sm((await esme.expect(DELIVER_SM, s)).body) for s in seqs]
    assert p1["esm_class"] == p2["esm_class"] == 0x40
    assert p1["short_message"] == bytes((6, 8, 4, 0x12, 0x34, 2, 2)) + b"BBB"
    assert p2["short_message"] == bytes((6, 8, 4, 0x12, 0x34, 2, 1)) + b"AAA"
    seqs = await sim.mo_concat("48600111222", "1234", [b"x", b"y", b"z"], ref=7)
    parts = [parse_sm((await esme.expect(DELIVER_SM, s)).body)["short_message"] for s in seqs]
    assert parts == [bytes((5, 0, 3, 7, 3, i)) + c for i, c in ((1, b"x"), (2, b"y"), (3, b"z"))]
    for s in seqs:
        esme.send(DELIVER_SM | RESP, b"\0", seq=s)
    await sim.wait_deliver_resps(4, timeout=2)

    with pytest.raises(RuntimeError):
        await sim.send_mo("1", "2", b"x", system_id="nobody")


async def test_drop_connections_and_unbind(sim: SmscSimulator, esme: RawEsme) -> None:
    await sim.drop_connections()
    assert await esme.at_eof()
    assert sim.bound_count == 0
    with pytest.raises(TimeoutError):
        await sim.wait_bound(1, timeout=0.1)

    client = await RawEsme.connect(sim.port)
    assert (await client.bind()).status == 0
    await sim.wait_bound(1, timeout=1)
    assert len(sim.binds) == 2

    # The SMSC unbinds: the client answers unbind_resp and the SMSC closes.
    unbinding = asyncio.ensure_future(sim.unbind_all(timeout=2))
    unbind = await client.expect(UNBIND)
    client.send(UNBIND | RESP, seq=unbind.seq)
    await unbinding
    assert await client.at_eof()
    await client.close()

    # The client unbinds: unbind_resp, then the SMSC closes.
    client = await RawEsme.connect(sim.port)
    assert (await client.bind()).status == 0
    seq = client.send(UNBIND)
    assert (await client.expect(UNBIND | RESP, seq)).status == 0
    assert await client.at_eof()
    await client.close()


async def test_bulk_pipelined(sim: SmscSimulator, esme: RawEsme) -> None:
    """Many submits in flight with receipts: nothing lost, the window is seen."""
    n = 3000
    window = 50
    acked = receipts = 0
    sent = 0
    while sent < min(window, n):
        sent += 1
        esme.send(SUBMIT_SM, submit_body(sm=b"bulk %d" % sent, rd=1))
    while acked < n or receipts < n:
        pdu = await esme.read()
        if pdu.command_id == SUBMIT_SM | RESP:
            assert pdu.status == 0
            acked += 1
            if sent < n:
                sent += 1
                esme.send(SUBMIT_SM, submit_body(sm=b"bulk %d" % sent, rd=1))
        else:
            assert pdu.command_id == DELIVER_SM
            receipts += 1
            esme.send(DELIVER_SM | RESP, b"\0", seq=pdu.seq)
    await sim.wait_deliver_resps(n, timeout=5)
    assert sim.accepted_count == n and 1 < sim.max_window_seen <= window


# --- cross-check with smpplib's codec ------------------------------------------------------------


class _SeqClient:
    """What smpplib's PDU classes need from a client: a sequence counter."""

    sequence = 100

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


async def test_smpplib_submit_sm_parsed_identically(sim: SmscSimulator, esme: RawEsme) -> None:
    udh = bytes((5, 0x00, 3, 0x42, 2, 1))
    text = "Ünïcode part".encode("utf-16-be")
    pdu = smpplib.smpp.make_pdu(
        "submit_sm",
        client=_SeqClient(),
        service_type="CMT",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="Acme",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr="48600111222",
        esm_class=0x40,
        protocol_id=0,
        priority_flag=1,
        registered_delivery=1,
        replace_if_present_flag=0,
        data_coding=8,
        short_message=udh + text,
        user_message_reference=7,
    )
    raw = pdu.generate()
    esme.send_raw(raw)
    resp = await esme.expect(SUBMIT_SM | RESP, pdu.sequence)
    mid = message_id(resp)
    await esme.expect(DELIVER_SM)  # the receipt; left unanswered
    # The same submit_sm from the test's own encoder.
    own = submit_body(
        "48600111222",
        udh + text,
        source="Acme",
        service_type="CMT",
        esm=0x40,
        priority=1,
        rd=1,
        dc=8,
        tlvs=tlv(0x0204, b"\x00\x07"),
    )
    assert raw[16:] == own
    seq = esme.send(SUBMIT_SM, own)
    await esme.expect(SUBMIT_SM | RESP, seq)
    await esme.expect(DELIVER_SM)
    a, b = await sim.wait_submits(2, timeout=1)
    assert a.message_id == mid and a.seq == pdu.sequence
    assert a.udh == {"ref": 0x42, "total": 2, "seq": 1, "ref_bits": 8, "other": []}
    assert a.payload == text and a.tlvs == {0x0204: b"\x00\x07"}

    def comparable(s: Submit) -> dict[str, Any]:
        return {k: getattr(s, k) for k in Submit.__dataclass_fields__} | {
            "seq": 0,
            "message_id": "",
            "received_at": 0,
            "received_wall": 0,
        }

    assert comparable(a) == comparable(b)

    # smpplib's SAR TLVs decode as the SMPP 3.4 sizes say (§5.3.2.22-24).
    sar = smpplib.smpp.make_pdu(
        "submit_sm",
        client=_SeqClient(),
        source_addr="Acme",
        destination_addr="48600111222",
        short_message=b"seg",
        sar_msg_ref_num=0x0A0B,
        sar_total_segments=3,
        sar_segment_seqnum=2,
    )
    esme.send_raw(sar.generate())
    assert (await esme.expect(SUBMIT_SM | RESP, sar.sequence)).status == 0
    [*_, c] = await sim.wait_submits(3, timeout=1)
    assert c.concat == (0x0A0B, 3, 2) and c.payload == b"seg" and c.udh is None


async def test_smpplib_parses_simulator_pdus(sim: SmscSimulator) -> None:
    client = await RawEsme.connect(sim.port)
    bind_resp = await client.bind()
    parsed_bind = smpplib.smpp.parse_pdu(bind_resp.raw, client=_SeqClient(), allow_unknown_opt_params=True)
    assert parsed_bind.command == "bind_transceiver_resp" and parsed_bind.status == 0
    assert parsed_bind.system_id == b"SMSCSIM" and parsed_bind.sc_interface_version == 0x34

    mid = message_id(await client.submit(submit_body("48600111222", b"Receipt me please", rd=1)))
    receipt = await client.expect(DELIVER_SM)
    p = smpplib.smpp.parse_pdu(receipt.raw, client=_SeqClient(), allow_unknown_opt_params=True)
    assert p.command == "deliver_sm" and p.sequence == receipt.seq
    assert (p.source_addr, p.source_addr_ton, p.source_addr_npi) == (b"48600111222", 1, 1)
    assert (p.destination_addr, p.dest_addr_ton, p.dest_addr_npi) == (b"GW", 5, 0)
    assert (p.esm_class, p.data_coding, p.sm_length) == (0x04, 0, len(p.short_message))
    assert p.receipted_message_id == mid.encode() and p.message_state == 2
    m = RECEIPT_RE.match(p.short_message)
    assert m is not None and m["id"] == mid.encode() and m["text"] == b"Receipt me please"

    # A long MO goes in message_payload (§5.3.2.32); smpplib finds it there.
    long_text = "x" * 300
    seq = await sim.mo_text("48600111222", "1234", long_text)
    mo = await client.expect(DELIVER_SM, seq)
    p = smpplib.smpp.parse_pdu(mo.raw, client=_SeqClient(), allow_unknown_opt_params=True)
    assert p.sm_length == 0 and not p.short_message and p.message_payload == long_text.encode()
    await client.close()
