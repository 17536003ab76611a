"""Mail that comes back to a VERP bounce address (``bounce+TOKEN@mail_domain``): one SMTP transaction,
one transaction here, committed before the SMTP adapter answers 250 to DATA (SPEC 1).

The token names the message (gateway.domain.email_ids; the adapter has checked its HMAC at RCPT).
What the mail is decides what happens (gateway.domain.dsn):

- a DSN whose recipient block says ``Action: failed`` (RFC 3464 §2.3.3): the message becomes
  ``failed`` with the status and diagnostic code as reason, and ``message.status`` goes into the
  tenant's feed. It never becomes a conversation message and no sender allowlist applies. A
  failure of a message that is already final (``failed``, ``cancelled``) changes nothing;
- an auto-reply (RFC 3834): no status change and no alert, but a drop record (``auto_reply``) so the
  tenant can still see it; a DSN that reports no failure (``delayed``, ``delivered``): a drop
  record (``delivery_report``); anything else (a person writing to the return path, spam): a drop
  record (``not_a_bounce``). Nothing that came in is lost silently, and none of these alert.
- a token whose message no longer exists: an admin drop record (``unknown_message``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.dsn import Report
from gateway.storage import drops as drops_repo
from gateway.storage import jobs
from gateway.storage import messages as repo
from gateway.storage.db import Database

log = logging.getLogger(__name__)

#: A bounce can fail a message in any of these; ``sent`` is the usual one (the relay took it, the
#: next hop refused it), the others when the DSN overtakes our own bookkeeping.
_FAILABLE = ("queued", "scheduled", "sending", "sent")
_DROP_REASON = {
    "auto_reply": "auto_reply",
    "delayed": "delivery_report",
    "other_dsn": "delivery_report",
    "unrecognised": "not_a_bounce",
}


@dataclass(frozen=True, slots=True)
class BounceMail:
    """One received mail to bounce addresses: the message ids their tokens name (checked), the
    envelope, the classified content and its size."""

    message_ids: tuple[str, ...]
    recipients: tuple[str, ...]
    mail_from: str
    report: Report
    size: int


class BounceService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self.outcomes: Counter[str] = Counter()  # for /metrics

    async def receive(self, mail: BounceMail) -> list[str]:
        """Apply ``mail``; returns the outcome per message id. Returns only after the commit."""
        now = self.clock()

        async def unit(conn: AsyncConnection) -> list[str]:
            return [
                await self._one(conn, mid, rcpt, mail, now)
                for mid, rcpt in zip(mail.message_ids, mail.recipients, strict=True)
            ]

        outcomes = await self.db.write(unit)
        self.outcomes.update(outcomes)
        log.info(
            "bounce address mail",
            extra={"kind": mail.report.kind, "messages": list(mail.message_ids), "outcomes": outcomes},
        )
        return outcomes

    async def _one(
        self, conn: AsyncConnection, message_id: str, recipient: str, mail: BounceMail, now: datetime
    ) -> str:
        report = mail.report
        message = await repo.get_message(conn, message_id)
        if message is None or message["direction"] != "outbound" or message["channel"] != "email":
            await drops_repo.record_drop(
                conn,
                announce=False,
                channel="email",
                tenant_id=None,
                reason="unknown_message",
                sender=mail.mail_from,
                recipient=recipient,
                size_bytes=mail.size,
                detail=f"{report.kind} for a message that does not exist: {message_id}",
                now=now,
            )
            return "unknown_message"
        if report.kind == "failed":
            reason = report.reason
            if not await repo.set_message_status(
                conn, message_id, "failed", now, reason=reason, only_from=_FAILABLE
            ):
                return "already_final"
            await jobs.cancel_for_message(conn, message_id, now=now)  # a send still queued: not any more
            payload = {
                "message_id": message_id,
                "channel": "email",
                "status": "failed",
                "thread_id": message["thread_id"],
                "reason": reason,
                "bounce": {
                    "status": report.status,
                    "diagnostic": report.diagnostic,
                    "recipient": report.recipient,
                },
            }
            await repo.add_event(conn, message["tenant_id"], "message.status", payload, now)
            return "failed"
        drop_reason = _DROP_REASON[report.kind]
        detail = f"about {message_id}: " + (
            f"{report.action} {report.status or ''}".strip()
            if report.kind in ("delayed", "other_dsn")
            else report.detail
        )
        await drops_repo.record_drop(
            conn,
            announce=False,
            channel="email",
            tenant_id=message["tenant_id"],
            reason=drop_reason,
            sender=mail.mail_from,
            recipient=recipient,
            size_bytes=mail.size,
            detail=detail,
            now=now,
        )
        return drop_reason
