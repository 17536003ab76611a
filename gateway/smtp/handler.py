"""What the SMTP listener does with each recipient and each message (aiosmtpd handler hooks).

Two kinds of recipient are ours (everything else is refused at RCPT, so we never accept mail we
cannot place and never relay):

- **Tenant mailboxes** ``PREFIX@mail_domain`` and ``PREFIX+token@mail_domain`` (any case), current or
  earlier prefix (SPEC 2.4): checked at RCPT through the inbound-email service's cached lookup; after
  the final dot the service decides and stores each recipient (gateway.services.inbound_email).
- **VERP bounce addresses** ``bounce+TOKEN@mail_domain`` (the token's HMAC checked at RCPT,
  gateway.domain.email_ids): the mail is classified (gateway.domain.dsn) and handed to the bounce
  service.

Replies (RFC 5321 §4.2, enhanced codes RFC 3463):

- RCPT: another domain ``550 5.7.1`` (relaying denied, X.7.1); our domain but no such mailbox
  ``550 5.1.1`` (bad destination mailbox, X.1.1); too many recipients ``452 4.5.3`` (RFC 5321
  §4.5.3.1.10).
- DATA: ``250`` once at least one recipient's mail is committed (SPEC 1: on disk before the yes);
  when every recipient refused, the first refusal's reply: ``550 5.7.1`` sender not allowed,
  DMARC failure or unverified sender (X.7.1 delivery not authorized), ``550 5.7.0`` reply window
  closed (X.7.0 other security/policy), ``550 5.6.0`` malformed message (X.6.0 media error),
  ``550 5.1.1`` unknown mailbox. Each refused recipient has its drop record either way. A failure
  while storing answers ``451 4.3.0`` (RFC 5321 §4.2.5: try again later), never our exception text:
  aiosmtpd's default ``handle_exception`` would send the peer the exception's class and message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.domain.dsn import classify
from gateway.domain.email_ids import parse_verp
from gateway.domain.inbound_mail import MailEnvelope, RecipientOutcome
from gateway.services.bounces import BounceMail, BounceService

log = logging.getLogger(__name__)

__all__ = ["InboundHandler", "refusal_reply"]

#: RFC 5321 §4.5.3.1.8: servers must take at least 100 recipients per transaction.
MAX_RECIPIENTS = 100

TEMPORARY_FAILURE = "451 4.3.0 Temporary server error, please try again later"

#: The reply for a refused message, by drop reason (see the module docstring).
_REFUSALS = {
    "sender_not_allowed": "550 5.7.1 Sender not allowed",
    "contact_blocked": "550 5.7.1 Sender not allowed",
    "dmarc_fail": "550 5.7.1 Sender fails the DMARC policy of its domain",
    "sender_unverified": "550 5.7.1 Sender could not be verified (no aligned DKIM or SPF pass)",
    "reply_too_old": "550 5.7.0 Reply window closed",
    "malformed": "550 5.6.0 Malformed message",
    "unknown_recipient": "550 5.1.1 No such mailbox here",
}


def refusal_reply(reason: str | None) -> str:
    """The SMTP reply for a message every recipient refused (the first refusal's reason)."""
    return _REFUSALS.get(reason or "", "550 5.7.1 Message refused")


class MailSink(Protocol):
    """gateway.services.inbound_email.InboundEmailService as the handler uses it."""

    async def resolve_recipient(self, address: str) -> object | None: ...

    async def receive(self, raw: bytes, envelope: MailEnvelope) -> list[RecipientOutcome]: ...


@dataclass(frozen=True, slots=True)
class BounceRecipient:
    address: str
    message_id: str


class InboundHandler:
    """aiosmtpd handler hooks (``handle_RCPT``, ``handle_DATA``, ``handle_exception``)."""

    def __init__(
        self,
        *,
        mail_domain: str,
        verp_key: bytes,
        bounces: BounceService,
        inbound: MailSink | None = None,
    ) -> None:
        self.mail_domain = mail_domain.lower().rstrip(".")
        self.verp_key = verp_key
        self.bounces = bounces
        self.inbound = inbound
        self.outcomes: Counter[str] = Counter()  # for /metrics
        self.in_data = 0
        self.idle = asyncio.Event()  # set while no DATA is being committed
        self.idle.set()

    def _ours(self, address: str) -> bool:
        _local, at, domain = address.rpartition("@")
        return bool(at) and domain.lower().rstrip(".") == self.mail_domain

    def resolve(self, address: str) -> BounceRecipient | None:
        """The bounce address ``address`` is, or None."""
        if not self._ours(address):
            return None
        message_id = parse_verp(self.verp_key, address.rpartition("@")[0])
        return BounceRecipient(address, message_id) if message_id else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if not self._ours(address):
            self.outcomes["rcpt_relay_denied"] += 1
            return "550 5.7.1 Relaying denied"
        if self.resolve(address) is None and (
            self.inbound is None or await self.inbound.resolve_recipient(address) is None
        ):
            self.outcomes["rcpt_refused"] += 1
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        bounces: list[BounceRecipient] = []
        mailboxes: list[str] = []
        for address in envelope.rcpt_tos:
            bounce = self.resolve(address)
            if bounce is not None:
                bounces.append(bounce)
            else:
                mailboxes.append(address)
        self.in_data += 1
        self.idle.clear()
        try:
            accepted = False
            if bounces:
                accepted = await self._bounces(raw, bounces, envelope.mail_from or "")
            outcomes: list[RecipientOutcome] = []
            if mailboxes and self.inbound is not None:
                peer = session.peer
                client_ip = peer[0] if isinstance(peer, tuple) and peer else None
                outcomes = await self.inbound.receive(
                    raw,
                    MailEnvelope(
                        mail_from=envelope.mail_from or "",
                        rcpt_tos=tuple(mailboxes),
                        received_via="smtp",
                        client_ip=str(client_ip) if client_ip else None,
                        helo=session.host_name or None,
                    ),
                )
        except Exception:
            log.exception("smtp: storing a message failed", extra={"recipients": len(envelope.rcpt_tos)})
            self.outcomes["error"] += 1
            return TEMPORARY_FAILURE
        finally:
            self.in_data -= 1
            if not self.in_data:
                self.idle.set()
        for o in outcomes:
            self.outcomes["mail:duplicate" if o.duplicate else f"mail:{o.reason or 'stored'}"] += 1
        if accepted or any(o.accepted for o in outcomes):
            return "250 2.0.0 OK"
        refused = next((o for o in outcomes if not o.accepted), None)
        return refusal_reply(refused.reason if refused else None)

    async def _bounces(self, raw: bytes, recipients: list[BounceRecipient], mail_from: str) -> bool:
        report = classify(raw)
        await self.bounces.receive(
            BounceMail(
                message_ids=tuple(r.message_id for r in recipients),
                recipients=tuple(r.address for r in recipients),
                mail_from=mail_from,
                report=report,
                size=len(raw),
            )
        )
        self.outcomes[f"bounce:{report.kind}"] += 1
        return True

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp session error", exc_info=error)
        self.outcomes["error"] += 1
        return TEMPORARY_FAILURE
