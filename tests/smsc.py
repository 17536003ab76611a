"""A test SMSC: a small SMPP 3.4 server for integration tests and benchmarks.

    from smsc import SmscSimulator

    async with SmscSimulator(system_id="gw", password="secret") as sim:
        ...  # point the gateway at 127.0.0.1:sim.port
        submits = await sim.wait_submits(3)

The PDU codec below is deliberately our own (``struct`` over the SMPP 3.4 wire format) and does not
use smpplib: the gateway's client is built on smpplib, and a codec written independently from the
specification is what catches wire-format mistakes on either side. Section numbers refer to the
"Short Message Peer to Peer Protocol Specification v3.4, Issue 1.2, 12-Oct-1999".

What it does:

- bind_transmitter / bind_receiver / bind_transceiver (§4.1), enquire_link (§4.11), unbind (§4.2),
  generic_nack (§4.3) for command ids it does not serve;
- submit_sm (§4.4.1): every mandatory field and the TLVs (§5.3.2) are decoded, the UDH (3GPP TS
  23.040 §9.2.3.24) too when esm_class has UDHI set (§5.2.12); each one is answered with a
  submit_sm_resp (§4.4.2) or, under the knobs below, with an error status;
- delivery receipts (deliver_sm with esm_class 0x04, §4.6.1, text of Appendix B) and MO messages
  (``send_mo``/``mo_text``/``mo_concat``) to a receiver/transceiver session of the same system_id;
  when none is bound the SMSC keeps them and delivers them on the next such bind.

Behaviour knobs are plain attributes and may be changed while the server runs (see ``__init__``).
Decisions where the specification leaves room:

- A body that does not decode (missing NUL, field over its maximum length, truncated TLV, sm_length
  past the end, UDHI set without a valid UDH) is answered with the command's own response carrying
  the most specific status of Table 5-2 and is logged in ``protocol_errors`` (tests can assert that
  list is empty). Unknown command ids get generic_nack ESME_RINVCMDID; a command_length below 16 or
  above 64 KiB closes the connection (the stream can no longer be framed).
- Error responses carry no body (§4.1.2, §4.4.2: "not returned if the command_status field contains
  a non-zero value").
- Rejection precedence for submit_sm: stall_submits, throttle_next, throttle_every, queue_full_next,
  fail_destinations, fail_every. The "every Nth" knobs count every submit_sm received while bound
  (``submit_count``).
- ``max_window_seen`` counts submit_sm received and not yet answered on one connection. Responses to
  the PDUs of one read are written together, so without ``response_delay`` it is a lower bound of
  the client's window; with a delay it is exact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "Deliver",
    "PduError",
    "SmscSimulator",
    "Submit",
    "decode_sm",
    "decode_tlvs",
    "decode_udh",
    "encode_pdu",
    "encode_sm",
    "encode_tlvs",
    "gsm_decode",
    "gsm_encode_ascii",
]

# --- §5.1.2.1 command_id values ----------------------------------------------------------------
GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
QUERY_SM: Final = 0x00000003
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
BIND_TRANSCEIVER: Final = 0x00000009
ENQUIRE_LINK: Final = 0x00000015
RESP: Final = 0x80000000  # a response's command_id is its request's with bit 31 set
SUBMIT_SM_RESP: Final = SUBMIT_SM | RESP
DELIVER_SM_RESP: Final = DELIVER_SM | RESP
UNBIND_RESP: Final = UNBIND | RESP
ENQUIRE_LINK_RESP: Final = ENQUIRE_LINK | RESP

# --- §5.1.3 command_status values (Table 5-2) ----------------------------------------------------
ESME_ROK: Final = 0x00
ESME_RINVMSGLEN: Final = 0x01
ESME_RINVCMDLEN: Final = 0x02
ESME_RINVCMDID: Final = 0x03
ESME_RINVBNDSTS: Final = 0x04
ESME_RALYBND: Final = 0x05
ESME_RSYSERR: Final = 0x08
ESME_RINVSRCADR: Final = 0x0A
ESME_RINVDSTADR: Final = 0x0B
ESME_RBINDFAIL: Final = 0x0D
ESME_RINVPASWD: Final = 0x0E
ESME_RINVSYSID: Final = 0x0F
ESME_RMSGQFUL: Final = 0x14
ESME_RINVSERTYP: Final = 0x15
ESME_RINVESMCLASS: Final = 0x43
ESME_RINVSYSTYP: Final = 0x53
ESME_RTHROTTLED: Final = 0x58
ESME_RINVSCHED: Final = 0x61
ESME_RINVEXPIRY: Final = 0x62
ESME_RINVOPTPARSTREAM: Final = 0xC0
ESME_ROPTPARNOTALLWD: Final = 0xC1
ESME_RINVPARLEN: Final = 0xC2

# --- §5.3.2 TLV tags ----------------------------------------------------------------------------
TAG_RECEIPTED_MESSAGE_ID: Final = 0x001E  # §5.3.2.12, C-Octet String
TAG_SAR_MSG_REF_NUM: Final = 0x020C  # §5.3.2.22, 2 octets
TAG_SAR_TOTAL_SEGMENTS: Final = 0x020E  # §5.3.2.23, 1 octet
TAG_SAR_SEGMENT_SEQNUM: Final = 0x020F  # §5.3.2.24, 1 octet
TAG_SC_INTERFACE_VERSION: Final = 0x0210  # §5.3.2.25, 1 octet
TAG_NETWORK_ERROR_CODE: Final = 0x0423  # §5.3.2.31, 3 octets
TAG_MESSAGE_PAYLOAD: Final = 0x0424  # §5.3.2.32, up to 64K octets
TAG_MESSAGE_STATE: Final = 0x0427  # §5.3.2.35, 1 octet

ESM_UDHI: Final = 0x40  # §5.2.12 esm_class bit 6: UDH Indicator
ESM_DELIVERY_RECEIPT: Final = 0x04  # §5.2.12 esm_class bits 5-2 = 0001: SMSC Delivery Receipt

# §5.3.2.35 message_state values, keyed by the Appendix B "stat" words.
MESSAGE_STATES: Final[dict[str, int]] = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}

MAX_COMMAND_LENGTH: Final = 64 * 1024
SMSC_SYSTEM_ID: Final = "SMSCSIM"
_READ_CHUNK: Final = 256 * 1024
_DRAIN_ABOVE: Final = 1024 * 1024  # write-buffer bytes above which the reader waits for drain()

_HEADER = struct.Struct(">IIII")  # §3.2 command_length, command_id, command_status, sequence_number
_TLV = struct.Struct(">HH")  # §3.2.4.1 / §5.3.1 tag, length
_U16 = struct.Struct(">H")

_BIND_MODES: Final[dict[int, str]] = {
    BIND_TRANSMITTER: "transmitter",
    BIND_RECEIVER: "receiver",
    BIND_TRANSCEIVER: "transceiver",
}


# ================================================================================================
# Codec
# ================================================================================================


class PduError(ValueError):
    """A PDU body that does not decode; ``status`` is the command_status to answer with (§5.1.3)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def encode_pdu(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
    """§3.2: a 16-octet header of four big-endian unsigned 32-bit integers, then the body."""
    return _HEADER.pack(16 + len(body), command_id, status, seq) + body


def _cstring(body: bytes, pos: int, max_len: int, status: int, name: str) -> tuple[str, int]:
    """§3.1 C-Octet String: ASCII octets ended by NUL. ``max_len`` includes the NUL, as in §4."""
    end = body.find(0, pos)
    if end < 0:
        raise PduError(ESME_RINVCMDLEN, f"{name}: no NUL terminator before the end of the PDU")
    if end - pos + 1 > max_len:
        raise PduError(status, f"{name}: {end - pos + 1} octets with the NUL, the maximum is {max_len}")
    return body[pos:end].decode("latin-1"), end + 1


def _cstr(value: str) -> bytes:
    return value.encode("latin-1") + b"\0"


def decode_tlvs(body: bytes, pos: int = 0) -> dict[int, bytes]:
    """§3.2.4.1 / §5.3.1: tag (2 octets), length (2 octets, of the value only), value."""
    tlvs: dict[int, bytes] = {}
    n = len(body)
    while pos < n:
        if n - pos < 4:
            raise PduError(ESME_RINVOPTPARSTREAM, f"{n - pos} stray octet(s) after the last TLV")
        tag, length = _TLV.unpack_from(body, pos)
        pos += 4
        if pos + length > n:
            raise PduError(ESME_RINVOPTPARSTREAM, f"TLV 0x{tag:04X}: length {length} runs past the PDU")
        tlvs[tag] = body[pos : pos + length]
        pos += length
    return tlvs


def encode_tlvs(tlvs: dict[int, bytes] | None) -> bytes:
    if not tlvs:
        return b""
    return b"".join(_TLV.pack(tag, len(value)) + value for tag, value in tlvs.items())


def decode_udh(user_data: bytes) -> tuple[dict[str, Any], bytes]:
    """3GPP TS 23.040 §9.2.3.24: UDHL octet, then IEs (IEI, IEDL, data); returns (udh, payload).

    IEI 0x00 (§9.2.3.24.1): 8-bit concatenation reference, total, sequence;
    IEI 0x08 (§9.2.3.24.8): the same with a 16-bit reference. Other IEs are kept raw in "other".
    """
    if not user_data:
        raise PduError(ESME_RINVESMCLASS, "esm_class has UDHI set but the user data is empty")
    end = 1 + user_data[0]
    if end > len(user_data):
        raise PduError(ESME_RINVESMCLASS, f"UDHL {user_data[0]} is longer than the user data")
    udh: dict[str, Any] = {"ref": None, "total": None, "seq": None, "ref_bits": None, "other": []}
    pos = 1
    while pos < end:
        if end - pos < 2:
            raise PduError(ESME_RINVESMCLASS, "truncated information element in the UDH")
        iei, iedl = user_data[pos], user_data[pos + 1]
        pos += 2
        if pos + iedl > end:
            raise PduError(ESME_RINVESMCLASS, f"UDH IE 0x{iei:02X}: length {iedl} runs past the UDHL")
        ie = user_data[pos : pos + iedl]
        pos += iedl
        if iei == 0x00 and iedl == 3:
            udh.update(ref=ie[0], total=ie[1], seq=ie[2], ref_bits=8)
        elif iei == 0x08 and iedl == 4:
            udh.update(ref=(ie[0] << 8) | ie[1], total=ie[2], seq=ie[3], ref_bits=16)
        else:
            udh["other"].append((iei, bytes(ie)))
    return udh, user_data[end:]


# 3GPP TS 23.038 §6.2.1 GSM 7-bit default alphabet, indexed by septet (0x1B = escape placeholder).
_GSM_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# §6.2.1.1 extension table, reached with 0x1B.
_GSM_EXT: Final[dict[int, str]] = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_ASCII_TO_GSM: Final[dict[str, bytes]] = {
    **{ch: bytes([i]) for i, ch in enumerate(_GSM_BASIC) if ch.isascii() and i != 0x1B},
    **{ch: bytes([0x1B, code]) for code, ch in _GSM_EXT.items() if ch.isascii()},
}


def gsm_encode_ascii(text: str) -> bytes:
    """ASCII text to unpacked GSM 7-bit septets (one per octet); ValueError for e.g. '`' or controls."""
    try:
        return b"".join(_ASCII_TO_GSM[ch] for ch in text)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} has no GSM 7-bit default alphabet encoding here") from None


