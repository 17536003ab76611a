"""Identifiers we put into outbound mail and must recognise when mail comes back. Pure, stdlib only.

Two kinds, both carrying an HMAC (SHA-256, key from ``[smtp] message_id_secret``) so nobody can
make one up:

- **Message-ID** (RFC 5322 §3.6.4): ``<MESSAGE.THREAD.TENANT.MAC@mail_domain>``. A reply's
  ``In-Reply-To``/``References`` then names the tenant and thread without a database lookup, and a
  forged or altered id (another tenant's thread, a guessed one) fails the MAC and is ignored.
- **VERP return path** (RFC 5321 §4.1.1.2 reverse-path, §4.5.5): ``bounce+MESSAGE.MAC@mail_domain``.
  A delivery status notification goes to the reverse-path (RFC 3464 §2.2.1 names the original
  envelope), so the address alone says which message bounced.

Local parts use lower-case letters, digits, ``_`` and ``.`` only (RFC 5322 §3.2.3 dot-atom), because
some mail systems lower-case local parts on the way back; parsing lower-cases before it checks.
The MAC keys are derived per purpose (``mid`` / ``verp``), so one kind cannot be passed off as the
other, and the domain is not covered: renaming ``mail_domain`` does not orphan old threads.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = [
    "BOUNCE_LOCAL",
    "EmailRef",
    "make_message_id",
    "make_verp",
    "parse_message_id",
    "parse_verp",
]

BOUNCE_LOCAL = "bounce"
_MID_MAC_HEX = 24  # 96 bits: a forgery needs ~2**96 tries per id
_VERP_MAC_HEX = 16  # 64 bits: a forged bounce can at most fail one message of ours
_ID_RE = re.compile(r"[a-z0-9_]{1,40}")
_MID_RE = re.compile(r"<?\s*([a-z0-9_.]{1,200})@([^<>@\s]{1,253})\s*>?")


@dataclass(frozen=True, slots=True)
class EmailRef:
    """What one of our Message-IDs says: the message, its thread, its tenant."""

    message_id: str
    thread_id: str
    tenant_id: str


def _mac(key: bytes, purpose: bytes, *fields: str, length: int) -> str:
    mac = hmac.new(key, purpose + b"\x00" + "\x00".join(fields).encode("ascii"), hashlib.sha256)
    return mac.hexdigest()[:length]


def _check_id(value: str, what: str) -> None:
    if not _ID_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-40 characters of a-z, 0-9 and _")


def make_message_id(key: bytes, domain: str, *, tenant_id: str, thread_id: str, message_id: str) -> str:
    """``<msg.thr.ten.mac@domain>`` (angle brackets included, as the header carries it)."""
    for value, what in ((message_id, "message id"), (thread_id, "thread id"), (tenant_id, "tenant id")):
        _check_id(value, what)
    mac = _mac(key, b"mid", message_id, thread_id, tenant_id, length=_MID_MAC_HEX)
    return f"<{message_id}.{thread_id}.{tenant_id}.{mac}@{domain}>"


def parse_message_id(key: bytes, value: str) -> EmailRef | None:
    """The reference in one of our Message-IDs; None for anything else (foreign, altered, forged)."""
    m = _MID_RE.fullmatch(value.strip().lower())
    if m is None:
        return None
    fields = m.group(1).split(".")
    if len(fields) != 4 or not all(_ID_RE.fullmatch(f) for f in fields[:3]):
        return None
    message_id, thread_id, tenant_id, mac = fields
    expected = _mac(key, b"mid", message_id, thread_id, tenant_id, length=_MID_MAC_HEX)
    if not hmac.compare_digest(mac, expected):
        return None
    return EmailRef(message_id=message_id, thread_id=thread_id, tenant_id=tenant_id)


def make_verp(key: bytes, domain: str, message_id: str) -> str:
    """The envelope sender for ``message_id``: ``bounce+msg_….mac@domain``."""
    _check_id(message_id, "message id")
    return f"{BOUNCE_LOCAL}+{message_id}.{_mac(key, b'verp', message_id, length=_VERP_MAC_HEX)}@{domain}"


def parse_verp(key: bytes, local_part: str) -> str | None:
    """The message id in a bounce address's local part (``bounce+TOKEN``); None unless it is ours."""
    base, sep, token = local_part.lower().partition("+")
    if base != BOUNCE_LOCAL or not sep:
        return None
    message_id, dot, mac = token.rpartition(".")
    if not dot or not _ID_RE.fullmatch(message_id) or len(mac) != _VERP_MAC_HEX:
        return None
    if not hmac.compare_digest(mac, _mac(key, b"verp", message_id, length=_VERP_MAC_HEX)):
        return None
    return message_id
