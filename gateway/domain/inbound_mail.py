"""The plain data that crosses between the mail adapters (SMTP listener, IMAP poller) and the
inbound-email service (issue 6). Pure, stdlib only.

An adapter hands the service the raw message and its envelope; the service answers one decision per
recipient. The adapter maps decisions to its protocol (SMTP reply codes, IMAP flags); the service
never formats protocol replies (ARCHITECTURE "Rules of the house" 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["InboundMailSink", "MailEnvelope", "RecipientOutcome"]


@dataclass(frozen=True, slots=True)
class MailEnvelope:
    """How the message reached us. ``received_via`` is ``smtp`` or ``imap:<poller name>``;
    ``client_ip``/``helo`` are None when unknown (IMAP: SPF cannot be checked)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    received_via: str = "smtp"
    client_ip: str | None = None
    helo: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """One recipient's decision. ``accepted``: stored (or recognised as already stored) and committed.
    Otherwise ``reason`` is the drop reason (``sender_not_allowed``, ``dmarc_fail``,
    ``sender_unverified``, ``reply_too_old``, ``contact_blocked``, ``unknown_recipient``,
    ``malformed``, ...) and a drop record was committed. ``message_id`` is the stored message's id."""

    address: str
    accepted: bool
    reason: str | None = None
    detail: str | None = None
    message_id: str | None = None
    duplicate: bool = False


class InboundMailSink(Protocol):
    """What the SMTP handler and the IMAP poller call. Returns only after the commit; raises for a
    temporary failure (the adapter answers 451 / leaves the IMAP message unmarked to retry)."""

    async def receive(self, raw: bytes, envelope: MailEnvelope) -> list[RecipientOutcome]: ...
