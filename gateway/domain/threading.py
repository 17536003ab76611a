"""Which tenant, contact and thread an inbound message belongs to. Pure decisions, time passed in.

SMS (SPEC 2.5, issue 4): a mobile-originated message is a reply only when it comes from a customer
number to a pool number that a tenant used for that customer within the reply window; it then
joins the thread of the last outbound SMS to that customer from that number. The sticky allocation
rule (gateway.domain.senders) makes the (pool number, customer number) pair name one tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain.policy import Deny

__all__ = ["SmsAssignment", "SmsReply", "route_sms_reply"]


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
