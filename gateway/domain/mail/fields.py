"""What the top-level header fields say: addresses (RFC 5322 §3.4), the date (§3.3), message ids
(§3.6.4) and one-line display text (the subject, display names). Every parse of attacker data is
guarded and bounded."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime

from gateway.domain.mail.decoding import _decode_encoded_words
from gateway.domain.mail.headers import _CTRL_RE

#: An address header longer than this (after unfolding) is parsed only up to here: the address
#: parser is pure Python and the value is not bounded by the per-line cap (continuation lines).
_MAX_ADDRESS_HEADER = 64 * 1024
#: Keep at most this many recipients per To/Cc, and the newest this many References.
_MAX_ADDRESSES = 1000
_MAX_REFERENCES = 100
#: RFC 5322 §2.1.1 line limit; also the width of ``messages.subject``.
_MAX_SUBJECT = 998

_MSGID_RE = re.compile(r"<[^<>\s]{1,995}>")


def _clean_line(value: str) -> str:
    """One-line display text: encoded-words decoded, line breaks and other controls removed."""
    return _CTRL_RE.sub("", _decode_encoded_words(value)).strip()


def _valid_address(addr: str) -> str | None:
    addr = addr.strip()
    if len(addr) > 320 or addr.count("@") != 1 or any(c.isspace() or ord(c) < 32 or c in "<>," for c in addr):
        return None
    local, _, domain = addr.partition("@")
    if not local or not domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return None
    return f"{local}@{domain.lower()}"


def _addresses(values: list[str], problems: list[str], what: str) -> list[tuple[str, str]]:
    clipped: list[str] = []
    for value in values:
        if len(value) > _MAX_ADDRESS_HEADER:
            problems.append(f"{what}: header longer than {_MAX_ADDRESS_HEADER} characters, rest ignored")
            value = value[:_MAX_ADDRESS_HEADER]
        clipped.append(value)
    try:
        pairs = getaddresses(clipped)
    except Exception:
        problems.append(f"{what}: unparseable address list")
        return []
    return [(name, addr) for name, addr in pairs if name or addr]


def _address_list(values: list[str], problems: list[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()
    for _, addr in _addresses(values, problems, what):
        valid = _valid_address(addr)
        if valid is not None and valid.lower() not in seen:
            seen.add(valid.lower())
            out.append(valid)
            if len(out) >= _MAX_ADDRESSES:
                problems.append(f"{what}: more than {_MAX_ADDRESSES} addresses, rest ignored")
                break
    return tuple(out)


def _date(value: str | None, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value[:200])
    except Exception:
        problems.append("Date: unparseable, ignored")
        return None
    # RFC 5322 §3.3: "-0000" means the time is UTC and says nothing about the local zone.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _msg_ids(value: str | None) -> list[str]:
    return _MSGID_RE.findall(value) if value else []


def _message_id(value: str | None) -> str | None:
    ids = _msg_ids(value)
    if ids:
        return ids[0]
    # Some mailers omit the angle brackets (RFC 5322 §3.6.4 requires them): accept one bare token.
    bare = (value or "").strip()
    if bare and "@" in bare and len(bare) < 995 and not any(c.isspace() or c in "<>" for c in bare):
        return f"<{bare}>"
    return None
