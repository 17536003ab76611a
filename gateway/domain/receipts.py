"""SMPP delivery receipts: recognise, parse and match them to submitted messages.

Pure standard-library code with no I/O.

References:
- SMPP 3.4 §5.2.12: esm_class bits 5-2 of a deliver_sm give the message type: 0x04 SMSC
  delivery receipt, 0x08 SME delivery acknowledgement, 0x10 SME manual/user
  acknowledgement, 0x20 intermediate delivery notification.
- SMPP 3.4 Appendix B: the receipt text
  ``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
  err:E text:...``. The appendix calls the format SMSC-specific, and real SMSCs vary it.
- SMPP 3.4 §5.3.2.12 receipted_message_id (0x001E), §5.3.2.35 message_state (0x0427,
  values of §5.2.28), §5.3.2.31 network_error_code (0x0423: network type, error code).

Decisions:
- ``is_receipt`` is True for SMSC delivery receipts (0x04) and intermediate delivery
  notifications (0x20). SME acknowledgements (0x08, 0x10) come from the recipient's
  application, have no standard content, and are only sent when registered_delivery asks
  for them (we never do), so they are not receipts. Pass ``esm_class`` to parse_receipt so
  that an intermediate notification is never final.
- The TLVs win over the text: the id comes from receipted_message_id if present, the state
  from message_state if it holds a known value. The text fills in what they lack.
- States: DELIVRD -> DELIVERED. ENROUTE, ACCEPTD and BUFFRED -> INTERIM. §5.2.28 calls
  ACCEPTED final ("manually read on behalf of the subscriber"), but SMSCs use ACCEPTD for
  "accepted by the SMSC/network", which proves nothing about the handset, so we keep
  waiting (the message's validity timeout finalises it). EXPIRED, DELETED, UNDELIV,
  REJECTD and UNKNOWN -> FAILED with ``reason`` "expired", "deleted", "undeliverable",
  "rejected", "unknown". UNKNOWN ("message is in invalid state") is a final report
  that does not confirm delivery. A stat we do not recognise, or no state at all, is
  also FAILED with reason "unknown", as Kannel does: the SMSC sent a final report, and
  a message left hanging is worse than a failure whose raw ``stat`` is kept.
- Keys are matched case-insensitively ("Text:", "STAT:", "submit_date:", "doneDate:"),
  in any order, separated by spaces, commas or semicolons. ``text:`` ends the key scan:
  everything after it is the text, colons and all.
- The short message is decoded as UTF-8, else Latin-1 (never fails), or as UTF-16-BE
  when every even byte is NUL (a receipt sent in UCS-2). Trailing NULs are dropped.
- ``normalize_message_id`` follows Kannel's msg-id-type: a connector setting that says how
  the SMSC writes ids in submit_sm_resp and in receipts (see MessageIdType). It never
  raises on an id: an id that does not parse as the declared format falls back to the
  "as_is" key. A bad ``id_type`` is a configuration error and raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

__all__ = [
    "MessageIdType",
    "Receipt",
    "ReceiptError",
    "ReceiptState",
    "is_receipt",
    "normalize_message_id",
    "parse_receipt",
]

_ESM_TYPE_MASK: Final = 0x3C  # esm_class bits 5-2 (SMPP 3.4 §5.2.12)
_ESM_SMSC_RECEIPT: Final = 0x04
_ESM_INTERMEDIATE: Final = 0x20


class ReceiptState(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    INTERIM = "interim"  # not final: more receipts may follow


class ReceiptError(ValueError):
    """The deliver_sm does not hold a usable receipt (no message id found)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str  # as the SMSC sent it (whitespace/NUL stripped); see normalize_message_id
    id_source: Literal["tlv", "text"]  # where message_id came from
    state: ReceiptState
    # The status word that decided ``state``, upper-cased ("DELIVRD"): the Appendix B word
    # for a known message_state TLV, else the text's stat field, else "".
    stat: str
    reason: str | None  # for FAILED: "expired", "deleted", "undeliverable", "rejected", "unknown"
    err: str | None  # the text's err field, raw ("001")
    network_error: tuple[int, int] | None  # network_error_code TLV: (network type, error code)
    submit_date: str | None  # raw
    done_date: str | None  # raw
    text: str | None  # the text field (start of the original message); None if absent

    @property
    def is_final(self) -> bool:
        return self.state is not ReceiptState.INTERIM


def is_receipt(esm_class: int) -> bool:
    """True for an SMSC delivery receipt (0x04) or intermediate notification (0x20)."""
    return (esm_class & _ESM_TYPE_MASK) in (_ESM_SMSC_RECEIPT, _ESM_INTERMEDIATE)


