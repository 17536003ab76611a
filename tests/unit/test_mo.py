"""Tests for gateway.domain.mo and gateway.domain.threading: MO decoding (SMPP 3.4 §5.2.19, 3GPP TS
23.038 §4), UDH/SAR parsing (23.040 §9.2.3.24, SMPP 3.4 §5.3.2.22-24), keywords, routing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.domain.mo import (
    DEFAULT_KEYWORDS,
    KeywordProblem,
    Keywords,
    check_keywords,
    classify,
    decode_payload,
    decode_segments,
    fingerprint,
    is_resend,
    keywords_from_json,
    match_keyword,
    msisdn_to_e164,
    split_mo,
)
from gateway.domain.policy import Deny
from gateway.domain.sms_text import encode_gsm7, encode_ucs2, is_gsm7
from gateway.domain.threading import SmsAssignment, SmsReply, route_sms_reply
from gateway.domain.udh import Concat, build_concat_udh

GSM_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà^{}\\[~]|€"
)
gsm_text = st.text(alphabet=GSM_CHARS, max_size=400)
# Any text a UTF-16 string can carry (no lone surrogates): astral characters included.
unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({min(p, len(data)) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- decoding ----------------------------------------------------------------------------------


@given(gsm_text, st.sampled_from([0x00, 0x10, 0x11, 0xF0, 0xF3, 0xC0, 0xD1, 0x40]))
def test_gsm7_round_trips_for_every_gsm_coding(text: str, data_coding: int) -> None:
    assert is_gsm7(text)
    decoded = decode_payload(encode_gsm7(text), data_coding)
    assert (decoded.text, decoded.encoding, decoded.note) == (text, "gsm7", None)


@given(unicode_text, st.sampled_from([0x08, 0x18, 0x19, 0xE0, 0x48]))
def test_ucs2_round_trips_with_surrogate_pairs(text: str, data_coding: int) -> None:
    decoded = decode_payload(encode_ucs2(text), data_coding)
    assert (decoded.text, decoded.encoding, decoded.note) == (text, "ucs2", None)


@given(unicode_text, st.lists(st.integers(0, 700), max_size=4))
def test_parts_are_joined_as_octets_before_decoding_ucs2(text: str, points: list[int]) -> None:
    # A phone may cut between the two halves of a surrogate pair: joining first keeps the character.
    chunks = cuts(encode_ucs2(text), points)
    assert decode_segments([chunks], 0x08).text == text


@given(gsm_text, st.lists(st.integers(0, 500), max_size=4))
def test_parts_are_joined_as_octets_before_decoding_gsm7(text: str, points: list[int]) -> None:
    # ... or between an escape (0x1B) and its extension code (23.038 §6.2.1.1).
    chunks = cuts(encode_gsm7(text), points)
    assert decode_segments([chunks], 0x00).text == text


@given(st.binary(max_size=300), st.sampled_from([0x02, 0x04, 0xF4, 0xF7, 0x14, 0x05, 0x0B, 0x24, 0x80]))
def test_eight_bit_data_is_kept_as_bytes_with_a_note(data: bytes, data_coding: int) -> None:
    decoded = decode_payload(data, data_coding)
    assert decoded.encoding == "binary"
    assert bytes.fromhex(decoded.text) == data  # lossless
    assert decoded.note is not None and f"{len(data)} octets kept as hex" in decoded.note


@given(st.binary(max_size=200))
def test_default_alphabet_with_8_bit_octets_never_fails(data: bytes) -> None:
    assume(not data.isascii())
    decoded = decode_payload(data, 0x00)
    assert decoded.encoding == "gsm7" and decoded.note is not None
    try:
        assert decoded.text == data.decode("utf-8") and "UTF-8" in decoded.note
    except UnicodeDecodeError:
        assert decoded.text == data.decode("latin-1") and "Latin-1" in decoded.note


def test_named_charsets() -> None:
    assert decode_payload("Zażółć".encode(), 0x00).text == "Zażółć"  # an SMSC sending UTF-8
    assert decode_payload(b"caf\xe9", 0x03) == decode_payload(b"caf\xe9", 0x03)
    assert decode_payload(b"caf\xe9", 0x03).text == "café"
    assert decode_payload("Привет".encode("iso8859_5"), 0x06).text == "Привет"
    assert decode_payload(b"Hello", 0x01).text == "Hello"
    assert classify(0x20) == ("binary", "compressed user data (3GPP TS 23.038 §4)")
    assert classify(0x0C)[0] == "binary" and classify(0x9F)[0] == "binary"  # reserved
    odd = decode_payload(b"\x00A\xd8", 0x08)  # odd length: the stray octet is U+FFFD, with a note
    assert odd.text == "A\ufffd" and odd.note is not None


def test_segments_with_a_gap_are_decoded_apart() -> None:
    a, b = encode_ucs2("ab"), encode_ucs2("cd")
    assert decode_segments([[a], [b]], 0x08).text == "abcd"
    assert decode_segments([[b"\x01"], [b"\x02"]], 0x04).text == "01 02"
    assert decode_segments([], 0x00).text == ""


# --- UDH and SAR -------------------------------------------------------------------------------

other_ie = st.tuples(st.sampled_from([0x24, 0x25, 0x05, 0x0A, 0x70]), st.binary(max_size=6)).map(
    lambda t: bytes((t[0], len(t[1]))) + t[1]
)


@given(
    st.integers(2, 255).flatmap(lambda total: st.tuples(st.just(total), st.integers(1, total))),
    st.sampled_from([8, 16]),
    st.integers(0, 65535),
    st.lists(other_ie, max_size=2),
    st.lists(other_ie, max_size=2),
    st.binary(max_size=140),
)
def test_split_mo_reads_the_concatenation_ie_among_others(
    total_seq: tuple[int, int], bits: int, ref: int, before: list[bytes], after: list[bytes], payload: bytes
) -> None:
    total, seq = total_seq
    ref %= 1 << bits
    ie = build_concat_udh(ref, total, seq, bits)[1:]  # without its UDHL
    body = b"".join(before) + ie + b"".join(after)
    part = split_mo(bytes((len(body),)) + body + payload, 0x40, {})
    assert part == type(part)(Concat(ref, total, seq, bits), payload, None)


@given(
    st.integers(2, 255).flatmap(lambda total: st.tuples(st.just(total), st.integers(1, total))),
    st.integers(0, 65535),
    st.booleans(),
    st.binary(max_size=140),
)
def test_sar_tlvs_take_the_same_path(total_seq: tuple[int, int], ref: int, raw: bool, payload: bytes) -> None:
    total, seq = total_seq
    tlvs: dict[str, int | bytes] = {
        "sar_msg_ref_num": ref,
        "sar_total_segments": total,
        "sar_segment_seqnum": seq,
    }
    if raw:
        tlvs = {
            "sar_msg_ref_num": ref.to_bytes(2, "big"),
            "sar_total_segments": bytes((total,)),
            "sar_segment_seqnum": bytes((seq,)),
        }
    assert split_mo(payload, 0x00, tlvs).concat == Concat(ref, total, seq, 16)


@given(st.binary(max_size=160), st.integers(0, 255))
def test_split_mo_never_raises_and_never_loses_the_text(data: bytes, esm_class: int) -> None:
    part = split_mo(data, esm_class, {})
    assert data.endswith(part.payload)
    if part.concat is None and esm_class & 0x40 and part.note is not None:
        assert "malformed user data header" in part.note


def test_malformed_headers_are_ignored_with_a_note() -> None:
    overrun = split_mo(b"\x09\x00\x03\x01", 0x40, {})
    assert overrun.concat is None and overrun.payload == b"\x09\x00\x03\x01" and overrun.note
    bad_seq = split_mo(b"\x05\x00\x03\x01\x02\x00hi", 0x40, {})  # seq 0: 23.040 says ignore the IE
    assert bad_seq.concat is None and bad_seq.payload == b"hi" and bad_seq.note
    single = split_mo(b"\x05\x00\x03\x01\x01\x01hi", 0x40, {})  # 1 of 1: a message of its own
    assert single == type(single)(None, b"hi", None)
    bad_sar = split_mo(b"hi", 0, {"sar_msg_ref_num": 1, "sar_total_segments": 2, "sar_segment_seqnum": 3})
    assert bad_sar.concat is None and bad_sar.note and "SAR" in bad_sar.note


# --- fingerprints and addresses ----------------------------------------------------------------


@given(st.binary(max_size=50), st.binary(max_size=50))
def test_fingerprints_tell_payloads_apart(a: bytes, b: bytes) -> None:
    fa = fingerprint("+48500100200", "+48500000001", 0, 0, a, {})
    assert fa == fingerprint("+48500100200", "+48500000001", 0, 0, a, {})
    assert (fa == fingerprint("+48500100200", "+48500000001", 0, 0, b, {})) == (a == b)


def test_fingerprint_fields() -> None:
    base = fingerprint("+1", "+2", 0, 0, b"x", {})
    assert base != fingerprint("+12", "", 0, 0, b"x", {})  # length-prefixed: no ambiguity
    assert base != fingerprint("+1", "+2", 0x40, 0, b"x", {})
    assert base != fingerprint("+1", "+2", 0, 8, b"x", {})
    assert base != fingerprint("+1", "+2", 0, 0, b"x", {"user_message_reference": 7})
    assert base == fingerprint("+1", "+2", 0, 0, b"x", {"some_other_tlv": 1})


@given(st.integers(-3600, 3 * 86400), st.booleans())
def test_only_an_unanswered_deliver_sm_within_the_window_is_a_resend(age_s: int, answered: bool) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    window = timedelta(hours=24)
    got = is_resend(seen_at=now - timedelta(seconds=age_s), answered=answered, now=now, window=window)
    assert got == (not answered and age_s <= 86400)


@given(st.from_regex(r"[1-9][0-9]{6,14}", fullmatch=True))
def test_international_numbers_become_e164(digits: str) -> None:
    assert msisdn_to_e164(digits, 1) == "+" + digits
    assert msisdn_to_e164("+" + digits, 1) == "+" + digits
    assert msisdn_to_e164(digits, 0) == "+" + digits
    assert msisdn_to_e164("00" + digits, 0) == "+" + digits
    assert msisdn_to_e164(digits, 2) is None  # national: needs a numbering plan (the service has one)
    assert msisdn_to_e164(digits, 5) is None


def test_non_numbers() -> None:
    assert msisdn_to_e164("SERWIS", 5) is None
    assert msisdn_to_e164("SERWIS", 0) is None
    assert msisdn_to_e164("", 1) is None
    assert msisdn_to_e164("4" * 16, 1) is None  # E.164 has at most 15 digits
    assert msisdn_to_e164("٤٨٥٠٠", 1) is None  # non-ASCII digits


# --- keywords ----------------------------------------------------------------------------------

space = st.text(alphabet=" \t\r\n\u00a0", max_size=3)


@given(
    st.sampled_from(DEFAULT_KEYWORDS.stop), space, space, st.lists(st.booleans(), min_size=11, max_size=11)
)
def test_stop_matches_trimmed_and_in_any_case(word: str, left: str, right: str, upper: list[bool]) -> None:
    mixed = "".join(c.upper() if up else c.lower() for c, up in zip(word, upper, strict=False))
    assert match_keyword(left + mixed + right, DEFAULT_KEYWORDS) == "stop"
    assert match_keyword(left + mixed.replace(" ", "  ") + right, DEFAULT_KEYWORDS) == "stop"


@given(st.sampled_from(DEFAULT_KEYWORDS.start), space)
def test_start_matches(word: str, pad: str) -> None:
    assert match_keyword(pad + word.lower() + pad, DEFAULT_KEYWORDS) == "start"


@given(st.text(max_size=60))
def test_only_whole_texts_are_keywords(text: str) -> None:
    result = match_keyword(text, DEFAULT_KEYWORDS)
    norm = " ".join(text.split()).casefold()
    words = {
        w.casefold(): kind
        for kind, ws in (("stop", DEFAULT_KEYWORDS.stop), ("start", DEFAULT_KEYWORDS.start))
        for w in ws
    }
    assert result == words.get(norm)


def test_sentences_are_not_keywords() -> None:
    for text in ("STOP.", "stop please", "Nie stop", "STOPP", "", "   ", "CANCEL", "nie"):
        assert match_keyword(text, DEFAULT_KEYWORDS) is None, text
    assert match_keyword("x" * 1000, DEFAULT_KEYWORDS) is None


def test_check_keywords() -> None:
    assert check_keywords(None, None) == DEFAULT_KEYWORDS
    assert check_keywords([" Koniec  teraz "], []) == Keywords(stop=("Koniec teraz",), start=())
    assert check_keywords(["KONIEC"], None) == Keywords(stop=("KONIEC",), start=DEFAULT_KEYWORDS.start)
    assert check_keywords([" "], None) == KeywordProblem("stop[0]", "must not be empty")
    assert check_keywords(["x" * 41], None) == KeywordProblem("stop[0]", "at most 40 characters")
    assert isinstance(check_keywords(["STOP", "stop"], None), KeywordProblem)
    both = check_keywords(["START"], None)
    assert isinstance(both, KeywordProblem) and both.field == "start[0]" and "both" in both.reason
    assert check_keywords([f"w{i}" for i in range(21)], []) == KeywordProblem("stop", "at most 20 words")


@given(
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10), max_size=20, unique=True
    )
)
def test_keywords_survive_storage(words: list[str]) -> None:
    checked = check_keywords(words, [])
    assert isinstance(checked, Keywords)
    assert keywords_from_json(checked.as_json()) == checked
    for w in words:
        assert match_keyword(f" {w.lower()} ", checked) == "stop"


def test_keywords_from_json_falls_back_to_defaults() -> None:
    assert keywords_from_json(None) == DEFAULT_KEYWORDS
    assert keywords_from_json({"stop": ["KONIEC"]}) == Keywords(("KONIEC",), DEFAULT_KEYWORDS.start)
    assert keywords_from_json({"stop": "KONIEC", "start": [1]}) == DEFAULT_KEYWORDS


# --- routing -------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=15)


def assignment(age: timedelta, **kw: object) -> SmsAssignment:
    values: dict[str, object] = {
        "tenant_id": "ten_1",
        "last_used_at": NOW - age,
        "last_thread_id": "thr_1",
        "tenant_reply_window_days": None,
        "contact_pk": 7,
        "contact_blocked": False,
    }
    values.update(kw)
    return SmsAssignment(**values)  # type: ignore[arg-type]


@given(st.integers(0, 40 * 24 * 3600), st.none() | st.integers(1, 365), st.booleans())
def test_reply_window(age_s: int, override: int | None, blocked: bool) -> None:
    a = assignment(timedelta(seconds=age_s), tenant_reply_window_days=override, contact_blocked=blocked)
    decision = route_sms_reply(destination_is_pool=True, assignment=a, sent_at=NOW, reply_window=WINDOW)
    window = timedelta(days=override) if override is not None else WINDOW
    if timedelta(seconds=age_s) > window:
        assert isinstance(decision, Deny) and decision.reason == "reply_too_old"
    elif blocked:
        assert isinstance(decision, Deny) and decision.reason == "contact_blocked"
    else:
        assert decision == SmsReply("ten_1", 7, "thr_1")


def test_routing_denials() -> None:
    a = assignment(timedelta(days=1))
    deny = route_sms_reply(destination_is_pool=False, assignment=a, sent_at=NOW, reply_window=WINDOW)
    assert isinstance(deny, Deny) and deny.reason == "unknown_destination"
    deny = route_sms_reply(destination_is_pool=True, assignment=None, sent_at=NOW, reply_window=WINDOW)
    assert isinstance(deny, Deny) and deny.reason == "unsolicited"
    exactly = assignment(WINDOW)  # the boundary belongs to the window
    assert isinstance(
        route_sms_reply(destination_is_pool=True, assignment=exactly, sent_at=NOW, reply_window=WINDOW),
        SmsReply,
    )
    late = route_sms_reply(
        destination_is_pool=True, assignment=assignment(timedelta(days=16)), sent_at=NOW, reply_window=WINDOW
    )
    assert isinstance(late, Deny) and late.reason == "reply_too_old" and "16 days" in late.detail


@pytest.mark.parametrize("thread", [None, "thr_9"])
def test_reply_keeps_the_thread_of_the_assignment(thread: str | None) -> None:
    a = assignment(timedelta(hours=1), last_thread_id=thread, contact_pk=None)
    assert route_sms_reply(
        destination_is_pool=True, assignment=a, sent_at=NOW, reply_window=WINDOW
    ) == SmsReply("ten_1", None, thread)
