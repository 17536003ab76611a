"""What the SMTP listener does with each recipient and each message (aiosmtpd handler hooks).

For now it accepts one kind of recipient: our VERP bounce addresses (``bounce+TOKEN@mail_domain``,
the token's HMAC checked at RCPT time, gateway.domain.email_ids). Everything else gets ``550 5.1.1``
at RCPT (RFC 5321 §3.3, RFC 3463 X.1.1), so we never accept mail we cannot place and never relay.

- After the final dot the mail is classified (gateway.domain.dsn) and handed to the bounce service,
  which commits before we answer ``250`` (SPEC 1: accepted mail is on disk first). A failure there
  answers ``451 4.3.0`` (RFC 5321 §4.2.5: try again later), never our exception text: aiosmtpd's
  default ``handle_exception`` would send the peer the exception's class and message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.domain.dsn import classify
from gateway.domain.email_ids import parse_verp
from gateway.services.bounces import BounceMail, BounceService

log = logging.getLogger(__name__)

__all__ = ["InboundHandler"]

#: RFC 5321 §4.5.3.1.8: servers must take at least 100 recipients per transaction.
MAX_RECIPIENTS = 100


@dataclass(frozen=True, slots=True)
class BounceRecipient:
    address: str
    message_id: str


class InboundHandler:
    """aiosmtpd handler hooks (``handle_RCPT``, ``handle_DATA``, ``handle_exception``)."""

    def __init__(self, *, mail_domain: str, verp_key: bytes, bounces: BounceService) -> None:
        self.mail_domain = mail_domain.lower().rstrip(".")
        self.verp_key = verp_key
        self.bounces = bounces
        self.outcomes: Counter[str] = Counter()  # for /metrics
        self.in_data = 0
        self.idle = asyncio.Event()  # set while no DATA is being committed
        self.idle.set()

    def resolve(self, address: str) -> BounceRecipient | None:
        """What a recipient address is to us, or None (refused at RCPT)."""
        local, at, domain = address.rpartition("@")
        if not at or domain.lower().rstrip(".") != self.mail_domain:
            return None
        message_id = parse_verp(self.verp_key, local)
        return BounceRecipient(address, message_id) if message_id else None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if self.resolve(address) is None:
            self.outcomes["rcpt_refused"] += 1
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipients = [r for r in (self.resolve(a) for a in envelope.rcpt_tos) if r is not None]
        self.in_data += 1
        self.idle.clear()
        try:
            report = classify(raw)
            await self.bounces.receive(
                BounceMail(
                    message_ids=tuple(r.message_id for r in recipients),
                    recipients=tuple(r.address for r in recipients),
                    mail_from=envelope.mail_from or "",
                    report=report,
                    size=len(raw),
                )
            )
        finally:
            self.in_data -= 1
            if not self.in_data:
                self.idle.set()
        self.outcomes[f"bounce:{report.kind}"] += 1
        return "250 2.0.0 OK"

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp session error", exc_info=error)
        self.outcomes["error"] += 1
        return "451 4.3.0 Temporary server error, please try again later"
