"""The envelope of a message read from a mailbox (pure, stdlib only).

IMAP has no envelope: the sender and recipients SMTP would have told us are reconstructed from the
headers the delivering MTA added. ``Return-Path`` (RFC 5321 4.4) is the envelope sender;
``Delivered-To`` (Postfix, Dovecot LDA, qmail) and ``X-Original-To`` (Postfix) name the envelope
recipient of this copy. Without them, ``To`` and ``Cc`` are the best we have (a Bcc'd copy then
cannot be routed).
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from gateway.domain.inbound_mail import MailEnvelope

__all__ = ["MAX_HEADER_BYTES", "envelope_for", "header_block"]

#: Only this much of the message is parsed for the envelope: Python's header parser has quadratic
#: cases, and headers past this are not the MTA's trace headers we look for anyway (they are
#: prepended).
MAX_HEADER_BYTES = 256 * 1024

_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To")
_HEADER_HEADERS = ("To", "Cc")


def header_block(raw: bytes, limit: int = MAX_HEADER_BYTES) -> bytes:
    """The header section (RFC 5322 2.1: up to the first empty line), at most ``limit`` bytes.
    A bare-LF message is cut at its first empty line too."""
    head = raw[:limit]
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    return head[: min(ends)] + b"\r\n" if ends else head


def _addresses(values: list[str]) -> list[str]:
    out: list[str] = []
    for _name, addr in getaddresses(values):
        addr = addr.strip()
        if addr and "@" in addr:
            out.append(addr)
    return out


def _at_domain(addresses: list[str], domain: str) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for addr in addresses:
        local, _, dom = addr.rpartition("@")
        if not local or dom.lower().rstrip(".") != domain:
            continue
        key = addr.lower()
        if key not in seen:
            seen.add(key)
            out.append(addr)
    return out


def envelope_for(
    raw: bytes, *, poller: str, mail_domain: str, fixed_recipient: str | None = None
) -> MailEnvelope | None:
    """The envelope to hand the inbound pipeline, or None when no recipient at ``mail_domain`` can
    be found (recipient routing only; the message is then left for a person, see the poller).

    ``fixed_recipient`` (a tenant-bound poller: that tenant's current address) wins over the headers.
    Otherwise the envelope headers' addresses at ``mail_domain`` if there are any, else the
    To/Cc ones: a catch-all mailbox gets one copy per recipient, each with its own Delivered-To,
    so the headers would hand every copy to every tenant named in To/Cc.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_block(raw))
    return_path = headers.get("Return-Path")
    mail_from = parseaddr(str(return_path))[1].strip() if return_path is not None else ""
    via = f"imap:{poller}"
    if fixed_recipient is not None:
        return MailEnvelope(mail_from=mail_from, rcpt_tos=(fixed_recipient,), received_via=via)
    domain = mail_domain.lower().rstrip(".")

    def values(names: tuple[str, ...]) -> list[str]:
        return [str(v) for name in names for v in headers.get_all(name, [])]

    rcpts = _at_domain(_addresses(values(_ENVELOPE_HEADERS)), domain)
    if not rcpts:
        rcpts = _at_domain(_addresses(values(_HEADER_HEADERS)), domain)
    if not rcpts:
        return None
    return MailEnvelope(mail_from=mail_from, rcpt_tos=tuple(rcpts), received_via=via)
