"""User Data Header (UDH) handling for concatenated SMS.

Pure standard-library code with no I/O.

References:
- 3GPP TS 23.040 §9.2.3.24: the UDH is UDHL (one octet: the length of the rest of the
  header) followed by information elements (IEs), each IEI, IEDL, IED.
- 3GPP TS 23.040 §9.2.3.24.1: concatenated short messages, 8-bit reference (IEI 0x00,
  IEDL 3: ref, total, seq).
- 3GPP TS 23.040 §9.2.3.24.8: concatenated short messages, 16-bit reference (IEI 0x08,
  IEDL 4: ref (2 octets, big-endian), total, seq).
- SMPP 3.4 §5.2.12: esm_class bit 6 (0x40, UDHI) says that short_message starts with a UDH.
  The caller checks that bit; ``split_udh`` assumes it is set.
- SMPP 3.4 §5.3.2.22-24: sar_msg_ref_num / sar_total_segments / sar_segment_seqnum, the
  TLV alternative to the concatenation IE.

Decisions:
- GSM 7-bit payloads stay UNPACKED, one septet per octet, because SMPP data_coding 0
  carries unpacked septets and the SMSC packs them. 23.040 §9.2.3.24 pads a UDH to a
  septet boundary with fill bits only in PACKED user data, so there are no fill bits here:
  the SMPP short_message is just UDH octets followed by septet octets. The part sizes
  still follow the packed air-interface rule (UDH octets * 8 + septets * 7 <= 1120 bits),
  which is why a part holds 153 septets after a 6-octet UDH and 152 after a 7-octet one.
- ``split_udh`` raises UdhError for a concatenation IE with total 0, seq 0 or seq > total.
  23.040 §9.2.3.24.1 tells a receiver to ignore such an IE; raising lets the caller
  choose (treating the message as a standalone one is the spec's behaviour).
- When the header holds several concatenation IEs (0x00 and/or 0x08) the last one wins:
  23.040 §9.2.3.24 says that for a duplicated non-repeatable IE, or IEs with mutually
  exclusive meanings, "the last occurring IE shall be used". Each one is still validated.
- Other IEs are returned in order as (IEI, data) and are not interpreted.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from gateway.domain.sms_text import Encoding, encode_parts

__all__ = [
    "IEI_CONCAT_8BIT",
    "IEI_CONCAT_16BIT",
    "Concat",
    "ReferenceCounter",
    "Udh",
    "UdhError",
    "build_concat_udh",
    "concat_parts",
    "parse_sar",
    "split_udh",
]

IEI_CONCAT_8BIT: Final = 0x00  # 23.040 §9.2.3.24.1
IEI_CONCAT_16BIT: Final = 0x08  # 23.040 §9.2.3.24.8
_CONCAT_IEDL: Final[dict[int, int]] = {IEI_CONCAT_8BIT: 3, IEI_CONCAT_16BIT: 4}
_MAX_PARTS: Final = 255  # total and seq are one octet each
_SAR_SIZES: Final[dict[str, int]] = {  # SMPP 3.4 §5.3.2.22-24: TLV value sizes in octets
    "sar_msg_ref_num": 2,
    "sar_total_segments": 1,
    "sar_segment_seqnum": 1,
}


class UdhError(ValueError):
    """A malformed UDH or concatenation data, or bad arguments to build one.

    ``reason`` says what is wrong (it is also the exception message).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[UdhError], tuple[str]]:
        return (type(self), (self.reason,))


@dataclass(frozen=True, slots=True)
class Concat:
    """One part of a concatenated message. ``seq`` counts from 1."""

    ref: int
    total: int
    seq: int
    ref_bits: int  # 8 (IEI 0x00) or 16 (IEI 0x08 / SMPP sar_msg_ref_num)

    def __post_init__(self) -> None:
        _check_concat(self.ref, self.total, self.seq, self.ref_bits)


