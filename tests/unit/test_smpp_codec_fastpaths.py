"""The codec's shortcuts around smpplib's object set-up give what smpplib's plain calls give:

- the send path's submit_sm builder (``_SubmitSmBuilder``): the bytes of ``make_pdu("submit_sm",
  ...).generate()`` for any part, one after another (a PDU built earlier leaves nothing behind);
- the deliver_sm/data_sm parser (``_parse_message``): what ``decode`` makes of any such PDU is what
  it made with ``parse_pdu``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import smpplib.smpp  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp import codec
from gateway.smpp.codec import SequenceGenerator
from gateway.smpp.errors import PduEncodeError
from gateway.smpp.types import SubmitPart

_ADDR = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
_OCTET = st.integers(0, 255)
# Optional parameters both submit_sm and deliver_sm/data_sm carry.
_SHARED_TLVS: dict[str, st.SearchStrategy[Any]] = {
    "user_message_reference": st.integers(0, 0xFFFF),
    "sar_msg_ref_num": st.integers(0, 0xFFFF),
    "sar_total_segments": _OCTET,
    "sar_segment_seqnum": _OCTET,
    "source_port": st.integers(0, 0xFFFF),
    "language_indicator": _OCTET,
}
_TLVS = st.fixed_dictionaries(
    {},
    optional={
        **_SHARED_TLVS,
        "destination_port": st.integers(0, 0xFFFF),
        "payload_type": _OCTET,
        "privacy_indicator": _OCTET,
        "ms_validity": _OCTET,
        "callback_num": st.binary(min_size=4, max_size=19),
        "its_session_info": st.integers(0, 0xFFFF),
    },
)


@st.composite
def parts(draw: st.DrawFn) -> SubmitPart:
    tlvs: dict[str, Any] = draw(_TLVS)
    if draw(st.booleans()):
        tlvs["message_payload"] = draw(st.binary(max_size=260))
        short = b""
    else:
        short = draw(st.binary(max_size=254))
    return SubmitPart(
        source_addr=draw(_ADDR),
        source_ton=draw(_OCTET),
        source_npi=draw(_OCTET),
        destination_addr=draw(_ADDR),
        esm_class=draw(_OCTET),
        data_coding=draw(_OCTET),
        short_message=short,
        registered_delivery=draw(_OCTET),
        tlvs=tlvs,
    )


def plain_pdu(command: str, sequence: int, fields: dict[str, Any]) -> bytes:
    """smpplib's bytes the plain way: ``make_pdu(...).generate()``."""
    pdu = smpplib.smpp.make_pdu(command, client=SequenceGenerator(), sequence=sequence, **fields)
    pdu.sequence = sequence
    return bytes(pdu.generate())


def smpplib_bytes(part: SubmitPart, sequence: int) -> bytes:
    """The fields encode_submit_sm hands smpplib, built the plain way."""
    fields, vendor = codec.submit_sm_fields(part)
    assert not vendor  # the strategy draws standard TLVs only
    return plain_pdu("submit_sm", sequence, fields)


@settings(max_examples=300, deadline=None)
@given(st.lists(parts(), min_size=1, max_size=4), st.integers(1, 0x7FFFFFFF))
def test_the_same_bytes_as_smpplibs_make_pdu(batch: list[SubmitPart], sequence: int) -> None:
    for part in batch:
        try:
            expected = smpplib_bytes(part, sequence)
        except Exception:
            try:
                codec.encode_submit_sm(part, sequence)
            except PduEncodeError:
                continue  # both refuse it
            raise AssertionError("smpplib refuses a part the builder encodes") from None
        assert codec.encode_submit_sm(part, sequence) == expected


_DELIVER_TLVS = st.fixed_dictionaries(
    {},
    optional={
        **_SHARED_TLVS,
        "receipted_message_id": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
        "message_state": _OCTET,
    },
)


@st.composite
def inbound_pdus(draw: st.DrawFn) -> bytes:
    command = draw(st.sampled_from(["deliver_sm", "data_sm"]))
    fields: dict[str, Any] = {
        "source_addr": draw(_ADDR),
        "destination_addr": draw(_ADDR),
        "source_addr_ton": draw(_OCTET),
        "dest_addr_ton": draw(_OCTET),
        "esm_class": draw(_OCTET),
        "data_coding": draw(_OCTET),
        **draw(_DELIVER_TLVS),
    }
    if command == "deliver_sm":
        fields["short_message"] = draw(st.binary(max_size=254))
    else:
        fields.pop("language_indicator", None)
        fields["message_payload"] = draw(st.binary(max_size=260))
    return plain_pdu(command, draw(st.integers(1, 0x7FFFFFFF)), fields)


_AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(st.lists(inbound_pdus(), min_size=1, max_size=4))
def test_inbound_messages_decode_as_with_parse_pdu(raws: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            codec,
            "_parse_message",
            lambda name, clean: smpplib.smpp.parse_pdu(
                clean, client=SequenceGenerator(), allow_unknown_opt_params=True
            ),
        )
        plain = [_outcome(raw) for raw in raws]
    assert [_outcome(raw) for raw in raws] == plain


def _outcome(raw: bytes) -> object:
    try:
        return codec.decode(raw, SequenceGenerator(), received_at=_AT)
    except Exception as exc:  # the same refusal both ways
        return (type(exc).__name__, str(exc))