def gsm_decode(data: bytes) -> str:
    """Unpacked GSM 7-bit septets to text; an octet above 0x7F becomes U+FFFD."""
    out: list[str] = []
    escape = False
    for octet in data:
        if octet > 0x7F:
            out.append("\ufffd")
            escape = False
        elif escape:
            out.append(_GSM_EXT.get(octet, _GSM_BASIC[octet] if octet != 0x1B else " "))
            escape = False
        elif octet == 0x1B:
            escape = True
        else:
            out.append(_GSM_BASIC[octet])
    return "".join(out)


def decode_text(data: bytes, data_coding: int) -> str:
    """User data to text by §5.2.19 data_coding (best effort, never raises)."""
    if data_coding == 0x08:
        return data.decode("utf-16-be", "replace")
    if data_coding in (0x00, 0xF0) or (data_coding & 0xF4) == 0xF0:
        return gsm_decode(data)
    if data_coding == 0x01:
        return data.decode("ascii", "replace")
    return data.decode("latin-1")


@dataclass(slots=True)
class Submit:
    """One submit_sm as decoded by the simulator (§4.4.1). ``payload`` is the user data without UDH."""

    seq: int
    system_id: str
    source_addr: str
    source_ton: int
    source_npi: int
    dest_addr: str
    dest_ton: int
    dest_npi: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    udh: dict[str, Any] | None
    payload: bytes
    tlvs: dict[int, bytes]
    message_id: str = ""
    received_at: float = 0.0  # event-loop time
    service_type: str = ""
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    replace_if_present_flag: int = 0
    sm_default_msg_id: int = 0
    sm_length: int = 0
    status: int = 0  # the command_status it was answered with (non-zero for ``rejected``)
    received_wall: float = 0.0  # time.time(), for the receipt's "submit date"

    @property
    def text(self) -> str:
        """The payload decoded by data_coding (GSM 7-bit unpacked, UCS-2, Latin-1...)."""
        return decode_text(self.payload, self.data_coding)

    @property
    def concat(self) -> tuple[int, int, int] | None:
        """(ref, total, seq) from the UDH concatenation IE, or from the SAR TLVs (§5.3.2.22-24)."""
        if self.udh is not None and self.udh["ref"] is not None:
            return self.udh["ref"], self.udh["total"], self.udh["seq"]
        ref, total, seq = (
            self.tlvs.get(t) for t in (TAG_SAR_MSG_REF_NUM, TAG_SAR_TOTAL_SEGMENTS, TAG_SAR_SEGMENT_SEQNUM)
        )
        if ref is not None and total is not None and seq is not None:
            return int.from_bytes(ref, "big"), int.from_bytes(total, "big"), int.from_bytes(seq, "big")
        return None