@dataclass(frozen=True, slots=True)
class Udh:
    concat: Concat | None
    other: tuple[tuple[int, bytes], ...]  # the non-concatenation IEs as (IEI, data), in order


def _check_concat(ref: int, total: int, seq: int, ref_bits: int) -> None:
    if ref_bits not in (8, 16):
        raise UdhError(f"ref_bits must be 8 or 16, got {ref_bits}")
    if not 0 <= ref < 1 << ref_bits:
        raise UdhError(f"reference {ref} does not fit in {ref_bits} bits")
    if not 1 <= total <= _MAX_PARTS:
        raise UdhError(f"total parts must be 1..{_MAX_PARTS}, got {total}")
    if not 1 <= seq <= total:
        raise UdhError(f"sequence number must be 1..{total}, got {seq}")


def build_concat_udh(ref: int, total: int, seq: int, ref_bits: int = 8) -> bytes:
    """The whole UDH (UDHL included) for part ``seq`` of ``total``.

    8-bit: ``05 00 03 ref total seq`` (6 octets). 16-bit: ``06 08 04 refhi reflo total seq``
    (7 octets). Raises UdhError unless 1 <= seq <= total <= 255 and ref fits in ref_bits.
    """
    _check_concat(ref, total, seq, ref_bits)
    if ref_bits == 8:
        return bytes((5, IEI_CONCAT_8BIT, 3, ref, total, seq))
    return bytes((6, IEI_CONCAT_16BIT, 4, ref >> 8, ref & 0xFF, total, seq))


def split_udh(short_message: bytes) -> tuple[Udh, bytes]:
    """Parse the UDH at the start of ``short_message``; return it and the payload after it.

    Call it only when esm_class has UDHI (0x40) set. Raises UdhError when the data is
    empty, UDHL runs past the data, an IE runs past UDHL, or a concatenation IE has the
    wrong length or impossible values. The last concatenation IE wins (module docstring).
    """
    if not short_message:
        raise UdhError("no UDH: the short message is empty")
    udhl = short_message[0]
    end = 1 + udhl
    if end > len(short_message):
        raise UdhError(f"UDHL {udhl} runs past the {len(short_message) - 1} octets after it")
    concat: Concat | None = None
    other: list[tuple[int, bytes]] = []
    pos = 1
    while pos < end:
        if pos + 2 > end:
            raise UdhError(f"IE header at offset {pos} runs past the UDH")
        iei, iedl = short_message[pos], short_message[pos + 1]
        data_start, data_end = pos + 2, pos + 2 + iedl
        if data_end > end:
            raise UdhError(f"IE 0x{iei:02X} at offset {pos} has length {iedl}, past the UDH")
        data = short_message[data_start:data_end]
        if iei in _CONCAT_IEDL:
            concat = _parse_concat_ie(iei, data)
        else:
            other.append((iei, data))
        pos = data_end
    return Udh(concat=concat, other=tuple(other)), short_message[end:]


def _parse_concat_ie(iei: int, data: bytes) -> Concat:
    if len(data) != _CONCAT_IEDL[iei]:
        raise UdhError(f"concatenation IE 0x{iei:02X} must have length {_CONCAT_IEDL[iei]}, got {len(data)}")
    if iei == IEI_CONCAT_8BIT:
        ref, bits = data[0], 8
    else:
        ref, bits = int.from_bytes(data[:2], "big"), 16
    total, seq = data[-2], data[-1]
    if total == 0 or seq == 0 or seq > total:
        raise UdhError(f"concatenation IE has sequence {seq} of {total}")
    return Concat(ref=ref, total=total, seq=seq, ref_bits=bits)


