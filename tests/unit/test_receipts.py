"""Tests for gateway.domain.receipts (SMPP 3.4 delivery receipts, Appendix B)."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.receipts import (
    MessageIdType,
    Receipt,
    ReceiptError,
    ReceiptState,
    is_receipt,
    normalize_message_id,
    parse_receipt,
)
from gateway.services.delivery import _receipt_from_json, _receipt_json

DELIVERED, FAILED, INTERIM = ReceiptState.DELIVERED, ReceiptState.FAILED, ReceiptState.INTERIM
Tlvs = dict[str, int | bytes | str]
NO_TLVS: Tlvs = {}

# --- is_receipt -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("esm_class", "expected"),
    [
        (0x00, False),  # ordinary MO message
        (0x04, True),  # SMSC delivery receipt
        (0x44, True),  # ... with UDHI set
        (0x84, True),  # ... with reply path set
        (0x08, False),  # SME delivery acknowledgement
        (0x10, False),  # SME manual/user acknowledgement
        (0x18, False),  # conversation abort
        (0x20, True),  # intermediate delivery notification
        (0x40, False),  # MO with UDH
    ],
)
def test_is_receipt(esm_class: int, expected: bool) -> None:
    assert is_receipt(esm_class) is expected


# --- parse_receipt: the Appendix B text ---------------------------------------------------------

STANDARD = (
    b"id:0123456789 sub:001 dlvrd:001 submit date:2301011200 done date:2301011201 "
    b"stat:DELIVRD err:000 text:Hello world"
)


def test_standard_receipt() -> None:
    assert parse_receipt(STANDARD, NO_TLVS) == Receipt(
        message_id="0123456789",
        id_source="text",
        state=DELIVERED,
        stat="DELIVRD",
        reason=None,
        err="000",
        network_error=None,
        submit_date="2301011200",
        done_date="2301011201",
        text="Hello world",
    )
    assert parse_receipt(STANDARD, NO_TLVS).is_final


@pytest.mark.parametrize(
    ("stat", "state", "reason"),
    [
        ("DELIVRD", DELIVERED, None),
        ("EXPIRED", FAILED, "expired"),
        ("DELETED", FAILED, "deleted"),
        ("UNDELIV", FAILED, "undeliverable"),
        ("REJECTD", FAILED, "rejected"),
        ("UNKNOWN", FAILED, "unknown"),
        ("ACCEPTD", INTERIM, None),
        ("ENROUTE", INTERIM, None),
        ("BUFFRED", INTERIM, None),
        ("delivrd", DELIVERED, None),
        ("Undeliv", FAILED, "undeliverable"),
        ("WHATEVER", FAILED, "unknown"),  # unrecognised: failed, as Kannel does
    ],
)
def test_stat_words(stat: str, state: ReceiptState, reason: str | None) -> None:
    r = parse_receipt(f"id:42 sub:001 dlvrd:000 stat:{stat} err:000".encode(), NO_TLVS)
    assert (r.state, r.reason, r.stat) == (state, reason, stat.upper())
    assert r.is_final is (state is not INTERIM)


def test_undeliv_with_error_code() -> None:
    r = parse_receipt(b"id:7a3f01 sub:001 dlvrd:000 submit date:2401311015 done date:2401311016 "
                      b"stat:UNDELIV err:001 text:", NO_TLVS)  # fmt: skip
    assert (r.message_id, r.state, r.reason, r.err, r.text) == ("7a3f01", FAILED, "undeliverable", "001", "")


@pytest.mark.parametrize(
    "data",
    [
        # lower-case keys and 'Text:' capitalised, extra spaces
        b"id:12345  sub:001   dlvrd:001  submit date:2301011200 done date:2301011201  stat:DELIVRD  "
        b"err:000  Text:Hi",
        # upper-case keys, other order
        b"STAT:DELIVRD ID:12345 ERR:000 DONE DATE:2301011201 SUBMIT DATE:2301011200 SUB:001 DLVRD:001 "
        b"TEXT:Hi",
        # underscores / camel case in the date keys, commas as separators
        b"id:12345,submit_date:2301011200,doneDate:2301011201,stat:DELIVRD,err:000,text:Hi",
        # spaces before the colons
        b"id : 12345 submit date : 2301011200 done date : 2301011201 stat : DELIVRD err : 000 text : Hi",
        # trailing NUL (C string)
        b"id:12345 submit date:2301011200 done date:2301011201 stat:DELIVRD err:000 text:Hi\x00",
    ],
)
def test_format_variants(data: bytes) -> None:
    r = parse_receipt(data, NO_TLVS)
    assert (r.message_id, r.state, r.stat, r.err) == ("12345", DELIVERED, "DELIVRD", "000")
    assert (r.submit_date, r.done_date, r.text) == ("2301011200", "2301011201", "Hi")


def test_text_is_last_and_keeps_spaces_and_colons() -> None:
    r = parse_receipt(b"id:1 stat:DELIVRD err:000 text:Meet at 10:30 id:2 stat:UNDELIV", NO_TLVS)
    assert (r.message_id, r.state, r.text) == ("1", DELIVERED, "Meet at 10:30 id:2 stat:UNDELIV")


def test_missing_fields() -> None:
    r = parse_receipt(b"id:99 stat:EXPIRED", NO_TLVS)
    assert (r.message_id, r.state, r.reason) == ("99", FAILED, "expired")
    assert (r.err, r.submit_date, r.done_date, r.text) == (None, None, None, None)
    r = parse_receipt(b"id:99", NO_TLVS)  # no state anywhere
    assert (r.state, r.reason, r.stat) == (FAILED, "unknown", "")


def test_unknown_fields_do_not_leak_into_values() -> None:
    r = parse_receipt(
        b"id:5 msisdn:48600100200 submit date:2024-01-31 10:15:00 smsc:abc done date:2024-01-31 10:16:02 "
        b"stat:DELIVRD err:0",
        NO_TLVS,
    )
    assert (r.message_id, r.submit_date, r.done_date, r.err) == (
        "5",
        "2024-01-31 10:15:00",
        "2024-01-31 10:16:02",
        "0",
    )


def test_ucs2_and_latin1_receipts() -> None:
    text = "id:77 stat:DELIVRD err:000 text:zażółć"
    assert parse_receipt(text.encode("utf-16-be"), NO_TLVS).text == "zażółć"
    assert parse_receipt(text.encode("utf-8"), NO_TLVS).text == "zażółć"
    r = parse_receipt("id:77 stat:DELIVRD text:café".encode("latin-1"), NO_TLVS)
    assert (r.message_id, r.text) == ("77", "café")


# --- parse_receipt: TLVs ------------------------------------------------------------------------


def test_tlvs_only() -> None:
    tlvs: Tlvs = {"receipted_message_id": b"A1B2C3\x00", "message_state": 2}
    r = parse_receipt(b"", tlvs)
    assert (r.message_id, r.id_source, r.state, r.stat) == ("A1B2C3", "tlv", DELIVERED, "DELIVRD")


@pytest.mark.parametrize(
    ("value", "state", "reason", "stat"),
    [
        (1, INTERIM, None, "ENROUTE"),
        (2, DELIVERED, None, "DELIVRD"),
        (3, FAILED, "expired", "EXPIRED"),
        (4, FAILED, "deleted", "DELETED"),
        (5, FAILED, "undeliverable", "UNDELIV"),
        (6, INTERIM, None, "ACCEPTD"),
        (7, FAILED, "unknown", "UNKNOWN"),
        (8, FAILED, "rejected", "REJECTD"),
        (b"\x05", FAILED, "undeliverable", "UNDELIV"),
        ("3", FAILED, "expired", "EXPIRED"),
    ],
)
def test_message_state_values(
    value: int | bytes | str, state: ReceiptState, reason: str | None, stat: str
) -> None:
    r = parse_receipt(b"", {"receipted_message_id": "x1", "message_state": value})
    assert (r.state, r.reason, r.stat) == (state, reason, stat)


def test_tlvs_win_over_text() -> None:
    tlvs: Tlvs = {"receipted_message_id": "0x1F", "message_state": 3, "network_error_code": b"\x03\x00\x22"}
    r = parse_receipt(b"id:31 stat:DELIVRD err:000 text:hi", tlvs)
    assert (r.message_id, r.id_source) == ("0x1F", "tlv")
    assert (r.state, r.reason, r.stat) == (FAILED, "expired", "EXPIRED")
    assert r.network_error == (3, 0x22)
    assert (r.err, r.text) == ("000", "hi")  # the text still fills in the rest


def test_unknown_message_state_falls_back_to_text() -> None:
    r = parse_receipt(b"id:1 stat:UNDELIV", {"message_state": 0})
    assert (r.state, r.stat) == (FAILED, "UNDELIV")
    r = parse_receipt(b"id:1 stat:DELIVRD", {"message_state": 99, "receipted_message_id": b"\x00"})
    assert (r.message_id, r.id_source, r.state) == ("1", "text", DELIVERED)


def test_intermediate_notification_is_never_final() -> None:
    r = parse_receipt(b"id:1 stat:UNDELIV err:034", NO_TLVS, esm_class=0x20)
    assert (r.state, r.reason, r.stat, r.is_final) == (INTERIM, None, "UNDELIV", False)
    assert parse_receipt(b"id:1 stat:UNDELIV", NO_TLVS, esm_class=0x04).state is FAILED


@pytest.mark.parametrize(
    "data", [b"", b"stat:DELIVRD err:000", b"id: stat:DELIVRD", b"id:\x0b", b"hello", b"\x00\x00"]
)
def test_no_message_id_raises(data: bytes) -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(data, NO_TLVS)
    with pytest.raises(ReceiptError):
        parse_receipt(data, {"receipted_message_id": b"\x00", "message_state": 2})


# --- hex vs decimal ids: the same key -----------------------------------------------------------


@pytest.mark.parametrize(
    ("resp_id", "dlr", "id_type"),
    [
        # resp hex, receipt text decimal (the classic Kannel msg-id-type case)
        ("2F1A3C", b"id:3086908 sub:001 dlvrd:001 stat:DELIVRD err:000", "hex_resp_decimal_dlr"),
        ("2f1a3c", b"id:0003086908 stat:DELIVRD", "hex_resp_decimal_dlr"),
        # resp decimal, receipt hex
        ("3086908", b"id:2F1A3C stat:DELIVRD", "decimal_resp_hex_dlr"),
        ("00003086908", b"id:002f1a3c stat:DELIVRD", "decimal_resp_hex_dlr"),
        # hex in both, case and leading zeros differ
        ("00ABCDEF", b"id:abcdef stat:DELIVRD", "hex"),
        # decimal in both, leading zeros differ
        ("0000123", b"id:123 stat:DELIVRD", "decimal"),
        # opaque ids, case differs
        ("Msg-AbC-001", b"id:msg-abc-001 stat:DELIVRD", "as_is"),
    ],
)
def test_resp_and_receipt_ids_match(resp_id: str, dlr: bytes, id_type: str) -> None:
    receipt = parse_receipt(dlr, NO_TLVS)
    assert normalize_message_id(resp_id, id_type, source="resp") == normalize_message_id(
        receipt.message_id, id_type, source="dlr"
    )


# --- normalize_message_id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "id_type", "source", "key"),
    [
        ("  ABC-1 ", "as_is", "resp", "abc-1"),
        ("00FF", "hex", "resp", "255"),
        ("0x00ff", "hex", "dlr", "255"),
        ("0000", "hex", "dlr", "0"),
        ("000123", "decimal", "dlr", "123"),
        ("000", "decimal", "resp", "0"),
        ("FF", "hex_resp_decimal_dlr", "resp", "255"),
        ("0255", "hex_resp_decimal_dlr", "dlr", "255"),
        ("255", "decimal_resp_hex_dlr", "resp", "255"),
        ("ff", "decimal_resp_hex_dlr", "dlr", "255"),
        ("123\x00", "decimal", "dlr", "123"),
        # not parsable in the declared format: as_is fallback, never an error
        ("XYZ-1", "hex", "resp", "xyz-1"),
        ("12AB", "decimal", "dlr", "12ab"),
        ("-12", "decimal", "dlr", "-12"),
        ("1_000", "decimal", "dlr", "1_000"),
        ("١٢٣", "decimal", "dlr", "١٢٣"),  # non-ASCII digits are not decimal ids
        ("", "hex", "dlr", ""),
        ("F" * 2000, "hex", "dlr", "f" * 2000),  # absurdly long: no huge int conversion
    ],
)
def test_normalize_examples(raw: str, id_type: str, source: Literal["resp", "dlr"], key: str) -> None:
    assert normalize_message_id(raw, id_type, source=source) == key


def test_normalize_accepts_the_enum_and_rejects_bad_config() -> None:
    assert normalize_message_id("FF", MessageIdType.HEX, source="dlr") == "255"
    with pytest.raises(ValueError):
        normalize_message_id("1", "hexadecimal", source="dlr")


ID_TYPES = [t.value for t in MessageIdType]


@given(st.text(max_size=80), st.sampled_from(ID_TYPES), st.sampled_from(["resp", "dlr"]))
def test_normalize_never_raises_and_is_idempotent_for_as_is(
    raw: str, id_type: str, source: Literal["resp", "dlr"]
) -> None:
    key = normalize_message_id(raw, id_type, source=source)
    assert isinstance(key, str)
    as_is = normalize_message_id(raw, "as_is", source="dlr")
    assert normalize_message_id(as_is, "as_is", source="resp") == as_is


@given(st.integers(0, 2**64), st.integers(0, 5), st.booleans())
def test_hex_and_decimal_give_the_same_key(n: int, zeros: int, upper: bool) -> None:
    hex_id = "0" * zeros + (f"{n:X}" if upper else f"{n:x}")
    dec_id = "0" * zeros + str(n)
    key = str(n)
    assert normalize_message_id(hex_id, "hex_resp_decimal_dlr", source="resp") == key
    assert normalize_message_id(dec_id, "hex_resp_decimal_dlr", source="dlr") == key
    assert normalize_message_id(dec_id, "decimal_resp_hex_dlr", source="resp") == key
    assert normalize_message_id(hex_id, "decimal_resp_hex_dlr", source="dlr") == key
    assert normalize_message_id(hex_id, "hex", source="dlr") == key
    assert normalize_message_id(dec_id, "decimal", source="resp") == key


@given(st.from_regex(r"[A-Za-z0-9\-]{1,40}", fullmatch=True))
def test_as_is_is_case_insensitive(raw: str) -> None:
    assert normalize_message_id(raw.upper(), "as_is", source="resp") == normalize_message_id(
        raw.lower(), "as_is", source="dlr"
    )


# --- parse_receipt properties -------------------------------------------------------------------

tlv_values = st.one_of(st.integers(-(2**70), 2**70), st.binary(max_size=8), st.text(max_size=12))
tlv_maps = st.dictionaries(
    st.sampled_from(["receipted_message_id", "message_state", "network_error_code", "other"]),
    tlv_values,
    max_size=4,
)


@settings(max_examples=500)
@given(st.binary(max_size=300), tlv_maps, st.none() | st.integers(0, 255))
def test_parse_receipt_raises_only_receipt_error(data: bytes, tlvs: Tlvs, esm_class: int | None) -> None:
    try:
        r = parse_receipt(data, tlvs, esm_class=esm_class)
    except ReceiptError:
        return
    assert r.message_id
    assert isinstance(r.state, ReceiptState)
    assert (r.reason is not None) is (r.state is FAILED)


FIELDS = {
    "sub": st.from_regex(r"[0-9]{3}", fullmatch=True),
    "dlvrd": st.from_regex(r"[0-9]{3}", fullmatch=True),
    "submit date": st.from_regex(r"[0-9]{10}", fullmatch=True),
    "done date": st.from_regex(r"[0-9]{10}", fullmatch=True),
    "stat": st.sampled_from(["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "ACCEPTD", "ENROUTE", "DELETED"]),
    "err": st.from_regex(r"[0-9]{3}", fullmatch=True),
}


@st.composite
def receipt_texts(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    values = {"id": draw(st.from_regex(r"[0-9A-Fa-f]{1,20}", fullmatch=True))}
    for key, strategy in FIELDS.items():
        if draw(st.booleans()):
            values[key] = draw(strategy)
    keys = draw(st.permutations(list(values)))
    sep = draw(st.sampled_from([" ", "  ", ", ", ";"]))
    items = [f"{draw(st.sampled_from([k, k.upper(), k.title()]))}:{values[k]}" for k in keys]
    if draw(st.booleans()):
        values["text"] = draw(st.text(alphabet="abc :xyz0123", max_size=20)).strip()
        items.append(f"{draw(st.sampled_from(['text', 'Text', 'TEXT']))}:{values['text']}")
    return sep.join(items), values


@given(receipt_texts())
def test_parse_receipt_finds_every_field(case: tuple[str, dict[str, str]]) -> None:
    text, values = case
    r = parse_receipt(text.encode(), NO_TLVS)
    assert r.message_id == values["id"]
    assert r.stat == values.get("stat", "")
    assert r.err == values.get("err")
    assert r.submit_date == values.get("submit date")
    assert r.done_date == values.get("done date")
    assert r.text == values.get("text")


def test_as_is_strips_nuls_and_whitespace_in_any_mix() -> None:
    # Found by the property above: one kind of strip after the other left "0\x00".
    assert normalize_message_id("0\x00\x1f", "as_is", source="resp") == "0"
    assert normalize_message_id("\x1f\x00 AbC\x00\u2003\x00", "as_is", source="dlr") == "abc"


# --- a parked receipt's stored form -----------------------------------------------------------

_opt_text = st.none() | st.text(max_size=20)


@given(
    st.builds(
        Receipt,
        message_id=st.text(min_size=1, max_size=20),
        id_source=st.sampled_from(["tlv", "text"]),
        state=st.sampled_from(list(ReceiptState)),
        stat=st.text(max_size=8),
        reason=_opt_text,
        err=_opt_text,
        network_error=st.none() | st.tuples(st.integers(0, 255), st.integers(0, 65535)),
        submit_date=_opt_text,
        done_date=_opt_text,
        text=_opt_text,
    )
)
def test_a_parked_receipt_comes_back_from_its_json_unchanged(receipt: Receipt) -> None:
    """Parked receipts are stored as JSON and rebuilt when their part's id arrives."""
    assert _receipt_from_json(json.loads(json.dumps(_receipt_json(receipt)))) == receipt