def decode_sm(body: bytes) -> Submit:
    """Decode a submit_sm (§4.4.1) or deliver_sm (§4.6.1) body: both share the mandatory layout.

    seq/system_id/message_id/received_at are left for the caller to fill in.
    """
    service_type, pos = _cstring(body, 0, 6, ESME_RINVSERTYP, "service_type")
    if len(body) < pos + 2:
        raise PduError(ESME_RINVCMDLEN, "PDU ends before source_addr_ton/npi")
    source_ton, source_npi = body[pos], body[pos + 1]
    source_addr, pos = _cstring(body, pos + 2, 21, ESME_RINVSRCADR, "source_addr")
    if len(body) < pos + 2:
        raise PduError(ESME_RINVCMDLEN, "PDU ends before dest_addr_ton/npi")
    dest_ton, dest_npi = body[pos], body[pos + 1]
    dest_addr, pos = _cstring(body, pos + 2, 21, ESME_RINVDSTADR, "destination_addr")
    if len(body) < pos + 3:
        raise PduError(ESME_RINVCMDLEN, "PDU ends before esm_class/protocol_id/priority_flag")
    esm_class, protocol_id, priority_flag = body[pos], body[pos + 1], body[pos + 2]
    # §7.1.1: a time is either NULL or exactly 16 characters (+ NUL = 17).
    schedule, pos = _cstring(body, pos + 3, 17, ESME_RINVSCHED, "schedule_delivery_time")
    if schedule and len(schedule) != 16:
        raise PduError(ESME_RINVSCHED, f"schedule_delivery_time {schedule!r} is not 16 characters")
    validity, pos = _cstring(body, pos, 17, ESME_RINVEXPIRY, "validity_period")
    if validity and len(validity) != 16:
        raise PduError(ESME_RINVEXPIRY, f"validity_period {validity!r} is not 16 characters")
    if len(body) < pos + 5:
        raise PduError(ESME_RINVCMDLEN, "PDU ends before registered_delivery..sm_length")
    registered_delivery, replace_flag, data_coding, default_msg_id, sm_length = body[pos : pos + 5]
    pos += 5
    if sm_length > 254:  # §4.4.1: short_message is 0-254 octets
        raise PduError(ESME_RINVMSGLEN, f"sm_length {sm_length} > 254")
    if pos + sm_length > len(body):
        raise PduError(ESME_RINVMSGLEN, f"sm_length {sm_length} runs past the PDU")
    short_message = body[pos : pos + sm_length]
    tlvs = decode_tlvs(body, pos + sm_length)
    for tag, size in ((TAG_SAR_MSG_REF_NUM, 2), (TAG_SAR_TOTAL_SEGMENTS, 1), (TAG_SAR_SEGMENT_SEQNUM, 1)):
        value = tlvs.get(tag)
        if value is not None and len(value) != size:
            raise PduError(ESME_RINVPARLEN, f"TLV 0x{tag:04X} has length {len(value)}, expected {size}")
    message_payload = tlvs.get(TAG_MESSAGE_PAYLOAD)
    if message_payload is not None and sm_length:
        # §5.3.2.32: message_payload and short_message must not be used together.
        raise PduError(ESME_ROPTPARNOTALLWD, "both short_message and message_payload are present")
    user_data = short_message if message_payload is None else message_payload
    udh: dict[str, Any] | None = None
    payload = user_data
    if esm_class & ESM_UDHI:
        udh, payload = decode_udh(user_data)
    return Submit(
        seq=0,
        system_id="",
        source_addr=source_addr,
        source_ton=source_ton,
        source_npi=source_npi,
        dest_addr=dest_addr,
        dest_ton=dest_ton,
        dest_npi=dest_npi,
        esm_class=esm_class,
        data_coding=data_coding,
        registered_delivery=registered_delivery,
        short_message=short_message,
        udh=udh,
        payload=payload,
        tlvs=tlvs,
        service_type=service_type,
        protocol_id=protocol_id,
        priority_flag=priority_flag,
        schedule_delivery_time=schedule,
        validity_period=validity,
        replace_if_present_flag=replace_flag,
        sm_default_msg_id=default_msg_id,
        sm_length=sm_length,
    )