def parse_sar(tlvs: Mapping[str, int | bytes]) -> Concat | None:
    """Concatenation info from the SMPP 3.4 SAR TLVs (§5.3.2.22-24), keyed by TLV name.

    Values are ints or the raw big-endian TLV octets. Returns None unless all three of
    sar_msg_ref_num, sar_total_segments and sar_segment_seqnum are present. Raises
    UdhError for a value of the wrong size or impossible values (as split_udh does).
    """
    values: dict[str, int] = {}
    for name, size in _SAR_SIZES.items():
        raw = tlvs.get(name)
        if raw is None:
            return None
        if isinstance(raw, bytes):
            if len(raw) != size:
                raise UdhError(f"{name} must be {size} octet(s), got {len(raw)}")
            values[name] = int.from_bytes(raw, "big")
        elif raw < 0 or raw >= 1 << (8 * size):
            raise UdhError(f"{name} {raw} does not fit in {size} octet(s)")
        else:
            values[name] = raw
    total, seq = values["sar_total_segments"], values["sar_segment_seqnum"]
    if total == 0 or seq == 0 or seq > total:
        raise UdhError(f"SAR TLVs give segment {seq} of {total}")
    return Concat(ref=values["sar_msg_ref_num"], total=total, seq=seq, ref_bits=16)


class ReferenceCounter:
    """Concatenation references that rotate per destination.

    Each destination starts at a random offset (from the injected ``rng``) and then goes up
    by 1 modulo 2**bits on every call, so consecutive long messages to one handset get
    different references (the receiver groups parts by originator + reference) and
    references to different handsets are independent. Memory is bounded: only the
    ``max_destinations`` most recently used destinations are remembered; a forgotten one
    starts again at a fresh random offset. Not thread-safe (one event loop owns it).
    """

    __slots__ = ("_bits", "_max", "_next", "_rng")

    def __init__(
        self, rng: random.Random | None = None, *, max_destinations: int = 100_000, bits: int = 8
    ) -> None:
        if max_destinations < 1:
            raise ValueError(f"max_destinations must be >= 1, got {max_destinations}")
        if bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {bits}")
        self._rng = rng if rng is not None else random.Random()
        self._max = max_destinations
        self._bits = bits
        self._next: OrderedDict[str, int] = OrderedDict()  # destination -> next reference

    def next(self, destination: str) -> int:
        """The reference to use for the next multi-part message to ``destination``."""
        ref = self._next.pop(destination, None)
        if ref is None:
            ref = self._rng.randrange(1 << self._bits)
            if len(self._next) >= self._max:
                self._next.popitem(last=False)  # least recently used
        self._next[destination] = (ref + 1) % (1 << self._bits)  # (re)inserted as most recent
        return ref

    def __len__(self) -> int:
        return len(self._next)


def concat_parts(
    text: str, *, ref: int, ref_bits: int = 8, encoding: Encoding | None = None
) -> tuple[Encoding, list[bytes]]:
    """The SMPP short_message of each part of ``text``, and the encoding (for data_coding).

    A text that fits one part is sent without a UDH: the list is just its payload. A
    longer text is cut by ``sms_text.encode_parts`` (153 septets / 67 units per part for
    8-bit refs, 152 / 66 for 16-bit refs; an escape pair or surrogate pair is never cut)
    and each part is UDH + payload; the caller sets esm_class UDHI (0x40) for those. GSM
    payloads are unpacked septets (see the module docstring: no fill bits). The empty text
    gives no parts. Raises UdhError for a bad ref/ref_bits or a text needing more than
    255 parts, and SmsTextError for a text that ``encoding`` can't carry.
    """
    _check_concat(ref, 1, 1, ref_bits)
    udh_octets = len(build_concat_udh(ref, 1, 1, ref_bits))
    enc, payloads = encode_parts(text, encoding, udh_octets=udh_octets)
    if len(payloads) <= 1:
        return enc, payloads
    total = len(payloads)
    if total > _MAX_PARTS:
        raise UdhError(f"the text needs {total} parts; concatenation allows at most {_MAX_PARTS}")
    return enc, [
        build_concat_udh(ref, total, seq, ref_bits) + payload for seq, payload in enumerate(payloads, 1)
    ]
