"""gateway.smpp.codec: our PDUs parsed back by smpplib (and by the test SMSC's independent codec),
hand-built bytes decoded, status names, and the errors for what cannot be encoded or decoded."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
import smpplib.smpp  # type: ignore[import-untyped]
from smsc import decode_sm

from gateway.smpp import codec
from gateway.smpp.codec import Pdu, SequenceGenerator
from gateway.smpp.errors import PduDecodeError, PduEncodeError
from gateway.smpp.types import DeliverSm, SubmitPart

UDH = bytes((5, 0x00, 3, 0x2A, 2, 1))


def pdu(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, status, seq) + body


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def deliver_body(short_message: bytes, *, esm_class: int = 0, data_coding: int = 0) -> bytes:
    return (
        b"\0"  # service_type
        + bytes((1, 1))
        + b"48600111222\0"
        + bytes((0, 1))
        + b"1234\0"
        + bytes((esm_class, 0x3F, 0))  # esm_class, protocol_id, priority_flag
        + b"\0\0"  # schedule_delivery_time, validity_period
        + bytes((0, 0, data_coding, 0, len(short_message)))
        + short_message
    )


def parse(raw: bytes) -> object:
    return smpplib.smpp.parse_pdu(raw, client=SequenceGenerator(), allow_unknown_opt_params=True)


# --------------------------------------------------------------------------- encoding


def test_submit_sm_round_trips_through_smpplib() -> None:
    part = SubmitPart(
        source_addr="ACME",
        source_ton=5,
        source_npi=0,
        destination_addr="48600111222",
        esm_class=0x40,
        data_coding=8,
        short_message=UDH + "zażółć".encode("utf-16-be"),
        registered_delivery=1,
        tlvs={"user_message_reference": 77},
    )
    raw = codec.encode_submit_sm(part, 42)
    parsed = parse(raw)
    assert parsed.command == "submit_sm"
    assert parsed.sequence == 42
    assert parsed.source_addr == b"ACME"
    assert (parsed.source_addr_ton, parsed.source_addr_npi) == (5, 0)
    assert parsed.destination_addr == b"48600111222"
    assert (parsed.dest_addr_ton, parsed.dest_addr_npi) == (1, 1)
    assert (parsed.esm_class, parsed.data_coding, parsed.registered_delivery) == (0x40, 8, 1)
    assert parsed.short_message == part.short_message
    assert parsed.user_message_reference == 77
    assert codec.decode_header(raw) == codec.Header(len(raw), 0x00000004, 0, 42)


def test_submit_sm_is_what_the_test_smsc_decodes() -> None:
    """The simulator's codec is written from the specification, independently of smpplib."""
    part = SubmitPart("ACME", 5, 0, "48600111222", esm_class=0x40, short_message=UDH + b"Hi")
    raw = codec.encode_submit_sm(part, 1)
    sub = decode_sm(raw[16:])
    assert (sub.source_addr, sub.source_ton, sub.dest_addr, sub.dest_ton) == ("ACME", 5, "48600111222", 1)
    assert sub.udh is not None and (sub.udh["ref"], sub.udh["total"], sub.udh["seq"]) == (0x2A, 2, 1)
    assert sub.payload == b"Hi"
    assert sub.tlvs == {}


def test_submit_sm_with_sar_and_vendor_tlvs() -> None:
    part = SubmitPart(
        "ACME",
        5,
        0,
        "48600111222",
        short_message=b"x",
        tlvs={"sar_msg_ref_num": 0x1234, "sar_total_segments": 2, "sar_segment_seqnum": 1, "0x1403": b"v"},
    )
    raw = codec.encode_submit_sm(part)
    assert codec.decode_header(raw).length == len(raw)
    assert raw.endswith(tlv(0x1403, b"v"))
    assert decode_sm(raw[16:]).concat == (0x1234, 2, 1)
    parsed = parse(raw)  # smpplib skips the vendor TLV it does not know
    assert (parsed.sar_msg_ref_num, parsed.sar_total_segments, parsed.sar_segment_seqnum) == (0x1234, 2, 1)


def test_message_payload_instead_of_short_message() -> None:
    body = b"y" * 400
    raw = codec.encode_submit_sm(SubmitPart("ACME", 5, 0, "486", tlvs={"message_payload": body}))
    sub = decode_sm(raw[16:])
    assert sub.sm_length == 0
    assert sub.payload == body