# message_state (§5.2.28) -> Appendix B stat word.
_MESSAGE_STATES: Final[dict[int, str]] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
# Stat word (upper-cased, with common spelled-out variants) -> (state, reason).
_STATS: Final[dict[str, tuple[ReceiptState, str | None]]] = {
    "DELIVRD": (ReceiptState.DELIVERED, None),
    "DELIVERED": (ReceiptState.DELIVERED, None),
    "ENROUTE": (ReceiptState.INTERIM, None),
    "ACCEPTD": (ReceiptState.INTERIM, None),
    "ACCEPTED": (ReceiptState.INTERIM, None),
    "BUFFRED": (ReceiptState.INTERIM, None),
    "BUFFERED": (ReceiptState.INTERIM, None),
    "EXPIRED": (ReceiptState.FAILED, "expired"),
    "DELETED": (ReceiptState.FAILED, "deleted"),
    "UNDELIV": (ReceiptState.FAILED, "undeliverable"),
    "UNDELIVERABLE": (ReceiptState.FAILED, "undeliverable"),
    "REJECTD": (ReceiptState.FAILED, "rejected"),
    "REJECTED": (ReceiptState.FAILED, "rejected"),
    "UNKNOWN": (ReceiptState.FAILED, "unknown"),
}

# A known key at the start or after a separator. "submit date" is tried before "sub".
_KEY_RE: Final = re.compile(
    r"(?<![^\s,;])(submit[ _]*date|done[ _]*date|id|sub|dlvrd|stat|err|text)\s*:",
    re.IGNORECASE,
)
_UNKNOWN_KEY_RE: Final = re.compile(r"[\s,;]+[A-Za-z][\w ]*?:")  # e.g. " msisdn:" inside a value
_DECIMAL_RE: Final = re.compile(r"[0-9]+")
_HEX_RE: Final = re.compile(r"(?:0[xX])?([0-9A-Fa-f]+)")
_BLANKS: Final = " \t\r\n\x00"
_SEPARATORS: Final = _BLANKS + ",;"


