"""Hypothesis fuzz of the SMPP PDU decoder (gateway/smpp/codec.py), as the listener uses it on bytes
from carriers (issue 9): whatever arrives, ``decode`` returns a PDU or raises ``PduDecodeError``,
nothing else (no smpplib exception, IndexError, UnicodeError... reaches the session)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smpp import codec
from gateway.smpp.codec import SequenceGenerator
from gateway.smpp.errors import PduDecodeError
from gateway.smpp.types import DeliverSm

# Requests a carrier may send us, their responses, and ids nobody knows.
COMMAND_IDS = [0x01, 0x02, 0x04, 0x05, 0x06, 0x09, 0x0B, 0x15, 0x103, 0x07, 0x08, 0x99, 0x80000000]
COMMAND_IDS += [c | 0x80000000 for c in (0x01, 0x02, 0x04, 0x05, 0x06, 0x09, 0x15, 0x103)]


def _decode(raw: bytes) -> None:
    try:
        pdu = codec.decode(raw, SequenceGenerator())
    except PduDecodeError:
        return
    assert isinstance(pdu, codec.Pdu | DeliverSm)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _decode(raw)


# Bodies made of the pieces a PDU is made of (C-Octet Strings, octets, TLVs) reach deeper than noise.
_piece = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\0", b"") + b"\0"),
    st.binary(min_size=1, max_size=3),
    st.tuples(
        st.sampled_from([0x0424, 0x020C, 0x020E, 0x020F, 0x001E, 0x0427, 0x0423, 0x1403]),
        st.binary(max_size=8),
    ).map(lambda t: struct.pack(">HH", t[0], len(t[1])) + t[1]),
    st.binary(max_size=8),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(COMMAND_IDS),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(_piece, max_size=24).map(b"".join),
)
def test_well_framed_pdus_with_arbitrary_bodies(command_id: int, status: int, seq: int, body: bytes) -> None:
    _decode(struct.pack(">IIII", 16 + len(body), command_id, status, seq) + body)


@given(st.integers(0, 0xFFFFFFFF), st.binary(min_size=12, max_size=12))
def test_header_lengths(length: int, rest: bytes) -> None:
    head = struct.pack(">I", length) + rest
    try:
        header = codec.decode_header(head)
    except PduDecodeError:
        assert not 16 <= length <= codec.MAX_PDU_LENGTH
    else:
        assert header.length == length