def test_with_sequence_restamps_the_header() -> None:
    raw = codec.encode_submit_sm(SubmitPart("A", 5, 0, "486", short_message=b"x"))
    assert codec.decode_header(raw).sequence == 0
    again = codec.with_sequence(raw, 0x7FFFFFFF)
    assert codec.decode_header(again).sequence == 0x7FFFFFFF
    assert again[16:] == raw[16:] and again[:12] == raw[:12]


@pytest.mark.parametrize(("mode", "command_id"), [("transceiver", 9), ("transmitter", 2), ("receiver", 1)])
def test_bind_round_trips(mode: codec.BindMode, command_id: int) -> None:
    raw = codec.encode_bind(mode, 7, system_id="gw", password="secret", system_type="SMS")
    assert codec.decode_header(raw) == codec.Header(len(raw), command_id, 0, 7)
    parsed = parse(raw)
    assert parsed.command == f"bind_{mode}"
    assert (parsed.system_id, parsed.password, parsed.system_type) == (b"gw", b"secret", b"SMS")
    assert parsed.interface_version == 0x34


def test_bodyless_pdus_byte_for_byte() -> None:
    assert codec.encode_enquire_link(5) == pdu(0x00000015, 0, 5)
    assert codec.encode_unbind(6) == pdu(0x00000006, 0, 6)
    assert codec.encode_response("enquire_link_resp", 5) == pdu(0x80000015, 0, 5)
    assert codec.encode_response("unbind_resp", 6) == pdu(0x80000006, 0, 6)
    assert codec.encode_response("generic_nack", 8, 0x03) == pdu(0x80000000, 0x03, 8)
    # deliver_sm_resp / data_sm_resp: message_id is an empty C-Octet String (one NUL).
    assert codec.encode_response("deliver_sm_resp", 9, 0x64) == pdu(0x80000005, 0x64, 9, b"\0")
    assert codec.encode_response("data_sm_resp", 9) == pdu(0x80000103, 0, 9, b"\0")
    # Built once per (command, status): a later call still carries its own sequence and status.
    assert codec.encode_response("deliver_sm_resp", 77) == pdu(0x80000005, 0, 77, b"\0")
    assert codec.encode_response("deliver_sm_resp", 78, 0x64) == pdu(0x80000005, 0x64, 78, b"\0")
    assert codec.encode_response("generic_nack", 0x7FFFFFFF, 0x03) == pdu(0x80000000, 0x03, 0x7FFFFFFF)


@pytest.mark.parametrize(
    ("part", "field"),
    [
        (SubmitPart("A" * 21, 5, 0, "486"), "source_addr"),
        (SubmitPart("A", 5, 0, "4" * 21), "destination_addr"),
        (SubmitPart("Zażółć", 5, 0, "486"), "source_addr"),
        (SubmitPart("A", 5, 0, "486", short_message=b"x" * 255), "short_message"),
        (SubmitPart("A", 256, 0, "486"), "source_addr_ton"),
        (SubmitPart("A", 5, 0, "486", data_coding=-1), "data_coding"),
        (SubmitPart("A", 5, 0, "486", tlvs={"no_such_tlv": 1}), "no_such_tlv"),
        (SubmitPart("A", 5, 0, "486", tlvs={"receipted_message_id": "x"}), "receipted_message_id"),
        (SubmitPart("A", 5, 0, "486", tlvs={"0x1403": "not bytes"}), "0x1403"),
    ],
)
def test_submit_sm_encode_errors(part: SubmitPart, field: str) -> None:
    with pytest.raises(PduEncodeError) as info:
        codec.encode_submit_sm(part)
    assert (info.value.command, info.value.field) == ("submit_sm", field)


def test_smpplib_errors_become_encode_errors() -> None:
    part = SubmitPart("A", 5, 0, "486", short_message=b"x", tlvs={"message_payload": b"y"})
    with pytest.raises(PduEncodeError, match="message_payload"):
        codec.encode_submit_sm(part)
    with pytest.raises(PduEncodeError):
        codec.encode_submit_sm(SubmitPart("A", 5, 0, "486", tlvs={"sar_msg_ref_num": 1 << 20}))
    with pytest.raises(PduEncodeError):
        codec.encode_bind("transceiver", 1, system_id="x" * 16, password="")
    with pytest.raises(PduEncodeError):
        codec.encode_response("submit_sm_resp", 1)