def _decode(short_message: bytes) -> str:
    data = short_message
    # UCS-2: the keys are ASCII, so most high bytes (even offsets) are NUL.
    if (
        len(data) >= 2
        and len(data) % 2 == 0
        and data[0] == 0
        and 4 * data[0::2].count(0) >= 3 * (len(data) // 2)
    ):
        return data.decode("utf-16-be", "replace").rstrip("\x00")
    data = data.rstrip(b"\x00")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text_fields(text: str) -> dict[str, str]:
    """Key (lower-case, "submit date"/"done date" normalised) -> raw value."""
    fields: dict[str, str] = {}
    matches = list(_KEY_RE.finditer(text))
    for i, m in enumerate(matches):
        key = m.group(1).lower()
        if key.endswith("date"):
            key = key[:-4].rstrip(" _") + " date"  # "submit_date", "doneDate" -> "submit date"
        if key == "text":
            fields.setdefault(key, text[m.end() :].strip(_BLANKS))
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[m.end() : end]
        unknown = _UNKNOWN_KEY_RE.search(value)
        if unknown is not None:
            value = value[: unknown.start()]
        value = value.strip(_SEPARATORS)
        if key not in ("submit date", "done date"):
            words = value.split(maxsplit=1)  # ids and codes have no spaces
            value = words[0] if words else ""
        fields.setdefault(key, value)
    return fields


def _tlv_str(value: int | bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.split(b"\x00", 1)[0].decode("latin-1")
    elif isinstance(value, int):
        if not 0 <= value < 1 << 64:
            return None
        value = str(value)
    value = value.strip(_SEPARATORS)
    return value or None


def _tlv_int(value: int | bytes | str | None) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") if 1 <= len(value) <= 4 else None
    if isinstance(value, str) and _DECIMAL_RE.fullmatch(value := value.strip()) and len(value) <= 10:
        return int(value)
    return None


def _network_error(value: int | bytes | str | None) -> tuple[int, int] | None:
    # §5.3.2.31: one octet network type, two octets error code.
    if isinstance(value, bytes) and len(value) == 3:
        return value[0], int.from_bytes(value[1:], "big")
    if isinstance(value, int) and 0 <= value < 1 << 24:
        return value >> 16, value & 0xFFFF
    return None


def parse_receipt(
    short_message: bytes, tlvs: Mapping[str, int | bytes | str], *, esm_class: int | None = None
) -> Receipt:
    """Parse a delivery receipt from a deliver_sm's short_message and TLVs (keyed by name).

    TLVs first (receipted_message_id, message_state, network_error_code), then the
    Appendix B text. Raises ReceiptError, and nothing else, when neither holds a message
    id. If ``esm_class`` marks an intermediate notification (0x20) the state is INTERIM.
    """
    fields = _text_fields(_decode(short_message))

    message_id = _tlv_str(tlvs.get("receipted_message_id"))
    id_source: Literal["tlv", "text"] = "tlv"
    if message_id is None:
        message_id, id_source = fields.get("id") or None, "text"
    if message_id is None:
        raise ReceiptError("no message id in the receipt (no receipted_message_id TLV, no id: field)")

    text_stat = (fields.get("stat") or "").upper()
    tlv_stat = _MESSAGE_STATES.get(_tlv_int(tlvs.get("message_state")) or 0)
    stat = tlv_stat or text_stat
    state, reason = _STATS.get(stat, (ReceiptState.FAILED, "unknown"))
    if esm_class is not None and esm_class & _ESM_TYPE_MASK == _ESM_INTERMEDIATE:
        state, reason = ReceiptState.INTERIM, None

    return Receipt(
        message_id=message_id,
        id_source=id_source,
        state=state,
        stat=stat,
        reason=reason,
        err=fields.get("err") or None,
        network_error=_network_error(tlvs.get("network_error_code")),
        submit_date=fields.get("submit date") or None,
        done_date=fields.get("done date") or None,
        text=fields.get("text"),
    )


# --- message ids --------------------------------------------------------------------------


class MessageIdType(StrEnum):
    """How an SMSC writes message ids in submit_sm_resp ("resp") and in receipts ("dlr").

    The canonical key is a decimal string for hex/decimal ids, so the mixed types compare
    a hex resp id with a decimal receipt id (or the reverse). Kannel's msg-id-type.
    """

    AS_IS = "as_is"  # the same opaque string in both: compare case-insensitively
    HEX = "hex"  # hex in both
    DECIMAL = "decimal"  # decimal in both
    HEX_RESP_DECIMAL_DLR = "hex_resp_decimal_dlr"
    DECIMAL_RESP_HEX_DLR = "decimal_resp_hex_dlr"


_FORMATS: Final[dict[MessageIdType, tuple[str, str]]] = {  # type -> (resp format, dlr format)
    MessageIdType.AS_IS: ("as_is", "as_is"),
    MessageIdType.HEX: ("hex", "hex"),
    MessageIdType.DECIMAL: ("decimal", "decimal"),
    MessageIdType.HEX_RESP_DECIMAL_DLR: ("hex", "decimal"),
    MessageIdType.DECIMAL_RESP_HEX_DLR: ("decimal", "hex"),
}
# Longer hex numbers would exceed Python's int->str digit limit (4300 digits); SMPP ids
# are at most 64 characters, so such an id is garbage and keeps its as_is key.
_MAX_HEX_DIGITS: Final = 1000


def _strip_blank(text: str) -> str:
    """``text`` without leading and trailing NULs and whitespace in any mix (one pass: stripping
    one kind and then the other could leave the first kind exposed, e.g. "0\\x00\\x1f")."""
    start, end = 0, len(text)
    while start < end and (text[start] == "\x00" or text[start].isspace()):
        start += 1
    while end > start and (text[end - 1] == "\x00" or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


def normalize_message_id(raw: str, id_type: MessageIdType | str, *, source: Literal["resp", "dlr"]) -> str:
    """The key that matches a submit_sm_resp id with the ids in its receipts.

    ``id_type`` is the connector's MessageIdType (or its string value) and ``source`` says
    whether ``raw`` came from a submit_sm_resp or a receipt. Then
    ``normalize_message_id(resp_id, t, source="resp") == normalize_message_id(dlr_id, t,
    source="dlr")`` when both name the same message. hex and decimal ids become canonical
    decimal strings (so "00FF" hex and "255" decimal give "255"); as_is ids are stripped and
    lower-cased. An id that does not parse as its declared format falls back to the as_is
    key; this never raises for any ``raw``. Raises ValueError for an unknown ``id_type``.
    """
    resp_format, dlr_format = _FORMATS[MessageIdType(id_type)]
    if source not in ("resp", "dlr"):
        raise ValueError(f"source must be 'resp' or 'dlr', got {source!r}")
    fmt = resp_format if source == "resp" else dlr_format
    key = _strip_blank(raw)
    if fmt == "decimal" and _DECIMAL_RE.fullmatch(key):
        return key.lstrip("0") or "0"
    if fmt == "hex" and (m := _HEX_RE.fullmatch(key)) is not None:
        digits = m.group(1).lstrip("0") or "0"
        if len(digits) <= _MAX_HEX_DIGITS:
            return str(int(digits, 16))
    return key.lower()
