"""Tests for gateway.domain.sms_text (3GPP TS 23.038 / 23.040 text codec)."""

from __future__ import annotations

import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.sms_text import (
    Encoding,
    Preview,
    SmsTextError,
    choose_encoding,
    decode_gsm7,
    decode_ucs2,
    encode_gsm7,
    encode_parts,
    encode_ucs2,
    is_gsm7,
    pack_septets,
    preview,
    split,
    unpack_septets,
)

GSM = Encoding.GSM7
UCS2 = Encoding.UCS2

# --- examples: the alphabet (23.038 §6.2.1) ------------------------------------------------

BASIC_SPOT_CHECKS = [
    (0x00, "@"),
    (0x01, "£"),
    (0x02, "$"),
    (0x03, "¥"),
    (0x09, "Ç"),
    (0x0A, "\n"),
    (0x0D, "\r"),
    (0x10, "\u0394"),
    (0x11, "_"),
    (0x15, "\u03a9"),
    (0x1A, "\u039e"),
    (0x1C, "Æ"),
    (0x1F, "É"),
    (0x24, "¤"),
    (0x40, "¡"),
    (0x5B, "Ä"),
    (0x5F, "§"),  # smpplib.gsm gets this one wrong
    (0x60, "¿"),
    (0x7B, "ä"),
    (0x7F, "à"),
]
EXTENSION = {
    0x0A: "\x0c",
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


@pytest.mark.parametrize(("code", "char"), BASIC_SPOT_CHECKS)
def test_basic_table_entries(code: int, char: str) -> None:
    assert encode_gsm7(char) == bytes([code])
    assert decode_gsm7(bytes([code])) == char


@pytest.mark.parametrize(("code", "char"), sorted(EXTENSION.items()))
def test_extension_table_entries(code: int, char: str) -> None:
    assert encode_gsm7(char) == bytes([0x1B, code])
    assert decode_gsm7(bytes([0x1B, code])) == char
    assert preview(char).chars == 2


def test_every_septet_decodes_and_round_trips() -> None:
    for b in range(128):
        if b == 0x1B:
            continue
        assert encode_gsm7(decode_gsm7(bytes([b]))) == bytes([b])


@pytest.mark.parametrize("char", ["ç", "ą", "ł", "ż", "`", "\t", "\x1b", "😀", "\u2126"])
def test_non_gsm_chars(char: str) -> None:
    # 'ç' is deliberately not folded into 0x09 'Ç'; Ω here is the Ohm sign U+2126, not Greek.
    assert not is_gsm7(char)
    assert choose_encoding("abc " + char) is UCS2
    with pytest.raises(SmsTextError) as info:
        encode_gsm7("ab" + char)
    assert info.value.char == char
    assert info.value.position == 2
    assert isinstance(info.value, ValueError)


def test_polish_and_cedilla_texts_are_ucs2() -> None:
    assert preview("Zażółć gęślą jaźń").encoding is UCS2
    assert preview("Ça va? ça va.").encoding is UCS2
    assert preview("Ça va?").encoding is GSM


def test_sms_text_error_pickles() -> None:
    err = SmsTextError("ą", 3)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.char, copy.position, str(copy)) == ("ą", 3, str(err))


def test_decode_gsm7_unknown_and_lone_escapes() -> None:
    assert decode_gsm7(b"\x1bA") == "A"  # unknown escape: basic-table char (23.038 §6.2.1.1)
    assert decode_gsm7(b"\x1b\x1bA") == " A"  # ESC ESC: reserved, displayed as a space
    assert decode_gsm7(b"ab\x1b") == "ab"  # lone trailing escape dropped
    assert decode_gsm7(b"") == ""


def test_decode_gsm7_rejects_high_bytes() -> None:
    with pytest.raises(SmsTextError) as info:
        decode_gsm7(b"ab\x80")
    assert info.value.position == 2


# --- examples: packing (23.038 §6.1.2.1) -----------------------------------------------------


def test_pack_known_vector() -> None:
    assert pack_septets(b"hellohello").hex().upper() == "E8329BFD4697D9EC37"
    assert unpack_septets(bytes.fromhex("E8329BFD4697D9EC37"), 10) == b"hellohello"


def test_pack_with_fill_bits() -> None:
    # One fill bit after a 6-octet UDH: the first septet starts at bit 1.
    assert pack_septets(b"\x7f", 1) == b"\xfe"
    assert pack_septets(b"\x01\x01", 6) == bytes([0x40, 0x20, 0x00])  # bits 6-12 and 13-19
    assert pack_septets(b"", 3) == b""


def test_pack_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fill_bits"):
        pack_septets(b"a", 7)
    with pytest.raises(SmsTextError):
        pack_septets(b"a\x80")
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_septets(b"\x00", 2)


# --- examples: splitting and preview --------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "parts", "left"), [(1, 1, 159), (160, 1, 0), (161, 2, 145), (306, 2, 0), (307, 3, 152)]
)
def test_gsm_part_counts(n: int, parts: int, left: int) -> None:
    text = "a" * n
    assert preview(text) == Preview(GSM, n, parts, left)
    assert len(split(text)) == parts


@pytest.mark.parametrize(
    ("n", "parts", "left"), [(1, 1, 69), (70, 1, 0), (71, 2, 63), (134, 2, 0), (135, 3, 66)]
)
def test_ucs2_part_counts(n: int, parts: int, left: int) -> None:
    text = "ą" * n
    assert preview(text) == Preview(UCS2, n, parts, left)
    assert len(split(text)) == parts