# --------------------------------------------------------------------------- decoding


def test_decode_submit_sm_resp() -> None:
    gen = SequenceGenerator()
    ok = codec.decode(pdu(0x80000004, 0, 12, b"5A0F\0"), gen)
    assert ok == Pdu(0x80000004, "submit_sm_resp", 0, 12, message_id="5A0F")
    assert ok.is_response
    # §4.4.2: no body with an error status
    err = codec.decode(pdu(0x80000004, 0x58, 13), gen)
    assert err == Pdu(0x80000004, "submit_sm_resp", 0x58, 13)
    assert gen.sequence == 0  # parsing consumes no sequence number


def test_decode_requests_and_other_responses() -> None:
    gen = SequenceGenerator()
    assert codec.decode(pdu(0x00000015, 0, 3), gen) == Pdu(0x15, "enquire_link", 0, 3)
    assert codec.decode(pdu(0x00000006, 0, 4), gen) == Pdu(0x06, "unbind", 0, 4)
    assert codec.decode(pdu(0x80000000, 0x0B, 5), gen) == Pdu(0x80000000, "generic_nack", 0x0B, 5)
    bind_resp = codec.decode(pdu(0x80000009, 0, 1, b"SMSC\0" + tlv(0x0210, b"\x34")), gen)
    assert isinstance(bind_resp, Pdu)
    assert (bind_resp.command, bind_resp.system_id) == ("bind_transceiver_resp", "SMSC")
    failed_bind = codec.decode(pdu(0x80000002, 0x0D, 1), gen)
    assert isinstance(failed_bind, Pdu) and failed_bind.command_status == 0x0D
    # A response smpplib has no class for still decodes from its header (to match its request).
    assert codec.decode(pdu(0x80000007, 0, 9), gen) == Pdu(0x80000007, "replace_sm_resp", 0, 9)


def test_decode_deliver_sm_receipt_with_known_foreign_and_unknown_tlvs() -> None:
    text = b"id:5A0F sub:001 dlvrd:001 submit date:2611241200 done date:2611241201 stat:DELIVRD err:000"
    body = (
        deliver_body(text, esm_class=0x04)
        + tlv(0x001E, b"5A0F\0")  # receipted_message_id
        + tlv(0x0427, b"\x02")  # message_state
        + tlv(0x0423, b"\x03\x00\x01")  # network_error_code
        + tlv(0x1403, b"vendor")  # unknown to smpplib
        + tlv(0x0501, b"\x02")  # ussd_service_op: known to smpplib, not for deliver_sm
    )
    at = datetime(2026, 11, 24, 12, 1, tzinfo=UTC)
    gen = SequenceGenerator(100)
    message = codec.decode(pdu(0x00000005, 0, 77, body), gen, received_at=at)
    assert message == DeliverSm(
        sequence=77,
        service_type="",
        source_addr="48600111222",
        source_ton=1,
        source_npi=1,
        destination_addr="1234",
        dest_ton=0,
        dest_npi=1,
        esm_class=0x04,
        protocol_id=0x3F,
        data_coding=0,
        short_message=text,
        tlvs={
            "receipted_message_id": b"5A0F",
            "message_state": 2,
            "network_error_code": b"\x03\x00\x01",
            "0x1403": b"vendor",
            "ussd_service_op": b"\x02",
        },
        received_at=at,
        command="deliver_sm",
    )
    assert gen.sequence == 100


def test_decode_mo_with_udh_and_default_received_at() -> None:
    before = datetime.now(UTC)
    message = codec.decode(
        pdu(5, 0, 1, deliver_body(UDH + b"\x00\x41", esm_class=0x40, data_coding=8)), SequenceGenerator()
    )
    assert isinstance(message, DeliverSm)
    assert message.short_message == UDH + b"\x00\x41"
    assert (message.esm_class, message.data_coding, message.tlvs) == (0x40, 8, {})
    assert message.received_at >= before


