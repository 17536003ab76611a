"""Mobile-originated (MO) SMS: user data header, text decoding, duplicate fingerprints, keywords.

Pure standard-library code with no I/O.

References:
- SMPP 3.4 §5.2.12 esm_class: bit 6 (0x40, UDHI) says short_message starts with a UDH.
- SMPP 3.4 §5.2.19 data_coding: the values 0x00-0x0E this module names below.
- SMPP 3.4 §5.3.2.22-24 sar_msg_ref_num / sar_total_segments / sar_segment_seqnum; §5.3.2.17
  user_message_reference (the handset's TP-Message-Reference, when the SMSC passes it on).
- 3GPP TS 23.038 §4: the SMS Data Coding Scheme (coding groups), which SMSCs pass through as
  data_coding for the values SMPP 3.4 leaves reserved (0x10-0xFF).
- 3GPP TS 23.040 §9.2.3.24: the UDH; §9.2.3.24.1/.8 concatenation (8-bit and 16-bit reference).

Decisions:
- data_coding 0x00-0x0F mean what SMPP 3.4 §5.2.19 says; 0x10-0xFF are read as a 23.038 §4 DCS
  (general group 00xx/01xx, message waiting groups 1100-1110, data coding/message class 1111).
- The SMSC default alphabet (0x00) is GSM 03.38 (SPEC 2.5). A payload with an octet above 0x7F
  cannot be unpacked septets: it is decoded as UTF-8 when valid, else Latin-1, with a note.
- 8-bit data (SMPP 0x02/0x04, DCS 8-bit, compressed, reserved or charsets we do not decode) is
  kept losslessly "as bytes with a note": the text holds the octets as lowercase hex, the note
  says so (a message's text column is text; hex survives JSON, the database and e-mail).
- Parts are joined as octets before decoding, so a GSM escape (0x1B + code, 23.038 §6.2.1.1)
  or a UTF-16 surrogate pair that a phone split over two parts decodes as one character.
- A malformed UDH or concatenation IE does not lose the message: 23.040 §9.2.3.24.1 tells a
  receiver to ignore a bad concatenation IE, so the part is treated as a message of its own
  (the UDH octets are skipped when UDHL fits, else the whole short_message is the payload), with
  a note. A concatenation of 1 part is a message of its own as well.
- Keywords match the whole text after trimming, case-insensitively (str.casefold), with runs of
  white space taken as one space ("stop  all" is "STOP ALL"); nothing else is stripped, so
  "STOP." or "stop please" is an ordinary reply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from gateway.domain.sms_text import SmsTextError, decode_gsm7, decode_ucs2
from gateway.domain.udh import Concat, UdhError, parse_sar, split_udh

__all__ = [
    "DEFAULT_KEYWORDS",
    "MAX_KEYWORDS",
    "MAX_KEYWORD_CHARS",
    "Decoded",
    "KeywordProblem",
    "Keywords",
    "MoPart",
    "check_keywords",
    "decode_payload",
    "decode_segments",
    "fingerprint",
    "is_resend",
    "keywords_from_json",
    "match_keyword",
    "msisdn_to_e164",
    "split_mo",
]

ESM_UDHI: Final = 0x40  # SMPP 3.4 §5.2.12

Charset = Literal["gsm7", "ucs2", "ascii", "latin1", "cyrillic", "hebrew", "binary"]

# SMPP 3.4 §5.2.19. The East Asian sets (JIS, pictograms, ISO-2022-JP music codes, Kanji, KS C 5601)
# come as octet streams we have no exact codec for: kept as bytes with the set's name in the note.
_SMPP_CODINGS: Final[dict[int, tuple[Charset, str]]] = {
    0x00: ("gsm7", "SMSC default alphabet"),
    0x01: ("ascii", "IA5 (CCITT T.50) / ASCII"),
    0x02: ("binary", "octet unspecified (8-bit binary)"),
    0x03: ("latin1", "Latin 1 (ISO-8859-1)"),
    0x04: ("binary", "octet unspecified (8-bit binary)"),
    0x05: ("binary", "JIS (X 0208-1990)"),
    0x06: ("cyrillic", "Cyrillic (ISO-8859-5)"),
    0x07: ("hebrew", "Latin/Hebrew (ISO-8859-8)"),
    0x08: ("ucs2", "UCS2 (ISO/IEC-10646)"),
    0x09: ("binary", "pictogram encoding"),
    0x0A: ("binary", "ISO-2022-JP (music codes)"),
    0x0D: ("binary", "extended Kanji JIS (X 0212-1990)"),
    0x0E: ("binary", "KS C 5601"),
}
_CODECS: Final[dict[str, str]] = {
    "ascii": "ascii",
    "latin1": "latin-1",
    "cyrillic": "iso8859_5",
    "hebrew": "iso8859_8",
}


def classify(data_coding: int) -> tuple[Charset, str]:
    """The character set of a data_coding value, and its name for notes (see the module docstring)."""
    if data_coding in _SMPP_CODINGS:
        return _SMPP_CODINGS[data_coding]
    if data_coding <= 0x0F:
        return "binary", f"reserved data_coding 0x{data_coding:02X}"
    group = data_coding >> 4
    if group <= 0x7:  # 23.038 §4 general data coding (00xx) and automatic deletion (01xx) groups
        if data_coding & 0x20:
            return "binary", "compressed user data (3GPP TS 23.038 §4)"
        alphabet = (data_coding >> 2) & 0x03
        if alphabet == 0:
            return "gsm7", "GSM 7-bit default alphabet"
        if alphabet == 2:
            return "ucs2", "UCS2"
        return "binary", "8-bit data" if alphabet == 1 else "reserved alphabet"
    if group in (0xC, 0xD):  # message waiting indication, discard / store: GSM 7-bit
        return "gsm7", "GSM 7-bit default alphabet (message waiting indication)"
    if group == 0xE:  # message waiting indication, store: UCS2
        return "ucs2", "UCS2 (message waiting indication)"
    if group == 0xF:  # data coding / message class: bit 2 chooses GSM 7-bit or 8-bit data
        return ("binary", "8-bit data") if data_coding & 0x04 else ("gsm7", "GSM 7-bit default alphabet")
    return "binary", f"reserved coding group (data_coding 0x{data_coding:02X})"


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    encoding: Charset
    note: str | None = None


def decode_payload(data: bytes, data_coding: int) -> Decoded:
    """User data (without UDH) to text by data_coding. Never raises."""
    charset, name = classify(data_coding)
    if charset == "gsm7":
        try:
            return Decoded(decode_gsm7(data), "gsm7")
        except SmsTextError:
            # Octets above 0x7F are no unpacked septets: the SMSC's "default alphabet" is not GSM.
            try:
                return Decoded(data.decode("utf-8"), "gsm7", f"{name} with 8-bit octets: decoded as UTF-8")
            except UnicodeDecodeError:
                return Decoded(
                    data.decode("latin-1"), "gsm7", f"{name} with 8-bit octets: decoded as Latin-1"
                )
    if charset == "ucs2":
        text = decode_ucs2(data)
        note = (
            "malformed UTF-16 (odd length or lone surrogate) replaced by U+FFFD" if "\ufffd" in text else None
        )
        return Decoded(text, "ucs2", note)
    if charset == "binary":
        return Decoded(
            data.hex(),
            "binary",
            f"{name}, data_coding 0x{data_coding:02X} (SMPP 3.4 §5.2.19): {len(data)} octets kept as hex",
        )
    return Decoded(data.decode(_CODECS[charset], "replace"), charset)


def decode_segments(segments: Sequence[Sequence[bytes]], data_coding: int) -> Decoded:
    """Decode runs of consecutive parts: each run's octets are joined first (a character split over
    two parts survives); runs separated by a missing part are decoded apart and concatenated."""
    decoded = [decode_payload(b"".join(run), data_coding) for run in segments if run]
    if not decoded:
        return decode_payload(b"", data_coding)
    notes = list(dict.fromkeys(d.note for d in decoded if d.note))
    joiner = " " if decoded[0].encoding == "binary" else ""
    return Decoded(joiner.join(d.text for d in decoded), decoded[0].encoding, "; ".join(notes) or None)


@dataclass(frozen=True, slots=True)
class MoPart:
    """A deliver_sm's user data: concatenation info (None: a message of its own), the payload after
    any UDH, and a note when the header was malformed."""

    concat: Concat | None
    payload: bytes
    note: str | None = None


def split_mo(short_message: bytes, esm_class: int, tlvs: Mapping[str, Any]) -> MoPart:
    """Concatenation info from the UDH (IEI 0x00 or 0x08, other IEs skipped) or else the SAR TLVs."""
    concat: Concat | None = None
    payload = short_message
    note: str | None = None
    if esm_class & ESM_UDHI:
        try:
            udh, payload = split_udh(short_message)
            concat = udh.concat
        except UdhError as exc:
            udhl = short_message[0] if short_message else 0
            if short_message and 1 + udhl <= len(short_message):
                payload = short_message[1 + udhl :]
            note = f"malformed user data header ignored (3GPP TS 23.040 §9.2.3.24): {exc.reason}"
    if concat is None:
        try:
            concat = parse_sar(tlvs)
        except UdhError as exc:
            note = f"malformed SAR TLVs ignored (SMPP 3.4 §5.3.2.22-24): {exc.reason}"
    if concat is not None and concat.total == 1:
        concat = None
    return MoPart(concat, payload, note)


_FINGERPRINT_TLVS: Final = (
    "sar_msg_ref_num",
    "sar_total_segments",
    "sar_segment_seqnum",
    "user_message_reference",
)


def fingerprint(
    source: str,
    destination: str,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    tlvs: Mapping[str, Any],
) -> str:
    """What makes one deliver_sm the same as another: addresses, coding, the octets (UDH included) and
    the TLVs that tell messages apart (SAR, and the handset's message reference when present). The
    connector is left out on purpose: an SMSC may redeliver on any bind of the account."""
    h = hashlib.sha256()
    fields: list[bytes] = [
        source.encode(),
        destination.encode(),
        bytes((esm_class & 0xFF, data_coding & 0xFF)),
        short_message,
    ]
    for name in _FINGERPRINT_TLVS:
        value = tlvs.get(name)
        fields.append(b"" if value is None else value if isinstance(value, bytes) else str(value).encode())
    for f in fields:
        h.update(len(f).to_bytes(4, "big"))
        h.update(f)
    return h.hexdigest()


def is_resend(*, seen_at: datetime, answered: bool, now: datetime, window: timedelta) -> bool:
    """Is a deliver_sm whose fingerprint was seen at ``seen_at`` the SMSC resending that one?

    Only an unanswered one is resent (SMPP 3.4 §4.6.2: the SMSC retries until it gets ESME_ROK),
    and only within ``window``. An answered earlier one means the customer wrote the same words
    again: a new message. (An unanswered earlier one we did commit: a crash, a lost connection or a
    timeout came between our commit and our ESME_ROK.)
    """
    return not answered and now - seen_at <= window


def msisdn_to_e164(address: str, ton: int) -> str | None:
    """An SMPP address as E.164 with '+', or None when it needs a numbering plan (a national number,
    SMPP 3.4 §5.2.5 TON 2) or is no number at all (alphanumeric, TON 5, or empty).

    TON 1 (international) and TON 0 (unknown) digits are international without the '+' (SPEC 2.5);
    a leading '+' or, for TON 0, '00' is accepted too.
    """
    text = address.strip().replace(" ", "")
    if text.startswith("+"):
        text = text[1:]
    elif ton == 0 and text.startswith("00"):
        text = text[2:]
    if not text.isdigit() or not text.isascii() or len(text) > 15:  # E.164: at most 15 digits
        return None
    if ton not in (0, 1):
        return None
    return "+" + text


# --- keywords ------------------------------------------------------------------------------------

#: At most this many words per list, each at most this many characters (a keyword is one short reply).
MAX_KEYWORDS: Final = 20
MAX_KEYWORD_CHARS: Final = 40


@dataclass(frozen=True, slots=True)
class Keywords:
    """Words that opt a contact out of SMS (``stop``) or back in (``start``), as configured."""

    stop: tuple[str, ...]
    start: tuple[str, ...]

    def as_json(self) -> dict[str, list[str]]:
        return {"stop": list(self.stop), "start": list(self.start)}


#: Defaults (docs/decisions.md "Inbound SMS"): the unambiguous opt-out words. CANCEL, END and QUIT, on
#: the common US list, are left out: for booking and dispatch tenants "CANCEL" is a business answer
#: ("reply CANCEL to cancel your visit"), not an opt-out; a tenant can add them. Polish carriers use
#: STOP too, and a Polish word like "NIE" is an answer to a question, so none is added.
DEFAULT_KEYWORDS: Final = Keywords(
    stop=("STOP", "STOP ALL", "STOPALL", "UNSUBSCRIBE"), start=("START", "UNSTOP")
)


def _norm(word: str) -> str:
    return " ".join(word.split()).casefold()


def match_keyword(text: str, keywords: Keywords) -> Literal["stop", "start"] | None:
    """``"stop"`` or ``"start"`` when the whole text is one of the words (module docstring), else None."""
    if len(text) > 4 * MAX_KEYWORD_CHARS:  # long replies are never keywords: skip the normalising
        return None
    t = _norm(text)
    if not t:
        return None
    if any(t == _norm(w) for w in keywords.stop):
        return "stop"
    if any(t == _norm(w) for w in keywords.start):
        return "start"
    return None


@dataclass(frozen=True, slots=True)
class KeywordProblem:
    """Why a keyword list is refused; ``field`` names the entry (``stop[2]``)."""

    field: str
    reason: str


def check_keywords(stop: Iterable[str] | None, start: Iterable[str] | None) -> Keywords | KeywordProblem:
    """Validate a tenant's lists: a missing list keeps the default, an empty one disables that keyword.

    Each word is trimmed (inner white space runs become one space), 1-40 characters, at most 20 per
    list, no word twice (case-insensitively), none in both lists.
    """
    lists: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    for name, words, default in (
        ("stop", stop, DEFAULT_KEYWORDS.stop),
        ("start", start, DEFAULT_KEYWORDS.start),
    ):
        if words is None:
            words = default
        out: list[str] = []
        for i, raw in enumerate(words):
            word = " ".join(raw.split())
            if not word:
                return KeywordProblem(f"{name}[{i}]", "must not be empty")
            if len(word) > MAX_KEYWORD_CHARS:
                return KeywordProblem(f"{name}[{i}]", f"at most {MAX_KEYWORD_CHARS} characters")
            key = word.casefold()
            if key in seen:
                where = "twice" if seen[key] == name else f"in both {seen[key]} and {name}"
                return KeywordProblem(f"{name}[{i}]", f"{word!r} is listed {where}")
            seen[key] = name
            out.append(word)
        if len(out) > MAX_KEYWORDS:
            return KeywordProblem(name, f"at most {MAX_KEYWORDS} words")
        lists[name] = tuple(out)
    return Keywords(stop=lists["stop"], start=lists["start"])


def keywords_from_json(data: Mapping[str, Any] | None) -> Keywords:
    """The effective lists from a tenant's stored ``sms_keywords`` (None: the defaults). Stored values
    were validated on the way in; anything unreadable falls back to the default list."""
    if not data:
        return DEFAULT_KEYWORDS

    def words(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = data.get(key)
        if isinstance(value, list) and all(isinstance(w, str) for w in value):
            return tuple(value)
        return default

    return Keywords(stop=words("stop", DEFAULT_KEYWORDS.stop), start=words("start", DEFAULT_KEYWORDS.start))