def test_empty_text() -> None:
    assert preview("") == Preview(GSM, 0, 0, 160)
    assert split("") == []
    assert encode_parts("") == (GSM, [])


def test_euro_counts_two_septets() -> None:
    assert preview("€") == Preview(GSM, 2, 1, 158)
    assert preview("a" * 158 + "€") == Preview(GSM, 160, 1, 0)
    p = preview("a" * 159 + "€")
    assert (p.encoding, p.chars, p.parts) == (GSM, 161, 2)


def test_escape_is_never_split_from_its_char() -> None:
    # 152 'a' + '€': the '€' would take units 153-154, so it moves whole to part 2.
    text = "a" * 152 + "€" + "b" * 10
    parts = split(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    _, payloads = encode_parts(text)
    assert payloads[0] == b"a" * 152
    assert payloads[1][:2] == b"\x1b\x65"
    p = preview(text)
    assert (p.chars, p.parts, p.chars_left_in_part) == (164, 2, 153 - 12)


def test_emoji_counts_two_units_and_pair_is_never_split() -> None:
    assert preview("😀") == Preview(UCS2, 2, 1, 68)
    text = "a" * 66 + "😀" + "b" * 10
    parts = split(text)
    assert parts == ["a" * 66, "😀" + "b" * 10]
    _, payloads = encode_parts(text)
    assert len(payloads[0]) == 132
    assert payloads[1][:4] == "😀".encode("utf-16-be")


def test_split_with_forced_encoding() -> None:
    assert split("abc", UCS2) == ["abc"]
    with pytest.raises(SmsTextError):
        split("ą", GSM)
    assert encode_parts("abc", UCS2) == (UCS2, [b"\x00a\x00b\x00c"])


def test_ucs2_lone_surrogates() -> None:
    assert decode_ucs2(b"\xd8\x3d\x00A") == "\ufffdA"
    assert decode_ucs2(b"\x00A\x00") == "A\ufffd"
    with pytest.raises(SmsTextError) as info:
        encode_ucs2("ab\ud83d")
    assert info.value.position == 2
    assert split("ab\ud83d") == ["ab\ud83d"]  # split and preview tolerate it
    assert preview("\ud83d").chars == 1


# --- properties -------------------------------------------------------------------------------

BASIC_CHARS = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡AZÄÖÑÜ§¿azäöñüà"
EXT_CHARS = "".join(EXTENSION.values())
POLISH = "ąćęłńóśźżĄĆĘŁŃÓŚŹŻ"
EMOJI = "😀👍🎉𝄞"

gsm_texts = st.text(alphabet=st.sampled_from(BASIC_CHARS + EXT_CHARS), max_size=700)
mixed_texts = st.one_of(
    gsm_texts,
    st.text(alphabet=st.sampled_from(BASIC_CHARS + EXT_CHARS + POLISH + EMOJI), max_size=400),
    st.text(max_size=400),
)


def _is_high_surrogate_unit(payload: bytes) -> bool:
    return len(payload) >= 2 and 0xD8 <= payload[-2] <= 0xDB


@given(mixed_texts)
def test_split_invariants(text: str) -> None:
    parts = split(text)
    p = preview(text)
    assert "".join(parts) == text
    assert len(parts) == p.parts
    assert all(parts)
    enc, payloads = encode_parts(text)
    assert enc is p.encoding
    assert len(payloads) == len(parts)
    width = 1 if enc is GSM else 2
    single, multi = (160, 153) if enc is GSM else (70, 67)
    limit = single if len(parts) <= 1 else multi
    for part, payload in zip(parts, payloads, strict=True):
        expected = encode_gsm7(part) if enc is GSM else encode_ucs2(part)
        assert payload == expected
        assert len(payload) <= limit * width
        if enc is GSM:
            assert not payload.endswith(b"\x1b")
        else:
            assert not _is_high_surrogate_unit(payload)
    assert p.chars == sum(len(pl) for pl in payloads) // width
    last_units = len(payloads[-1]) // width if payloads else 0
    assert p.chars_left_in_part == limit - last_units
    if len(parts) > 1:
        # Greedy packing: each non-final part was full enough that the next char didn't fit.
        for part, nxt in itertools.pairwise(parts):
            units = preview(part).chars if enc is GSM else len(encode_ucs2(part)) // 2
            next_units = preview(nxt[0]).chars if enc is GSM else len(encode_ucs2(nxt[0])) // 2
            assert units + next_units > multi


@given(gsm_texts)
def test_gsm_round_trip(text: str) -> None:
    assert is_gsm7(text)
    assert decode_gsm7(encode_gsm7(text)) == text


@given(st.text())
def test_ucs2_round_trip(text: str) -> None:
    assert decode_ucs2(encode_ucs2(text)) == text


@given(st.binary(max_size=400))
def test_decode_ucs2_never_raises(data: bytes) -> None:
    decode_ucs2(data)


@given(st.binary(max_size=400).map(lambda b: bytes(x & 0x7F for x in b)))
def test_decode_gsm7_never_raises_on_septets(data: bytes) -> None:
    text = decode_gsm7(data)
    assert is_gsm7(text)


@settings(max_examples=200)
@given(st.binary(max_size=300).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_pack_round_trip(septets: bytes, fill: int) -> None:
    packed = pack_septets(septets, fill)
    assert len(packed) == ((fill + 7 * len(septets) + 7) // 8 if septets else 0)
    assert unpack_septets(packed, len(septets), fill) == septets
