"""What came back to a bounce address: a delivery status notification, an auto-reply, or neither.

Pure (stdlib ``email`` parser, no I/O). Used by the SMTP listener now and the IMAP poller later.

- A DSN is ``multipart/report; report-type=delivery-status`` (RFC 3462 §2, RFC 3464 §2) whose
  ``message/delivery-status`` part holds one per-message block and one block per recipient
  (§2.2, §2.3). A recipient block with ``Action: failed`` (§2.3.3) is a permanent failure; its
  ``Status`` (§2.3.4, an RFC 3463 enhanced code) and ``Diagnostic-Code`` (§2.3.6, usually the
  remote MTA's ``smtp; 550 …`` reply) become the message's failure reason. ``delayed`` only says
  the MTA keeps trying; ``delivered``/``relayed``/``expanded`` report success; none of those change
  anything on our side.
- An auto-reply (RFC 3834 §5: ``Auto-Submitted`` other than ``no``; the older ``X-Autoreply`` /
  ``X-Autorespond`` / ``Precedence: auto_reply`` markers) answers a message, it does not fail it.
  RFC 3834 §4 sends auto-replies to the return path, so they do arrive at bounce addresses.
  The DSN test comes first: MTAs mark their own DSNs ``Auto-Submitted: auto-replied`` too.
"""

from __future__ import annotations

import email
import email.message
import email.utils
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_REASON", "Report", "classify"]

#: ``messages.status_reason`` is VARCHAR(200).
MAX_REASON = 200

ReportKind = Literal["failed", "delayed", "other_dsn", "auto_reply", "unrecognised"]
_WS = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Report:
    """``kind`` says what it is. For ``failed``: ``status`` (``5.1.1``), ``diagnostic`` (the remote
    reply as the reporting MTA quotes it), ``recipient`` (Final-Recipient). ``original_message_id``
    comes from the returned message or headers, when the DSN includes them."""

    kind: ReportKind
    status: str | None = None
    diagnostic: str | None = None
    recipient: str | None = None
    action: str | None = None
    original_message_id: str | None = None
    detail: str = ""

    @property
    def reason(self) -> str:
        """The failure reason to store: ``5.1.1 smtp; 550 5.1.1 <jan@…>: User unknown``."""
        text = " ".join(p for p in (self.status, self.diagnostic) if p) or "bounced (no status given)"
        return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _clean(value: object) -> str | None:
    if value is None:
        return None
    text = _WS.sub(" ", str(value)).strip()
    return text or None


def _address(value: str | None) -> str | None:
    # RFC 3464 §2.3.2: "Final-Recipient: rfc822; jan@example.com" (address-type; address).
    if value is None:
        return None
    _, sep, address = value.partition(";")
    return (address if sep else value).strip() or None


def _auto_reply_marker(msg: email.message.Message) -> str | None:
    auto = _clean(msg.get("Auto-Submitted"))
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if msg.get(name) is not None:
            return name
    if (_clean(msg.get("Precedence")) or "").lower() == "auto_reply":
        return "Precedence: auto_reply"
    return None


def _original_message_id(report: email.message.Message) -> str | None:
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                return _clean(payload[0].get("Message-ID"))
        elif ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return _clean(email.message_from_bytes(raw).get("Message-ID"))
    return None


def _status_blocks(report: email.message.Message) -> list[email.message.Message]:
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):
                return [b for b in payload if isinstance(b, email.message.Message)]
            # An encoded body the parser did not split: parse it as blank-line separated blocks.
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                text = raw.replace(b"\r\n", b"\n")
                return [email.message_from_bytes(block) for block in text.split(b"\n\n") if block.strip()]
    return []


def classify(raw: bytes) -> Report:
    """Read ``raw`` (the message as received, CRLF or LF) and say what it is."""
    msg = email.message_from_bytes(raw)
    if msg.get_content_type() == "multipart/report":
        param = msg.get_param("report-type")
        report_type = email.utils.collapse_rfc2231_value(param).lower() if param else ""
        blocks = _status_blocks(msg) if report_type == "delivery-status" else []
        recipients = blocks[1:]  # blocks[0] holds the per-message fields (§2.2)
        if recipients:
            original = _original_message_id(msg)
            by_action: dict[str, email.message.Message] = {}
            for block in recipients:
                action = (_clean(block.get("Action")) or "").lower()
                by_action.setdefault(action, block)
            kinds: tuple[tuple[str, ReportKind], ...] = (("failed", "failed"), ("delayed", "delayed"))
            for action, kind in kinds:
                found = by_action.get(action)
                if found is not None:
                    return Report(
                        kind=kind,
                        status=_clean(found.get("Status")),
                        diagnostic=_clean(found.get("Diagnostic-Code")),
                        recipient=_address(_clean(found.get("Final-Recipient"))),
                        action=action,
                        original_message_id=original,
                    )
            first = recipients[0]
            return Report(
                kind="other_dsn",
                status=_clean(first.get("Status")),
                recipient=_address(_clean(first.get("Final-Recipient"))),
                action=(_clean(first.get("Action")) or "").lower() or None,
                original_message_id=original,
                detail="a delivery status notification that reports no failure",
            )
    marker = _auto_reply_marker(msg)
    if marker is not None:
        return Report(kind="auto_reply", detail=marker)
    return Report(kind="unrecognised", detail=f"{msg.get_content_type()} without a delivery status")
