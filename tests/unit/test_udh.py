"""Tests for gateway.domain.udh (3GPP TS 23.040 §9.2.3.24 User Data Header)."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.sms_text import (
    Encoding,
    SmsTextError,
    decode_gsm7,
    decode_ucs2,
    encode_parts,
    preview,
    split,
)
from gateway.domain.udh import (
    Concat,
    ReferenceCounter,
    Udh,
    UdhError,
    build_concat_udh,
    concat_parts,
    parse_sar,
    split_udh,
)

GSM = Encoding.GSM7
UCS2 = Encoding.UCS2
POLISH_200 = ("ąćęłńóśźż" * 23)[:200]  # 200 UTF-16 units: 3 parts of 67 + 67 + 66


def _payload_bits_ok(short_message: bytes, enc: Encoding, udh_octets: int) -> bool:
    """23.040 §9.2.3.24: UDH + user data fit 140 octets (1120 bits) on the air."""
    payload_len = len(short_message) - udh_octets
    if enc is GSM:
        return udh_octets * 8 + payload_len * 7 <= 1120
    return udh_octets + payload_len <= 140


# --- build_concat_udh / split_udh examples ---------------------------------------------------


def test_build_8bit() -> None:
    assert build_concat_udh(0xAB, 3, 1) == b"\x05\x00\x03\xab\x03\x01"


def test_build_16bit() -> None:
    assert build_concat_udh(0x1234, 2, 2, ref_bits=16) == b"\x06\x08\x04\x12\x34\x02\x02"


@pytest.mark.parametrize(
    ("ref", "total", "seq", "bits"),
    [
        (256, 2, 1, 8),
        (-1, 2, 1, 8),
        (65536, 2, 1, 16),
        (1, 0, 0, 8),
        (1, 2, 0, 8),
        (1, 2, 3, 8),
        (1, 256, 1, 8),
        (1, 2, 1, 7),
        (1, 2, 1, 32),
    ],
)
def test_build_rejects_bad_arguments(ref: int, total: int, seq: int, bits: int) -> None:
    with pytest.raises(UdhError):
        build_concat_udh(ref, total, seq, bits)


def test_split_8bit_concat() -> None:
    udh, payload = split_udh(b"\x05\x00\x03\x2a\x02\x01hello")
    assert udh == Udh(concat=Concat(ref=0x2A, total=2, seq=1, ref_bits=8), other=())
    assert payload == b"hello"


def test_split_16bit_concat_with_other_ies_kept_in_order() -> None:
    # port addressing 16-bit (IEI 0x05) before and a 0x24 (national language) after
    data = b"\x0f\x05\x04\x0b\x84\x23\xf0\x08\x04\x01\x02\x03\x01\x24\x01\x0dabc"
    udh, payload = split_udh(data)
    assert udh.concat == Concat(ref=0x0102, total=3, seq=1, ref_bits=16)
    assert udh.other == ((0x05, b"\x0b\x84\x23\xf0"), (0x24, b"\x0d"))
    assert payload == b"abc"


def test_split_empty_udh_and_empty_payload() -> None:
    assert split_udh(b"\x00xyz") == (Udh(None, ()), b"xyz")
    assert split_udh(b"\x05\x00\x03\x01\x01\x01") == (Udh(Concat(1, 1, 1, 8), ()), b"")


def test_last_concat_ie_wins() -> None:
    data = b"\x0b" + b"\x00\x03\x01\x02\x01" + b"\x08\x04\x00\x07\x05\x04" + b"!"
    udh, payload = split_udh(data)
    assert udh.concat == Concat(ref=7, total=5, seq=4, ref_bits=16)
    assert payload == b"!"
    udh, _ = split_udh(b"\x0a\x00\x03\x01\x02\x01\x00\x03\x09\x02\x02")
    assert udh.concat == Concat(ref=9, total=2, seq=2, ref_bits=8)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no UDHL
        b"\x05\x00\x03\x01\x02",  # UDHL beyond data
        b"\x01\x00",  # IE header cut by UDHL
        b"\x03\x00\x03\x01\x02\x01",  # IE length beyond UDHL
        b"\x05\x00\x03\x01\x00\x00",  # total 0
        b"\x05\x00\x03\x01\x02\x00",  # seq 0
        b"\x05\x00\x03\x01\x02\x03",  # seq > total
        b"\x04\x00\x02\x01\x02",  # 8-bit concat IE with the wrong length
        b"\x05\x08\x03\x01\x02\x01",  # 16-bit concat IE with the wrong length
    ],
)
def test_split_rejects_malformed(data: bytes) -> None:
    with pytest.raises(UdhError) as info:
        split_udh(data)
    assert info.value.reason == str(info.value)


def test_udh_error_pickles() -> None:
    err = UdhError("broken")
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, UdhError)
    assert copy.reason == "broken"


def test_concat_validates() -> None:
    with pytest.raises(UdhError):
        Concat(ref=1, total=2, seq=3, ref_bits=8)


# --- SAR TLVs ---------------------------------------------------------------------------------


def test_parse_sar() -> None:
    tlvs: dict[str, int | bytes] = {
        "sar_msg_ref_num": 0x1234,
        "sar_total_segments": 3,
        "sar_segment_seqnum": 2,
    }
    assert parse_sar(tlvs) == Concat(ref=0x1234, total=3, seq=2, ref_bits=16)
    raw: dict[str, int | bytes] = {
        "sar_msg_ref_num": b"\x00\x07",
        "sar_total_segments": b"\x02",
        "sar_segment_seqnum": b"\x01",
    }
    assert parse_sar(raw) == Concat(ref=7, total=2, seq=1, ref_bits=16)


def test_parse_sar_missing_any_gives_none() -> None:
    full: dict[str, int | bytes] = {"sar_msg_ref_num": 1, "sar_total_segments": 3, "sar_segment_seqnum": 2}
    assert parse_sar({}) is None
    for name in full:
        assert parse_sar({k: v for k, v in full.items() if k != name}) is None


@pytest.mark.parametrize(
    "tlvs",
    [
        {"sar_msg_ref_num": 1, "sar_total_segments": 0, "sar_segment_seqnum": 0},
        {"sar_msg_ref_num": 1, "sar_total_segments": 2, "sar_segment_seqnum": 3},
        {"sar_msg_ref_num": 70000, "sar_total_segments": 2, "sar_segment_seqnum": 1},
        {"sar_msg_ref_num": b"\x01", "sar_total_segments": 2, "sar_segment_seqnum": 1},
        {"sar_msg_ref_num": 1, "sar_total_segments": 256, "sar_segment_seqnum": 1},
    ],
)
def test_parse_sar_rejects_bad_values(tlvs: dict[str, int | bytes]) -> None:
    with pytest.raises(UdhError):
        parse_sar(tlvs)


# --- ReferenceCounter -------------------------------------------------------------------------


def test_reference_counter_rotates_per_destination() -> None:
    counter = ReferenceCounter(random.Random(1))
    a0, b0 = counter.next("+48600000001"), counter.next("+48600000002")
    got = [(counter.next("+48600000001"), counter.next("+48600000002")) for _ in range(300)]
    assert got == [((a0 + i) % 256, (b0 + i) % 256) for i in range(1, 301)]  # wraps past 255


def test_reference_counter_starts_at_injected_random_offset() -> None:
    expected = random.Random(42).randrange(256)
    assert ReferenceCounter(random.Random(42)).next("x") == expected
    assert ReferenceCounter(random.Random(42), bits=16).next("x") == random.Random(42).randrange(65536)


def test_reference_counter_is_bounded_lru() -> None:
    counter = ReferenceCounter(random.Random(0), max_destinations=2)
    a = counter.next("a")
    counter.next("b")
    assert counter.next("a") == (a + 1) % 256  # "a" is now the most recent
    counter.next("c")  # evicts "b"
    assert len(counter) == 2
    assert counter.next("a") == (a + 2) % 256
    with pytest.raises(ValueError):
        ReferenceCounter(max_destinations=0)
    with pytest.raises(ValueError):
        ReferenceCounter(bits=12)


@given(st.lists(st.sampled_from("abcdef"), max_size=200), st.integers(1, 4))
def test_reference_counter_properties(destinations: list[str], size: int) -> None:
    bounded = ReferenceCounter(random.Random(7), max_destinations=size)
    for d in destinations:
        assert 0 <= bounded.next(d) < 256
        assert len(bounded) <= size
    # With room for every destination, each one rotates by exactly one per call.
    roomy = ReferenceCounter(random.Random(7), max_destinations=10)
    prev: dict[str, int] = {}
    for d in destinations:
        ref = roomy.next(d)
        if d in prev:
            assert ref == (prev[d] + 1) % 256
        prev[d] = ref


# --- concat_parts examples --------------------------------------------------------------------


def test_single_part_has_no_udh() -> None:
    assert concat_parts("hello", ref=5) == (GSM, [b"hello"])
    assert concat_parts("zażółć", ref=5) == (UCS2, ["zażółć".encode("utf-16-be")])
    assert concat_parts("a" * 160, ref=5)[1] == [b"a" * 160]
    assert concat_parts("", ref=5) == (GSM, [])


def test_polish_200_chars_gives_three_ucs2_parts() -> None:
    assert len(POLISH_200) == 200
    enc, parts = concat_parts(POLISH_200, ref=0x5A)
    assert enc is UCS2
    assert len(parts) == 3
    texts = []
    for seq, sm in enumerate(parts, 1):
        assert sm[:6] == bytes((5, 0, 3, 0x5A, 3, seq))
        udh, payload = split_udh(sm)
        assert udh.concat == Concat(ref=0x5A, total=3, seq=seq, ref_bits=8)
        assert len(sm) <= 140
        texts.append(decode_ucs2(payload))
        assert _payload_bits_ok(sm, UCS2, 6)
    assert [len(t) for t in texts] == [67, 67, 66]
    assert "".join(texts) == POLISH_200


def test_polish_200_chars_with_16bit_ref() -> None:
    enc, parts = concat_parts(POLISH_200, ref=0xBEEF, ref_bits=16)
    assert enc is UCS2
    assert [len(p) for p in parts] == [7 + 132] * 3 + [7 + 4]  # 66 + 66 + 66 + 2 units
    for seq, sm in enumerate(parts, 1):
        assert sm[:7] == bytes((6, 8, 4, 0xBE, 0xEF, 4, seq))
        assert len(sm) <= 140
    assert "".join(decode_ucs2(split_udh(p)[1]) for p in parts) == POLISH_200


def test_gsm_euro_at_a_part_boundary() -> None:
    # The '€' (ESC + 0x65) would take septets 153-154 of part 1, so it moves to part 2.
    text = "a" * 152 + "€" + "b" * 20
    enc, parts = concat_parts(text, ref=1)
    assert enc is GSM
    assert parts[0] == b"\x05\x00\x03\x01\x02\x01" + b"a" * 152
    assert parts[1] == b"\x05\x00\x03\x01\x02\x02" + b"\x1b\x65" + b"b" * 20
    # With a 16-bit ref a part holds 152 septets: '€' at 152-153 moves as well.
    text16 = "a" * 151 + "€" + "b" * 20
    _, parts16 = concat_parts(text16, ref=1, ref_bits=16)
    assert split_udh(parts16[0])[1] == b"a" * 151
    assert split_udh(parts16[1])[1][:2] == b"\x1b\x65"


def test_gsm_part_sizes_for_16bit_refs() -> None:
    _, parts = concat_parts("x" * 305, ref=9, ref_bits=16)
    assert [len(split_udh(p)[1]) for p in parts] == [152, 152, 1]
    _, parts8 = concat_parts("x" * 305, ref=9)
    assert [len(split_udh(p)[1]) for p in parts8] == [153, 152]


def test_sms_text_udh_octets_keyword() -> None:
    assert len(split("a" * 306)) == 2
    assert len(split("a" * 306, udh_octets=7)) == 3
    assert preview("ą" * 135, udh_octets=7).chars_left_in_part == 66 * 3 - 135
    assert encode_parts("ą" * 71, udh_octets=7)[1][0] == "ą".encode("utf-16-be") * 66
    with pytest.raises(ValueError):
        split("a", udh_octets=5)


def test_concat_parts_errors() -> None:
    with pytest.raises(UdhError):
        concat_parts("hi", ref=256)
    with pytest.raises(UdhError):
        concat_parts("hi", ref=1, ref_bits=12)
    with pytest.raises(UdhError):
        concat_parts("a" * (153 * 255 + 1), ref=1)
    assert len(concat_parts("a" * (153 * 255), ref=1)[1]) == 255
    with pytest.raises(SmsTextError):
        concat_parts("ą", ref=1, encoding=GSM)
    assert concat_parts("abc", ref=1, encoding=UCS2) == (UCS2, [b"\x00a\x00b\x00c"])


# --- properties -------------------------------------------------------------------------------

GSM_CHARS = "@£$¥èéÇ\nØ\rÅΔ_ΦΓΩ !\"#%&'()*+,-./0123456789:;<=>?¡AZÄÖÑÜ§¿azäöñüà^{}\\[~]|€\x0c"
texts = st.one_of(
    st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=800),
    st.text(alphabet=st.sampled_from(GSM_CHARS + "ąćęłńóśźż😀👍"), max_size=400),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400),
)


@given(
    st.integers(0, 65535),
    st.integers(1, 255).flatmap(lambda t: st.tuples(st.just(t), st.integers(1, t))),
    st.sampled_from([8, 16]),
    st.binary(max_size=140),
)
def test_build_split_round_trip(ref: int, total_seq: tuple[int, int], bits: int, payload: bytes) -> None:
    ref &= (1 << bits) - 1
    total, seq = total_seq
    udh, rest = split_udh(build_concat_udh(ref, total, seq, bits) + payload)
    assert udh == Udh(Concat(ref, total, seq, bits), ())
    assert rest == payload


@settings(max_examples=500)
@given(st.binary(max_size=160))
def test_split_udh_raises_only_udh_error(data: bytes) -> None:
    try:
        udh, payload = split_udh(data)
    except UdhError:
        return
    assert data.endswith(payload)
    assert len(payload) == len(data) - 1 - data[0]
    assert all(0 <= iei <= 255 for iei, _ in udh.other)


@settings(max_examples=300)
@given(texts, st.integers(0, 65535), st.sampled_from([8, 16]))
def test_concat_parts_join_back_and_fit(text: str, ref: int, bits: int) -> None:
    ref &= (1 << bits) - 1
    enc, parts = concat_parts(text, ref=ref, ref_bits=bits)
    if not text:
        assert parts == []
        return
    decode = decode_gsm7 if enc is GSM else decode_ucs2
    if len(parts) == 1:
        assert decode(parts[0]) == text
        assert _payload_bits_ok(parts[0], enc, 0)
        return
    udh_octets = 6 if bits == 8 else 7
    pieces = []
    for seq, sm in enumerate(parts, 1):
        udh, payload = split_udh(sm)
        assert udh.concat == Concat(ref, len(parts), seq, bits)
        assert udh.other == ()
        assert len(sm) - len(payload) == udh_octets
        assert _payload_bits_ok(sm, enc, udh_octets)  # for UCS-2: len(sm) <= 140
        pieces.append(decode(payload))
    assert "".join(pieces) == text