def encode_sm(
    *,
    source_addr: str,
    dest_addr: str,
    short_message: bytes = b"",
    source_ton: int = 0,
    source_npi: int = 0,
    dest_ton: int = 0,
    dest_npi: int = 0,
    service_type: str = "",
    esm_class: int = 0,
    protocol_id: int = 0,
    priority_flag: int = 0,
    schedule_delivery_time: str = "",
    validity_period: str = "",
    registered_delivery: int = 0,
    replace_if_present_flag: int = 0,
    data_coding: int = 0,
    sm_default_msg_id: int = 0,
    tlvs: dict[int, bytes] | None = None,
) -> bytes:
    """Encode a deliver_sm (§4.6.1) / submit_sm (§4.4.1) body. For deliver_sm, §4.6.1 wants the
    schedule/validity/replace/default-msg fields NULL, which are the defaults here."""
    if len(short_message) > 254:
        raise ValueError(f"short_message is {len(short_message)} octets; over 254 use message_payload")
    return b"".join(
        (
            _cstr(service_type),
            bytes((source_ton, source_npi)),
            _cstr(source_addr),
            bytes((dest_ton, dest_npi)),
            _cstr(dest_addr),
            bytes((esm_class, protocol_id, priority_flag)),
            _cstr(schedule_delivery_time),
            _cstr(validity_period),
            bytes(
                (
                    registered_delivery,
                    replace_if_present_flag,
                    data_coding,
                    sm_default_msg_id,
                    len(short_message),
                )
            ),
            short_message,
            encode_tlvs(tlvs),
        )
    )


# ================================================================================================
# Server
# ================================================================================================


@dataclass(slots=True)
class Deliver:
    """One deliver_sm the simulator sent (a receipt or an MO); a redelivery is a new record."""

    seq: int
    system_id: str
    kind: Literal["receipt", "mo"]
    short_message: bytes
    message_id: str | None  # the receipted message id, for receipts
    attempt: int  # 1 for the first send
    sent_at: float  # event-loop time
    status: int | None = None  # the deliver_sm_resp status, once answered


@dataclass(slots=True, eq=False)
class _Delivery:
    """A deliver_sm the SMSC owes a client, across (re)delivery attempts."""

    system_id: str
    kind: Literal["receipt", "mo"]
    body: bytes
    short_message: bytes
    message_id: str | None
    attempts: int = 0
    seq: int = 0
    done: bool = False
    record: Deliver | None = None


class _Conn:
    """One client connection."""

    __slots__ = (
        "batch_answered",
        "closed",
        "closing",
        "id",
        "max_window",
        "mode",
        "out",
        "outstanding",
        "peer",
        "rx",
        "system_id",
        "task",
        "transport",
        "tx",
        "unbind_waiter",
        "writer",
    )

    def __init__(self, conn_id: int, writer: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.id = conn_id
        self.writer = writer
        self.transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] | None = (peer[0], peer[1]) if peer else None
        self.task = task
        self.system_id: str | None = None
        self.mode: str | None = None
        self.tx = False
        self.rx = False
        self.closed = False
        self.closing = False  # close once the current batch is written
        self.outstanding = 0
        self.max_window = 0
        self.out: bytearray | None = None  # set while the reader processes one read's PDUs
        self.batch_answered = 0
        self.unbind_waiter: asyncio.Future[None] | None = None

    def send(self, data: bytes | bytearray) -> None:
        if self.closed or self.transport.is_closing():
            return
        if self.out is not None:
            self.out += data
        else:
            self.writer.write(data)


