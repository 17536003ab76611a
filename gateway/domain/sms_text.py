"""SMS text codec: encoding choice, part splitting and payload encoding.

Pure standard-library code with no I/O.

References:
- 3GPP TS 23.038 §6.2.1: the GSM 7-bit default alphabet and its extension table.
- 3GPP TS 23.038 §6.1.2.1: how septets are packed into octets.
- 3GPP TS 23.040 §9.2.3.24.1: the concatenation information element. Its 6-octet UDH
  (UDHL + IEI + IEDL + ref + total + seq) costs 7 septets or 3 UCS-2 units per part, so
  the part limits drop from 160/70 to 153/67. The 16-bit-reference variant (IEI 0x08,
  23.040 §9.2.3.24.8) is a 7-octet UDH, so 152/66: ``split``, ``encode_parts`` and
  ``preview`` take an optional ``udh_octets`` for that (see ``gateway.domain.udh``).

Decisions:
- A lowercase 'ç' is NOT encoded as 0x09. 23.038 puts the capital 'Ç' there. Some carriers
  fold 'ç' into it, but we keep the round trip exact, so a text containing 'ç' is sent
  as UCS-2.
- An unknown escape ``0x1B X`` decodes to the basic-table character for X. 23.038
  §6.2.1.1 tells a receiver to "display the character shown in the main GSM 7 bit
  default alphabet table". ``0x1B 0x1B`` decodes to a space: 23.038 reserves it for a
  further extension table and says to display a space. A lone trailing 0x1B is dropped.
- ``decode_gsm7`` raises SmsTextError on a byte above 0x7F. It does not mask the byte to
  7 bits. Such a byte means the SMSC's "default alphabet" is really Latin-1/ASCII or the
  data was not GSM at all. Masking would silently garble the text, while the error lets
  the caller pick another decoder.
- ``decode_ucs2`` never raises. A lone surrogate or an odd trailing byte becomes U+FFFD.
  We use the 'replace' handler instead of 'surrogatepass' because a str holding a lone
  surrogate can't be encoded to UTF-8 later (database, JSON, email), which would fail far
  from the cause.
- ``encode_ucs2`` raises SmsTextError on a lone surrogate code point (this can come from
  JSON like "\\ud83d"), so that garbage is never put on the wire. ``split`` and ``preview``
  count such a code point as one unit and do not raise.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from enum import StrEnum
from itertools import accumulate
from typing import Final

__all__ = [
    "CONCAT_UDH_OCTETS",
    "GSM7_MULTI_PART_SEPTETS",
    "GSM7_SINGLE_PART_SEPTETS",
    "UCS2_MULTI_PART_UNITS",
    "UCS2_SINGLE_PART_UNITS",
    "Encoding",
    "Preview",
    "SmsTextError",
    "choose_encoding",
    "decode_gsm7",
    "decode_ucs2",
    "encode_gsm7",
    "encode_parts",
    "encode_ucs2",
    "is_gsm7",
    "pack_septets",
    "preview",
    "split",
    "unpack_septets",
]


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


# 140 octets of user data per SMS (23.040 §9.2.3.16). That is 160 septets or 70 UTF-16
# units. The 6-octet concatenation UDH takes 7 septets (48 bits, rounded up to whole
# septets with fill bits) or 3 units.
GSM7_SINGLE_PART_SEPTETS: Final = 160
GSM7_MULTI_PART_SEPTETS: Final = 153
UCS2_SINGLE_PART_UNITS: Final = 70
UCS2_MULTI_PART_UNITS: Final = 67
# UDHL + the 8-bit-reference concatenation IE (23.040 §9.2.3.24.1), the default
# ``udh_octets`` of split/encode_parts/preview.
CONCAT_UDH_OCTETS: Final = 6
# Bounds for ``udh_octets``: a multi-part UDH holds at least the concatenation IE, and a
# part must keep room for 2 units (an escape pair or a surrogate pair), or the greedy
# split could not make progress.
_MIN_UDH_OCTETS: Final = CONCAT_UDH_OCTETS
_MAX_UDH_OCTETS: Final = 136

_ESC: Final = 0x1B

# 23.038 §6.2.1, indexed by septet value. 0x1B (ESC) is a placeholder and is never
# looked up as a character. The Greek capitals are the real Greek code points
# (e.g. Ω is U+03A9 and not the Ohm sign U+2126).
_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
assert len(_BASIC) == 128

# 23.038 §6.2.1.1, the extension table: code after 0x1B -> character. 0x0A is the page
# break, which we map to form feed.
_EXTENSION: Final[dict[int, str]] = {
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

# Precomputed lookups. is_gsm7/encode_gsm7 use C-level set and str.translate operations,
# so a 1,600-char text costs microseconds.
_BASIC_CODE: Final[dict[str, int]] = {c: i for i, c in enumerate(_BASIC) if i != _ESC}
_EXT_CODE: Final[dict[str, int]] = {c: code for code, c in _EXTENSION.items()}
_EXT_CHARS: Final = frozenset(_EXT_CODE)
_GSM_CHARS: Final = frozenset(_BASIC_CODE) | _EXT_CHARS
_ENCODE_TABLE: Final[dict[int, str]] = {ord(c): chr(i) for c, i in _BASIC_CODE.items()} | {
    ord(c): chr(_ESC) + chr(code) for c, code in _EXT_CODE.items()
}
# Septet -> char for decoding. An unknown extension code falls back to the basic table
# (23.038 §6.2.1.1), and ESC ESC is displayed as a space.
_DECODE_EXT: Final[tuple[str, ...]] = tuple(
    " " if i == _ESC else _EXTENSION.get(i, _BASIC[i]) for i in range(128)
)


class SmsTextError(ValueError):
    """A character (or byte) cannot be represented in the requested encoding.

    ``char`` is the offending character. For a bad byte it is ``chr(byte)``. ``position``
    is its index in the input str or bytes.
    """

    def __init__(self, char: str, position: int, message: str | None = None) -> None:
        if message is None:
            message = f"character {char!r} (U+{ord(char):04X}) at position {position} is not encodable"
        super().__init__(message)
        self.char = char
        self.position = position

    def __reduce__(self) -> tuple[type[SmsTextError], tuple[str, int, str]]:
        # Keep the instance picklable even though __init__ takes more than the message.
        return (type(self), (self.char, self.position, str(self)))


@dataclass(frozen=True, slots=True)
class Preview:
    encoding: Encoding
    chars: int  # GSM septets (extension char = 2) or UTF-16 code units (astral char = 2)
    parts: int  # 0 for the empty text
    chars_left_in_part: int  # units still free in the last part before another part is needed


# --- GSM 7-bit ---------------------------------------------------------------------------


def is_gsm7(text: str) -> bool:
    """True if every char is in the GSM 03.38 default alphabet or its extension table."""
    return _GSM_CHARS.issuperset(text)


def choose_encoding(text: str) -> Encoding:
    return Encoding.GSM7 if is_gsm7(text) else Encoding.UCS2


def _first_non_gsm(text: str) -> SmsTextError:
    for i, c in enumerate(text):
        if c not in _GSM_CHARS:
            return SmsTextError(c, i, f"character {c!r} (U+{ord(c):04X}) at position {i} is not in GSM 03.38")
    raise AssertionError("unreachable: text is GSM 03.38")  # pragma: no cover


def encode_gsm7(text: str) -> bytes:
    """One byte per septet (unpacked, as SMPP data_coding 0 carries it).

    An extension char becomes ``0x1B`` + code. Raises SmsTextError for any other char.
    """
    if not is_gsm7(text):
        raise _first_non_gsm(text)
    return text.translate(_ENCODE_TABLE).encode("ascii")


def decode_gsm7(data: bytes) -> str:
    """Inverse of encode_gsm7. See the module docstring for unknown escapes and bytes > 0x7F."""
    if not data.isascii():
        pos = next(i for i, b in enumerate(data) if b > 0x7F)
        raise SmsTextError(
            chr(data[pos]), pos, f"byte 0x{data[pos]:02X} at position {pos} is not a GSM 7-bit septet"
        )
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b != _ESC:
            out.append(_BASIC[b])
            i += 1
        elif i + 1 < n:
            out.append(_DECODE_EXT[data[i + 1]])
            i += 2
        else:
            break  # a lone trailing escape has no character to extend: drop it
    return "".join(out)


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack 7-bit values into octets, LSB first (23.038 §6.1.2.1.1).

    ``fill_bits`` (0-6) zero bits come first, so that the first septet starts on a septet
    boundary after a UDH (23.040 §9.2.3.24). The empty input packs to b"".
    """
    _check_fill(fill_bits)
    if not septets:
        return b""
    if not septets.isascii():
        pos = next(i for i, s in enumerate(septets) if s > 0x7F)
        bad = septets[pos]
        raise SmsTextError(chr(bad), pos, f"value 0x{bad:02X} at position {pos} is not a septet")
    # Septet i occupies bits [fill + 7i, fill + 7i + 7) of a little-endian bit string.
    # Spare bits in the last octet stay zero. The UDL gives the septet count in an SMS,
    # so they are not read as an '@' (the CR padding of 23.038 §6.1.2.3.1 is for
    # USSD/CBS).
    acc = 0
    for s in reversed(septets):
        acc = (acc << 7) | s
    return (acc << fill_bits).to_bytes((fill_bits + 7 * len(septets) + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    """Inverse of pack_septets: ``count`` septets after ``fill_bits`` leading fill bits."""
    _check_fill(fill_bits)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and fill_bits + 7 * count > 8 * len(data):
        raise ValueError(f"{len(data)} octets cannot hold {count} septets after {fill_bits} fill bits")
    acc = int.from_bytes(data, "little") >> fill_bits
    return bytes((acc >> (7 * i)) & 0x7F for i in range(count))


def _check_fill(fill_bits: int) -> None:
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, got {fill_bits}")


# --- UCS-2 / UTF-16 ----------------------------------------------------------------------


def encode_ucs2(text: str) -> bytes:
    """UTF-16-BE, with surrogate pairs for astral chars. A lone surrogate raises SmsTextError."""
    try:
        return text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        c = text[exc.start]
        raise SmsTextError(c, exc.start, f"lone surrogate U+{ord(c):04X} at position {exc.start}") from None


def decode_ucs2(data: bytes) -> str:
    """UTF-16-BE. Never raises: a lone surrogate or odd trailing byte becomes U+FFFD."""
    return data.decode("utf-16-be", "replace")


# --- Splitting ---------------------------------------------------------------------------


def _limits(encoding: Encoding, udh_octets: int = CONCAT_UDH_OCTETS) -> tuple[int, int]:
    """(single-part, multi-part) limits in units when each multi-part part carries a UDH
    of ``udh_octets`` octets (UDHL included).

    The 140-octet user data is 1120 bits (23.040 §9.2.3.16). For GSM the UDH is rounded
    up to whole septets with fill bits (23.040 §9.2.3.24), so a part keeps
    floor((1120 - 8 * udh_octets) / 7) septets: 153 for 6 octets, 152 for 7. For UCS-2 it
    keeps floor((140 - udh_octets) / 2) units: 67 for 6 octets, 66 for 7.
    """
    if not _MIN_UDH_OCTETS <= udh_octets <= _MAX_UDH_OCTETS:
        raise ValueError(f"udh_octets must be {_MIN_UDH_OCTETS}..{_MAX_UDH_OCTETS}, got {udh_octets}")
    if encoding is Encoding.GSM7:
        return GSM7_SINGLE_PART_SEPTETS, (8 * 140 - 8 * udh_octets) // 7
    return UCS2_SINGLE_PART_UNITS, (140 - udh_octets) // 2


def _gsm7_spans(text: str, checked: bool, multi: int) -> list[tuple[int, int, int]]:
    # Cut the septet string (one char per septet, from str.translate) with C-level string
    # operations. No char encodes to a lone 0x1B, so every 0x1B there leads an escape pair.
    # A cut right after one would separate it from its code, so we cut one septet earlier.
    if not checked and not is_gsm7(text):
        raise _first_non_gsm(text)
    septets = text.translate(_ENCODE_TABLE)
    total, esc = len(septets), chr(_ESC)
    if total <= GSM7_SINGLE_PART_SEPTETS:
        return [(0, len(text), total)] if total else []
    spans: list[tuple[int, int, int]] = []
    start = pos = 0
    while pos < total:
        end = min(pos + multi, total)
        if septets[end - 1] == esc:
            end -= 1
        chars = end - pos - septets.count(esc, pos, end)
        spans.append((start, start + chars, end - pos))
        start, pos = start + chars, end
    return spans


def _ucs2_spans(text: str, multi: int) -> list[tuple[int, int, int]]:
    n = len(text)
    if not text or max(text) <= "\uffff":
        # No astral chars, so one code point is one UTF-16 unit.
        if n <= UCS2_SINGLE_PART_UNITS:
            return [(0, n, n)] if n else []
        step = multi
        return [(i, min(i + step, n), min(step, n - i)) for i in range(0, n, step)]
    # An astral char is a surrogate pair (2 units). We cut only between code points, so a
    # pair that would straddle the limit moves whole to the next part.
    cum = list(accumulate(2 if c > "\uffff" else 1 for c in text))  # cum[i]: units of text[:i+1]
    if cum[-1] <= UCS2_SINGLE_PART_UNITS:
        return [(0, n, cum[-1])]
    spans: list[tuple[int, int, int]] = []
    start = base = 0
    while start < n:
        # The first index whose running total exceeds this part's budget ends the part.
        end = bisect_right(cum, base + multi, lo=start)
        spans.append((start, end, cum[end - 1] - base))
        start, base = end, cum[end - 1]
    return spans


def _spans(
    text: str, encoding: Encoding | None, udh_octets: int = CONCAT_UDH_OCTETS
) -> tuple[Encoding, list[tuple[int, int, int]]]:
    """The encoding (chosen if None) and (start, end, units) of each part.

    start and end are char indices into text, units is the number of units used.

    One part holds up to 160 septets / 70 units. Beyond that, each part holds at most 153 /
    67 (23.040 §9.2.3.24.1), or less for a longer UDH (see _limits). No part ends with an
    ESC or a high surrogate.
    """
    enc = choose_encoding(text) if encoding is None else encoding
    _, multi = _limits(enc, udh_octets)
    if enc is Encoding.GSM7:
        # A chosen GSM7 has already passed is_gsm7, so skip the second scan.
        return enc, _gsm7_spans(text, checked=encoding is None, multi=multi)
    return enc, _ucs2_spans(text, multi)


def split(text: str, encoding: Encoding | None = None, *, udh_octets: int = CONCAT_UDH_OCTETS) -> list[str]:
    """The texts of the SMS parts. ``''.join(split(t)) == t`` and ``split('') == []``.

    One part holds up to 160 septets / 70 units. Beyond that, every part holds at most
    153 septets / 67 units (23.040 §9.2.3.24.1). ``udh_octets`` is the size of the UDH
    each part of a multi-part message carries (UDHL included): 6 by default, 7 for
    16-bit concatenation references (152 septets / 66 units); ValueError outside 6..136.
    Raises SmsTextError if ``encoding`` is GSM7 and the text is not representable in it.
    """
    _, spans = _spans(text, encoding, udh_octets)
    return [text[s:e] for s, e, _ in spans]


def preview(text: str, *, udh_octets: int = CONCAT_UDH_OCTETS) -> Preview:
    """Encoding, size and part count of ``text``; ``udh_octets`` as in split()."""
    enc, spans = _spans(text, None, udh_octets)
    single, multi = _limits(enc, udh_octets)
    total = sum(units for _, _, units in spans)
    last = spans[-1][2] if spans else 0
    left = (single if len(spans) <= 1 else multi) - last
    return Preview(encoding=enc, chars=total, parts=len(spans), chars_left_in_part=left)


def encode_parts(
    text: str, encoding: Encoding | None = None, *, udh_octets: int = CONCAT_UDH_OCTETS
) -> tuple[Encoding, list[bytes]]:
    """The payload of each part, with the same boundaries as split() (same ``udh_octets``).

    GSM parts are unpacked septets and UCS-2 parts are UTF-16-BE. Raises SmsTextError
    for a text that the encoding can't carry.
    """
    enc, spans = _spans(text, encoding, udh_octets)  # also checks that a GSM7 text is representable
    # Encode once, then cut the payload at the unit offsets of the spans. A GSM unit is
    # one byte (unpacked septet) and a UTF-16 unit is two.
    if enc is Encoding.GSM7:
        data, width = text.translate(_ENCODE_TABLE).encode("ascii"), 1
    else:
        data, width = encode_ucs2(text), 2
    payloads: list[bytes] = []
    offset = 0
    for _, _, units in spans:
        payloads.append(data[offset : offset + units * width])
        offset += units * width
    return enc, payloads
