"""Which tenant, contact and thread an inbound message belongs to. Pure decisions, time passed in.

SMS (SPEC 2.5, issue 4): a mobile-originated message is a reply only when it comes from a customer
number to a pool number that a tenant used for that customer within the reply window; it then
joins the thread of the last outbound SMS to that customer from that number. The sticky allocation
rule (gateway.domain.senders) makes the (pool number, customer number) pair name one tenant.

Email (SPEC 2.4, issue 6): ``In-Reply-To``, then ``References`` newest first, then the thread token of
the recipient's ``+part``. A candidate counts only when it names a message of *this* tenant that was
sent to *this* sender (the contact, or an address in the trusted domain the sender is allowed by):
holding someone's Message-ID is not enough to post into their thread (Chatwoot's global lookup is
the counter-example). The first candidate that counts wins; its age decides the reply window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.domain.policy import Deny, EmailSenderAllowed, trusted_domain_for

__all__ = [
    "MAX_REFERENCES",
    "EmailCandidate",
    "EmailRoute",
    "SmsAssignment",
    "SmsReply",
    "reference_order",
    "route_email",
    "route_sms_reply",
]


@dataclass(frozen=True, slots=True)
class SmsAssignment:
    """The sender assignment for (pool number, customer number), as stored, with what routing needs
    of its tenant and contact. ``contact_*`` describe the contact the reply is linked to: the
    assignment's own, else (resolved by the caller) one of the tenant's contacts with that number."""

    tenant_id: str
    last_used_at: datetime
    last_thread_id: str | None
    tenant_reply_window_days: int | None  # the tenant's override; None = the configured default
    contact_pk: int | None
    contact_blocked: bool = False


@dataclass(frozen=True, slots=True)
class SmsReply:
    """Allow: store the reply for ``tenant_id``/``contact_pk`` in ``thread_id`` (None: the caller finds
    or opens the contact's conversation, as when the last thread was deleted)."""

    tenant_id: str
    contact_pk: int | None
    thread_id: str | None


def route_sms_reply(
    *,
    destination_is_pool: bool,
    assignment: SmsAssignment | None,
    sent_at: datetime,
    reply_window: timedelta,
) -> SmsReply | Deny:
    """Decide where an MO goes. ``sent_at`` is when the customer sent it (its first part arrived).

    Deny reasons: ``unknown_destination`` (not a number of ours: an alphanumeric sender cannot be
    answered at all, GSM 03.40), ``unsolicited`` (we never wrote to this customer from that number),
    ``reply_too_old`` (the last outbound use is older than the window), ``contact_blocked``.
    The window is inclusive: a reply exactly ``reply_window`` after our message still counts, the
    same boundary the allocation rule uses to keep the pair for the tenant.
    """
    if not destination_is_pool:
        return Deny("unknown_destination", "the destination is not a number of the sender pool")
    if assignment is None:
        return Deny("unsolicited", "no message was sent to this customer from this number")
    window = reply_window
    if assignment.tenant_reply_window_days is not None:
        window = timedelta(days=assignment.tenant_reply_window_days)
    if sent_at - assignment.last_used_at > window:
        age = sent_at - assignment.last_used_at
        return Deny(
            "reply_too_old",
            f"the last message to this customer is {age.days} days old (window {window.days})",
        )
    if assignment.contact_blocked:
        return Deny("contact_blocked", "the contact is blocked")
    return SmsReply(assignment.tenant_id, assignment.contact_pk, assignment.last_thread_id)


# --- email -----------------------------------------------------------------------------------------

#: At most this many Message-IDs of one mail are looked up (In-Reply-To first, then References
#: newest first). A References header can list hundreds; the newest ones are the ones that matter.
MAX_REFERENCES = 20

Via = Literal["in_reply_to", "references", "token"]


def reference_order(in_reply_to: Sequence[str], references: Sequence[str]) -> list[str]:
    """The Message-IDs to try, in order: ``In-Reply-To`` as written, then ``References`` newest first
    (RFC 5322 §3.6.4 lists them oldest first, the parent last); each once, at most MAX_REFERENCES."""
    out: list[str] = []
    seen: set[str] = set()
    for mid in (*in_reply_to, *reversed(references)):
        key = mid.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(mid.strip())
            if len(out) >= MAX_REFERENCES:
                break
    return out


@dataclass(frozen=True, slots=True)
class EmailCandidate:
    """A message of ours that the mail may answer, as stored: named by one of our Message-IDs (MAC
    checked by the caller) or the newest outbound email of the thread a ``+token`` names."""

    via: Via
    message_id: str
    thread_id: str
    tenant_id: str
    recipient: str | None  # the address it was sent to
    contact_pk: int | None
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class EmailRoute:
    """Allow: store in ``thread_id`` (None: open a new thread), linked to ``contact_pk`` (None: a
    trusted-domain sender who is nobody's contact). ``matched`` is the message answered, if any."""

    thread_id: str | None
    contact_pk: int | None
    matched: EmailCandidate | None = None


def _sent_to(candidate: EmailCandidate, sender: EmailSenderAllowed) -> bool:
    """Was ``candidate`` sent to this sender? The same address; or the contact the sender is (an
    answer from the contact's other address); or, for a sender allowed by a trusted domain, an
    address in that domain (a colleague answering for the addressee)."""
    recipient = (candidate.recipient or "").lower()
    if recipient and recipient == sender.address:
        return True
    if candidate.contact_pk is not None and any(c.pk == candidate.contact_pk for c in sender.contacts):
        return True
    if sender.trusted_domain is not None and "@" in recipient:
        return trusted_domain_for(recipient.rpartition("@")[2], (sender.trusted_domain,)) is not None
    return False


def route_email(
    *,
    tenant_id: str,
    sender: EmailSenderAllowed,
    candidates: Sequence[EmailCandidate],
    received_at: datetime,
    reply_window: timedelta,
) -> EmailRoute | Deny:
    """Which thread an allowed sender's mail joins, or why it is refused.

    ``candidates`` are in the order of :func:`reference_order`, token last. The first one of this
    tenant sent to this sender wins. Nothing matches: a new thread (SPEC 2.4), also for a contact
    writing afresh (a new subject is a new conversation; the tenant's application sees it as such).
    Deny reasons: ``reply_too_old`` (the answered message is older than ``reply_window``; inclusive
    like SMS), ``contact_blocked`` (the contact the mail is linked to is blocked).

    The contact: the one the answered message went to when the sender is that contact, else the
    tenant's oldest contact with the address (SMS does the same with numbers), else none.
    """
    matched = next(
        (c for c in candidates if c.tenant_id == tenant_id and _sent_to(c, sender)),
        None,
    )
    contact = sender.contacts[0] if sender.contacts else None
    if matched is not None and matched.contact_pk is not None:
        contact = next((c for c in sender.contacts if c.pk == matched.contact_pk), contact)
    if matched is not None and received_at - matched.sent_at > reply_window:
        age = received_at - matched.sent_at
        return Deny(
            "reply_too_old",
            f"the answered message {matched.message_id} is {age.days} days old (window {reply_window.days})",
        )
    if contact is not None and contact.blocked:
        return Deny("contact_blocked", "the contact is blocked")
    return EmailRoute(
        matched.thread_id if matched else None,
        contact.pk if contact else None,
        matched,
    )