class SmscSimulator:
    """An SMPP 3.4 SMSC on 127.0.0.1 for tests and benchmarks; see the module docstring."""

    def __init__(
        self,
        system_id: str = "gw",
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record: bool = True,
    ) -> None:
        self.system_id = system_id
        self.password = password
        self.host = host
        self.port = port
        # --- knobs (change any time) ---
        self.message_id_format: Literal["hex", "decimal"] = "hex"
        self.throttle_every: int | None = None  # every Nth submit_sm -> ESME_RTHROTTLED
        self.throttle_next = 0  # the next K submit_sm -> ESME_RTHROTTLED
        self.queue_full_next = 0  # the next K submit_sm -> ESME_RMSGQFUL
        self.fail_every: int | None = None  # every Nth submit_sm -> fail_status
        self.fail_status = ESME_RINVDSTADR
        self.fail_destinations: dict[str, int] = {}  # dest_addr -> status
        self.stall_submits = False  # never answer submit_sm (see ``stalled``, ``release_stalled``)
        self.stall_enquire_link = False
        self.response_delay = 0.0  # seconds before each submit_sm_resp
        self.response_jitter = 0.0  # + uniform(0, jitter) seconds: responses come out of order
        self.bind_fail_next = 0  # the next K binds fail with ESME_RBINDFAIL even with good credentials
        self.receipts = True
        self.receipt_delay = 0.0
        self.receipt_stat = "DELIVRD"
        self.receipt_err = "000"
        self.receipt_before_resp = False
        self.receipt_tlvs = True  # receipted_message_id + message_state (+ network_error_code if err)
        self.receipt_id_decimal = False  # text "id:" in decimal while the TLV keeps the hex id
        self.redeliver_after: float | None = None  # resend deliver_sm not acked OK within this
        self.record = record  # False: only count accepted/rejected submits (long benchmarks)
        # --- records ---
        self.binds: list[dict[str, Any]] = []  # successful binds, in order
        self.bind_failures: list[dict[str, Any]] = []
        self.submits: list[Submit] = []  # accepted submit_sm
        self.rejected: list[Submit] = []  # answered with an error status (``Submit.status``)
        self.stalled: list[Submit] = []  # received while stall_submits, not answered yet
        self.delivers: list[Deliver] = []  # every deliver_sm sent (each attempt)
        self.deliver_resps: list[tuple[int, int]] = []  # (seq, status) of deliver_sm_resp received
        self.generic_nacks: list[tuple[int, int]] = []  # (seq, status) of generic_nack received
        self.protocol_errors: list[str] = []  # malformed PDUs and stray responses from clients
        self.submit_count = 0  # every submit_sm received while bound
        self.accepted_count = 0
        self.enquire_links = 0
        self.redeliveries = 0
        self.max_window_seen = 0
        # --- state ---
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._bound: list[_Conn] = []
        self._conn_ids = itertools.count(1)
        self._seq = itertools.count(1)  # sequence numbers of SMSC-originated PDUs (§5.1.4)
        self._rr = itertools.count()
        self._msg_ids = itertools.count(random.randrange(0x10000000, 0x70000000) & ~0xFF)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._inflight: dict[int, _Delivery] = {}
        self._undelivered: dict[str, deque[_Delivery]] = {}
        self._stalled_on: list[tuple[_Conn, Submit]] = []
        self._waiters: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("SMSC simulator already started")
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection; wait for (or cancel) every task."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for conn in list(self._conns.values()):
            conn.transport.close()
        for task in self._tasks:
            task.cancel()
        await self._settle(self._handlers, 5.0)
        for task in list(self._handlers):
            task.cancel()  # the handler swallows it and returns
        pending = self._tasks | self._handlers
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()
        self._notify()

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """The currently bound sessions: system_id, mode, peer, conn_id, outstanding, max_window."""
        return [
            {
                "system_id": c.system_id,
                "mode": c.mode,
                "peer": c.peer,
                "conn_id": c.id,
                "outstanding": c.outstanding,
                "max_window": c.max_window,
            }
            for c in self._bound
        ]

    @property
    def bound_count(self) -> int:
        return len(self._bound)

    def clear_records(self) -> None:
        """Forget recorded traffic and counters (not knobs, sessions or pending deliveries)."""
        for records in (
            self.binds,
            self.bind_failures,
            self.submits,
            self.rejected,
            self.delivers,
            self.deliver_resps,
            self.generic_nacks,
            self.protocol_errors,
        ):
            records.clear()
        self.submit_count = self.accepted_count = self.enquire_links = self.redeliveries = 0
        self.max_window_seen = 0
        for conn in self._conns.values():
            conn.max_window = conn.outstanding

    # ------------------------------------------------------------------ waiting

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,
        what: str | Callable[[], str] = "condition",
    ) -> None:
        """Wait until ``predicate()`` holds (re-checked on every submit, bind, close, deliver resp)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                desc = what() if callable(what) else what
                raise TimeoutError(f"SMSC simulator: no {desc} after {timeout:g}s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(remaining, 0.5))  # and re-poll now and then
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    async def wait_submits(self, n: int, timeout: float = 10.0) -> list[Submit]:
        """Wait until ``n`` submit_sm were accepted in total; returns all recorded so far."""
        await self.wait_until(
            lambda: self.accepted_count >= n,
            timeout,
            lambda: f"{n} accepted submit_sm (have {self.accepted_count}, rejected {len(self.rejected)})",
        )
        return list(self.submits)

    async def wait_bound(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` sessions are bound right now; returns ``sessions``."""
        await self.wait_until(
            lambda: len(self._bound) >= n, timeout, lambda: f"{n} bound session(s) (have {len(self._bound)})"
        )
        return self.sessions

    async def wait_deliver_resps(self, n: int, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Wait until ``n`` deliver_sm_resp were received in total; returns them all."""
        await self.wait_until(
            lambda: len(self.deliver_resps) >= n,
            timeout,
            lambda: f"{n} deliver_sm_resp (have {len(self.deliver_resps)}, sent {len(self.delivers)})",
        )
        return list(self.deliver_resps)

    def _notify(self) -> None:
        if self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()

    # ------------------------------------------------------------------ connection control

    async def drop_connections(self) -> None:
        """Abort every client connection (TCP reset, no unbind) and wait for the handlers to end."""
        handlers = [c.task for c in self._conns.values() if c.task is not None]
        for conn in list(self._conns.values()):
            self._forget(conn)
            conn.transport.abort()
        await self._settle(handlers, 5.0)
        self._notify()

    async def unbind_all(self, timeout: float = 5.0) -> None:
        """§4.2.1: send unbind to every bound client, wait for unbind_resp (up to ``timeout``), close."""
        loop = asyncio.get_running_loop()
        conns = list(self._bound)
        waiters = []
        for conn in conns:
            conn.unbind_waiter = loop.create_future()
            waiters.append(conn.unbind_waiter)
            self._unbound(conn)
            conn.send(encode_pdu(UNBIND, 0, self._next_seq()))
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
        for conn in conns:
            conn.transport.close()
        await self._settle([c.task for c in conns if c.task is not None], 5.0)
        self._notify()

    async def release_stalled(self, status: int = ESME_ROK) -> int:
        """Answer the submit_sm held by ``stall_submits`` (still-open connections); returns how many."""
        held, self._stalled_on = self._stalled_on, []
        self.stalled.clear()
        answered = 0
        for conn, sub in held:
            if conn.closed:
                continue
            self._settle_submit(conn, sub, status)
            answered += 1
        self._notify()
        await asyncio.sleep(0)
        return answered

    @staticmethod
    async def _settle(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> None:
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_seq(self) -> int:
        seq = next(self._seq)
        if seq > 0x7FFFFFFF:  # §5.1.4: 0x00000001 to 0x7FFFFFFF
            self._seq = itertools.count(2)
            seq = 1
        return seq

    def _forget(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.id, None)
        self._unbound(conn)
        if conn.unbind_waiter is not None and not conn.unbind_waiter.done():
            conn.unbind_waiter.set_result(None)

    def _unbound(self, conn: _Conn) -> None:
        if conn in self._bound:
            self._bound.remove(conn)

    # ------------------------------------------------------------------ reading

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = _Conn(next(self._conn_ids), writer, task)
        self._conns[conn.id] = conn
        buf = b""
        try:
            while not conn.closed:
                try:
                    data = await reader.read(_READ_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                buf = buf + data if buf else data
                conn.out = bytearray()
                conn.batch_answered = 0
                try:
                    consumed = self._process(conn, buf)
                finally:
                    out, conn.out = conn.out, None
                    conn.outstanding -= conn.batch_answered
                buf = buf[consumed:]
                if out:
                    conn.send(out)
                if conn.closing:
                    break
                if conn.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                    try:
                        await writer.drain()
                    except OSError:
                        break
        except asyncio.CancelledError:
            pass  # only stop() cancels a handler, as a last resort; end quietly
        finally:
            self._forget(conn)
            writer.close()
            if task is not None:
                self._handlers.discard(task)
            self._notify()

    def _process(self, conn: _Conn, buf: bytes) -> int:
        """Handle every complete PDU in ``buf``; returns the octets consumed."""
        pos = 0
        n = len(buf)
        unpack = _HEADER.unpack_from
        while n - pos >= 16 and not conn.closing:
            length, command_id, status, seq = unpack(buf, pos)
            if length < 16 or length > MAX_COMMAND_LENGTH:
                self.protocol_errors.append(f"conn {conn.id}: command_length {length}; connection closed")
                conn.closing = True
                return n
            if n - pos < length:
                break
            body = buf[pos + 16 : pos + length]
            pos += length
            if command_id == SUBMIT_SM:
                self._on_submit(conn, seq, body)
            elif command_id in (DELIVER_SM_RESP, GENERIC_NACK):
                self._on_deliver_resp(conn, command_id, status, seq)
            elif command_id == ENQUIRE_LINK:
                self.enquire_links += 1
                if not self.stall_enquire_link:
                    conn.send(encode_pdu(ENQUIRE_LINK_RESP, ESME_ROK, seq))  # §4.11.2
            elif command_id in _BIND_MODES:
                self._on_bind(conn, command_id, seq, body)
            elif command_id == UNBIND:
                self._unbound(conn)
                conn.send(encode_pdu(UNBIND_RESP, ESME_ROK, seq))  # §4.2.2, then close
                conn.closing = True
            elif command_id == UNBIND_RESP:
                if conn.unbind_waiter is not None and not conn.unbind_waiter.done():
                    conn.unbind_waiter.set_result(None)
                conn.closing = True
            elif command_id == ENQUIRE_LINK_RESP:
                pass
            else:
                # §4.3.1 generic_nack: a command id this SMSC does not serve.
                conn.send(encode_pdu(GENERIC_NACK, ESME_RINVCMDID, seq))
        return pos

    # ------------------------------------------------------------------ bind (§4.1)

    def _on_bind(self, conn: _Conn, command_id: int, seq: int, body: bytes) -> None:
        resp_id = command_id | RESP
        mode = _BIND_MODES[command_id]
        try:
            # §4.1.1: system_id (16), password (9), system_type (13), interface_version,
            # addr_ton, addr_npi, address_range (41); sizes include the NUL.
            system_id, pos = _cstring(body, 0, 16, ESME_RINVSYSID, "system_id")
            password, pos = _cstring(body, pos, 9, ESME_RINVPASWD, "password")
            system_type, pos = _cstring(body, pos, 13, ESME_RINVSYSTYP, "system_type")
            if len(body) < pos + 3:
                raise PduError(ESME_RINVCMDLEN, "bind ends before interface_version/addr_ton/addr_npi")
            interface_version = body[pos]
            address_range, pos = _cstring(body, pos + 3, 41, ESME_RINVCMDLEN, "address_range")
        except PduError as exc:
            self.protocol_errors.append(f"conn {conn.id}: {mode} bind seq={seq}: {exc}")
            conn.send(encode_pdu(resp_id, exc.status, seq))
            return
        info: dict[str, Any] = {
            "system_id": system_id,
            "mode": mode,
            "peer": conn.peer,
            "system_type": system_type,
            "interface_version": interface_version,
            "address_range": address_range,
            "conn_id": conn.id,
        }
        status = ESME_ROK
        if conn.mode is not None:
            status = ESME_RALYBND
        elif self.bind_fail_next > 0:
            self.bind_fail_next -= 1
            status = ESME_RBINDFAIL
        elif system_id != self.system_id or password != self.password:
            status = ESME_RBINDFAIL
        if status:
            # §4.1.2: no body with a non-zero status. The socket stays open: the client decides.
            self.bind_failures.append({**info, "status": status})
            conn.send(encode_pdu(resp_id, status, seq))
            self._notify()
            return
        conn.system_id = system_id
        conn.mode = mode
        conn.tx = mode != "receiver"
        conn.rx = mode != "transmitter"
        self.binds.append(info)
        self._bound.append(conn)
        # §4.1.2 bind_*_resp: system_id, then the optional sc_interface_version TLV (§5.3.2.25).
        conn.send(encode_pdu(resp_id, ESME_ROK, seq, _cstr(SMSC_SYSTEM_ID) + _TLV.pack(0x0210, 1) + b"\x34"))
        if conn.rx:
            queued = self._undelivered.pop(system_id, None)
            while queued:
                self._dispatch_delivery(queued.popleft())
        self._notify()

    # ------------------------------------------------------------------ submit_sm (§4.4)

    def _on_submit(self, conn: _Conn, seq: int, body: bytes) -> None:
        if not conn.tx:
            # Not bound, or bound as a receiver: §4.4 submit_sm is for transmitter/transceiver.
            conn.send(encode_pdu(SUBMIT_SM_RESP, ESME_RINVBNDSTS, seq))
            return
        try:
            sub = decode_sm(body)
        except PduError as exc:
            self.protocol_errors.append(f"conn {conn.id}: submit_sm seq={seq}: {exc}")
            conn.send(encode_pdu(SUBMIT_SM_RESP, exc.status, seq))
            return
        sub.seq = seq
        sub.system_id = conn.system_id or ""
        sub.received_at = asyncio.get_running_loop().time()
        sub.received_wall = time.time()
        conn.outstanding += 1
        if conn.outstanding > conn.max_window:
            conn.max_window = conn.outstanding
            if conn.outstanding > self.max_window_seen:
                self.max_window_seen = conn.outstanding
        self.submit_count += 1
        if self.stall_submits:
            self.stalled.append(sub)
            self._stalled_on.append((conn, sub))
            self._notify()
            return
        self._settle_submit(conn, sub, self._verdict(sub))

    def _verdict(self, sub: Submit) -> int:
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return ESME_RTHROTTLED
        if self.throttle_every and self.submit_count % self.throttle_every == 0:
            return ESME_RTHROTTLED
        if self.queue_full_next > 0:
            self.queue_full_next -= 1
            return ESME_RMSGQFUL
        status = self.fail_destinations.get(sub.dest_addr)
        if status:
            return status
        if self.fail_every and self.submit_count % self.fail_every == 0:
            return self.fail_status
        return ESME_ROK

    def _settle_submit(self, conn: _Conn, sub: Submit, status: int) -> None:
        """Record the verdict and answer now or later (with the receipt, if one is due)."""
        sub.status = status
        if status == ESME_ROK:
            n = next(self._msg_ids)
            sub.message_id = f"{n:X}" if self.message_id_format == "hex" else str(n)
            self.accepted_count += 1
            if self.record:
                self.submits.append(sub)
        elif self.record:
            self.rejected.append(sub)
        self._notify()
        receipt = status == ESME_ROK and self.receipts and self._receipt_due(sub.registered_delivery)
        if self.response_delay > 0 or self.response_jitter > 0 or (receipt and self.receipt_delay > 0):
            self._spawn(self._answer_later(conn, sub, receipt))
            return
        if receipt and self.receipt_before_resp:
            self._send_receipt(sub)
        self._answer(conn, sub)
        if receipt and not self.receipt_before_resp:
            self._send_receipt(sub)

    async def _answer_later(self, conn: _Conn, sub: Submit, receipt: bool) -> None:
        before = self.receipt_before_resp
        if receipt and before:
            if self.receipt_delay > 0:
                await asyncio.sleep(self.receipt_delay)
            self._send_receipt(sub)
        delay = self.response_delay
        if self.response_jitter > 0:
            delay += random.uniform(0.0, self.response_jitter)
        if delay > 0:
            await asyncio.sleep(delay)
        self._answer(conn, sub)
        if receipt and not before:
            if self.receipt_delay > 0:
                await asyncio.sleep(self.receipt_delay)
            self._send_receipt(sub)

    def _answer(self, conn: _Conn, sub: Submit) -> None:
        # §4.4.2 submit_sm_resp: message_id (C-Octet String, max 65); no body on error.
        body = _cstr(sub.message_id) if sub.status == ESME_ROK else b""
        conn.send(encode_pdu(SUBMIT_SM_RESP, sub.status, sub.seq, body))
        if conn.out is not None:
            conn.batch_answered += 1
        else:
            conn.outstanding -= 1

    def _receipt_due(self, registered_delivery: int) -> bool:
        # §5.2.17 bits 1-0: 01 receipt on success or failure, 10 on failure only.
        bits = registered_delivery & 0x03
        return bits == 1 or (bits == 2 and self.receipt_stat != "DELIVRD")

    # ------------------------------------------------------------------ deliver_sm (§4.6)

    def _send_receipt(self, sub: Submit) -> None:
        """Appendix B receipt text in a deliver_sm with esm_class 0x04 (§5.2.12), back to the submitter."""
        stat, err = self.receipt_stat, self.receipt_err
        text_id = sub.message_id
        if self.receipt_id_decimal and self.message_id_format == "hex":
            text_id = str(int(text_id, 16))
        # 20 characters need at most 40 octets (UCS-2, or GSM with escapes).
        text = decode_text(sub.payload[:40], sub.data_coding)[:20]
        preview = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
        submit_date = time.strftime("%y%m%d%H%M", time.gmtime(sub.received_wall))
        done_date = time.strftime("%y%m%d%H%M", time.gmtime())
        dlvrd = "001" if stat == "DELIVRD" else "000"
        short_message = (
            f"id:{text_id} sub:001 dlvrd:{dlvrd} submit date:{submit_date} done date:{done_date}"
            f" stat:{stat} err:{err} text:{preview}"
        ).encode("ascii", "replace")
        tlvs: dict[int, bytes] | None = None
        if self.receipt_tlvs:
            tlvs = {
                TAG_RECEIPTED_MESSAGE_ID: _cstr(sub.message_id),
                TAG_MESSAGE_STATE: bytes([MESSAGE_STATES.get(stat, 7)]),
            }
            if err.isdigit() and int(err):
                # §5.3.2.31: network type (3 = GSM), then the 2-octet error code.
                tlvs[TAG_NETWORK_ERROR_CODE] = b"\x03" + _U16.pack(int(err) & 0xFFFF)
        body = encode_sm(
            source_addr=sub.dest_addr,
            source_ton=sub.dest_ton,
            source_npi=sub.dest_npi,
            dest_addr=sub.source_addr,
            dest_ton=sub.source_ton,
            dest_npi=sub.source_npi,
            esm_class=ESM_DELIVERY_RECEIPT,
            data_coding=0,
            short_message=short_message,
            tlvs=tlvs,
        )
        self._dispatch_delivery(_Delivery(sub.system_id, "receipt", body, short_message, sub.message_id))

    def _pick_receiver(self, system_id: str) -> _Conn | None:
        candidates = [c for c in self._bound if c.rx and c.system_id == system_id and not c.closing]
        if not candidates:
            return None
        return candidates[next(self._rr) % len(candidates)]

    def _dispatch_delivery(self, d: _Delivery) -> int | None:
        """Send ``d`` on a receiver/transceiver session, or queue it until one binds."""
        conn = self._pick_receiver(d.system_id)
        if conn is None:
            self._undelivered.setdefault(d.system_id, deque()).append(d)
            return None
        loop = asyncio.get_running_loop()
        seq = self._next_seq()
        d.seq = seq
        d.attempts += 1
        d.record = Deliver(seq, d.system_id, d.kind, d.short_message, d.message_id, d.attempts, loop.time())
        if self.record:
            self.delivers.append(d.record)
        self._inflight[seq] = d
        conn.send(encode_pdu(DELIVER_SM, ESME_ROK, seq, d.body))
        if self.redeliver_after is not None:
            self._timers[seq] = loop.call_later(self.redeliver_after, self._redeliver_due, d, seq)
        return seq

    def _redeliver_due(self, d: _Delivery, seq: int) -> None:
        self._timers.pop(seq, None)
        self._inflight.pop(seq, None)
        if d.done or d.seq != seq or self._server is None:
            return
        self.redeliveries += 1
        self._dispatch_delivery(d)

    def _on_deliver_resp(self, conn: _Conn, command_id: int, status: int, seq: int) -> None:
        if command_id == GENERIC_NACK:
            self.generic_nacks.append((seq, status))
        d = self._inflight.get(seq)
        if d is None:
            if command_id != GENERIC_NACK:
                self.protocol_errors.append(f"conn {conn.id}: deliver_sm_resp seq={seq} for no deliver_sm")
            return
        self.deliver_resps.append((seq, status))
        if d.record is not None:
            d.record.status = status
        if status == ESME_ROK or self.redeliver_after is None:
            d.done = status == ESME_ROK
            del self._inflight[seq]
            timer = self._timers.pop(seq, None)
            if timer is not None:
                timer.cancel()
        # else: the redelivery timer started at send time resends it.
        self._notify()

    # ------------------------------------------------------------------ MO

    async def send_mo(
        self,
        source: str,
        destination: str,
        short_message: bytes,
        *,
        data_coding: int = 0,
        esm_class: int = 0,
        tlvs: dict[int, bytes] | None = None,
        system_id: str | None = None,
        source_ton: int = 1,
        source_npi: int = 1,
        dest_ton: int = 0,
        dest_npi: int = 1,
    ) -> int:
        """Send an MO deliver_sm (§4.6.1) to a bound receiver/transceiver; returns its sequence number."""
        sid = self.system_id if system_id is None else system_id
        if self._pick_receiver(sid) is None:
            raise RuntimeError(f"SMSC simulator: no receiver/transceiver bound as {sid!r}")
        body = encode_sm(
            source_addr=source,
            source_ton=source_ton,
            source_npi=source_npi,
            dest_addr=destination,
            dest_ton=dest_ton,
            dest_npi=dest_npi,
            esm_class=esm_class,
            data_coding=data_coding,
            short_message=short_message,
            tlvs=tlvs,
        )
        seq = self._dispatch_delivery(_Delivery(sid, "mo", body, short_message, None))
        assert seq is not None
        await asyncio.sleep(0)
        return seq

    async def mo_text(self, source: str, destination: str, text: str, *, system_id: str | None = None) -> int:
        """MO text: ASCII as unpacked GSM 7-bit (data_coding 0; ValueError for '`' and control
        characters), anything else as UCS-2 (data_coding 8). Over 254 octets goes in message_payload."""
        if text.isascii():
            data, data_coding = gsm_encode_ascii(text), 0x00
        else:
            data, data_coding = text.encode("utf-16-be"), 0x08
        tlvs = None
        if len(data) > 254:
            data, tlvs = b"", {TAG_MESSAGE_PAYLOAD: data}
        return await self.send_mo(
            source, destination, data, data_coding=data_coding, tlvs=tlvs, system_id=system_id
        )

    async def mo_concat(
        self,
        source: str,
        destination: str,
        parts: Sequence[bytes],
        ref: int,
        data_coding: int = 0,
        order: Sequence[int] | None = None,
        ref_bits: Literal[8, 16] = 8,
        *,
        system_id: str | None = None,
    ) -> list[int]:
        """Send ``parts`` as a concatenated MO, each with a UDH (esm_class UDHI, §5.2.12).

        ``order`` lists 0-based part indexes to send, in that order (a subset or repeats are allowed,
        to test reassembly timeouts and duplicates). Returns the deliver_sm sequence numbers.
        """
        total = len(parts)
        if not 1 <= total <= 255:
            raise ValueError("a concatenated message has 1-255 parts")
        sequence = range(total) if order is None else order
        seqs = []
        for index in sequence:
            if ref_bits == 8:
                udh = bytes((5, 0x00, 3, ref & 0xFF, total, index + 1))
            elif ref_bits == 16:
                udh = bytes((6, 0x08, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, index + 1))
            else:
                raise ValueError("ref_bits must be 8 or 16")
            seqs.append(
                await self.send_mo(
                    source,
                    destination,
                    udh + parts[index],
                    data_coding=data_coding,
                    esm_class=ESM_UDHI,
                    system_id=system_id,
                )
            )
        return seqs


# ================================================================================================
# Stand-alone use: python tests/smsc.py --port 2775
# ================================================================================================


async def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the SMPP 3.4 test SMSC until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2775)
    parser.add_argument("--system-id", default="gw")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--response-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    sim = SmscSimulator(args.system_id, args.password, args.host, args.port, record=False)
    sim.response_delay = args.response_delay
    async with sim:
        print(f"SMSC simulator on {args.host}:{sim.port} (system_id={args.system_id!r})", flush=True)
        last = -1
        while True:
            await asyncio.sleep(5)
            if sim.submit_count != last:
                last = sim.submit_count
                print(
                    f"binds={len(sim.binds)} bound={sim.bound_count} submits={sim.submit_count}"
                    f" accepted={sim.accepted_count} max_window={sim.max_window_seen}"
                    f" deliver_resps={len(sim.deliver_resps)} protocol_errors={len(sim.protocol_errors)}",
                    flush=True,
                )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