def test_decode_data_sm() -> None:
    body = (b"\0" + bytes((1, 1)) + b"48600111222\0" + bytes((0, 1)) + b"1234\0" + bytes((0, 0, 8))) + tlv(
        0x0424, "cześć".encode("utf-16-be")
    )
    message = codec.decode(pdu(0x00000103, 0, 4, body), SequenceGenerator())
    assert isinstance(message, DeliverSm)
    assert message.command == "data_sm"
    assert (message.source_addr, message.destination_addr, message.data_coding) == ("48600111222", "1234", 8)
    assert message.short_message == b"" and message.protocol_id == 0
    assert message.tlvs == {"message_payload": "cześć".encode("utf-16-be")}


@pytest.mark.parametrize(
    ("raw", "nack_status"),
    [
        (b"\0\0\0\x10\0\0\0\x15", 0x08),  # short header
        (pdu(0x15, 0, 1)[:3] + b"\x0f" + pdu(0x15, 0, 1)[4:], 0x08),  # command_length 15
        (struct.pack(">IIII", 70000, 0x15, 0, 1), 0x08),  # command_length over 64 KiB
        (pdu(0x15, 0, 1) + b"x", 0x08),  # length mismatch
        (pdu(0x00000099, 0, 1), 0x03),  # unknown command id: ESME_RINVCMDID
        (pdu(0x00000007, 0, 1), 0x03),  # replace_sm: known id, not served
        (pdu(5, 0, 1, deliver_body(b"hi") + b"\x04\x27\x00"), 0xC0),  # truncated TLV header
        (pdu(5, 0, 1, deliver_body(b"hi") + tlv(0x0427, b"\x02")[:-1]), 0xC0),  # TLV overrun
        (pdu(5, 0, 1, b"\0\x01\x0148600"), 0x08),  # source_addr without NUL
    ],
)
def test_decode_errors(raw: bytes, nack_status: int) -> None:
    with pytest.raises(PduDecodeError) as info:
        codec.decode(raw, SequenceGenerator())
    assert info.value.nack_status == nack_status


def test_decode_error_carries_the_header() -> None:
    with pytest.raises(PduDecodeError) as info:
        codec.decode(pdu(0x00000099, 0, 31), SequenceGenerator())
    assert (info.value.command_id, info.value.sequence) == (0x99, 31)


# --------------------------------------------------------------------------- names and sequences


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (0x00, "ESME_ROK"),
        (0x0B, "ESME_RINVDSTADR"),
        (0x0D, "ESME_RBINDFAIL"),
        (0x14, "ESME_RMSGQFUL"),
        (0x58, "ESME_RTHROTTLED"),
        (0x64, "ESME_RX_T_APPN"),
        (0x400, "0x00000400"),
    ],
)
def test_status_names(status: int, name: str) -> None:
    assert codec.status_name(status) == name


def test_command_names() -> None:
    assert codec.command_name(0x80000004) == "submit_sm_resp"
    assert codec.command_name(0x12345) is None
    import smpplib.command_codes as codes  # type: ignore[import-untyped]

    for code in codes.commands.values():  # the same names as smpplib's own look-up
        assert codec.command_name(code) == codes.get_command_name(code)


def test_sequence_generator_wraps_to_one() -> None:
    gen = SequenceGenerator(0x7FFFFFFE)
    assert [gen.next_sequence() for _ in range(3)] == [0x7FFFFFFF, 1, 2]
    assert gen.sequence == 2


def test_udh_to_sar_moves_the_concatenation_ie_into_tlvs() -> None:
    from gateway.domain.udh import build_concat_udh
    from gateway.smpp.codec import udh_to_sar

    part = SubmitPart(
        source_addr="48500000001",
        source_ton=1,
        source_npi=1,
        destination_addr="48500100200",
        esm_class=0x40,
        data_coding=8,
        short_message=build_concat_udh(7, 3, 2) + b"\x00a",
    )
    sar = udh_to_sar(part)
    assert sar.esm_class == 0 and sar.short_message == b"\x00a"
    assert (sar.tlvs["sar_msg_ref_num"], sar.tlvs["sar_total_segments"], sar.tlvs["sar_segment_seqnum"]) == (
        7,
        3,
        2,
    )
    single = SubmitPart(source_addr="A", source_ton=5, source_npi=0, destination_addr="48500100200")
    assert udh_to_sar(single) is single
