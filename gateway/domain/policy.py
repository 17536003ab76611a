"""Policy decisions: may this message go out on this channel? Pure functions returning decisions.

Adapters map a :class:`Deny` to their protocol (HTTP 422 with the reason per channel, SMTP 550 …);
domain code never formats protocol replies.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from gateway.domain.model import Contact, Phone


@dataclass(frozen=True, slots=True)
class Deny:
    """A refusal. ``reason`` is one of the SPEC 2.3 codes (``sms_opt_out``, ``not_mobile``, …)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SmsTarget:
    """The number an SMS will go to."""

    phone: Phone


def choose_sms_phone(contact: Contact) -> Phone | Deny:
    """The contact's first number that can receive SMS (the first number is the main one)."""
    if not contact.phones:
        return Deny("no_phone", "the contact has no phone number")
    for phone in contact.phones:
        if phone.can_receive_sms:
            return phone
    return Deny("not_mobile", f"{contact.phones[0].e164} is a {contact.phones[0].number_type} number")


def check_sms(
    contact: Contact | None,
    phone: Phone | Deny,
    *,
    category: str,
    allowed_regions: Collection[str],
    parts: int,
    max_parts: int,
) -> SmsTarget | Deny:
    """Everything about an SMS that can be decided without the database (credits and senders can't).

    ``contact`` is None for a bare ``to.phone`` that matches no contact: then there is no consent on
    record, and transactional messages are allowed while marketing ones are not.
    """
    if contact is not None and contact.blocked:
        return Deny("contact_blocked", "the contact is blocked")
    if isinstance(phone, Deny):
        return phone
    if not phone.can_receive_sms:
        return Deny("not_mobile", f"{phone.e164} is a {phone.number_type} number")
    if phone.region not in allowed_regions:
        return Deny("region_not_allowed", f"{phone.e164} is in {phone.region}, not in [sms] allowed_regions")
    if contact is not None and not contact.consent.sms:
        return Deny("sms_opt_out", "the contact has opted out of SMS")
    if category == "marketing" and (contact is None or not contact.consent.marketing):
        return Deny("no_marketing_consent", "marketing needs the contact's marketing consent")
    if parts > max_parts:
        return Deny("too_many_parts", f"the text needs {parts} parts; at most {max_parts} are allowed")
    return SmsTarget(phone)


@dataclass(frozen=True, slots=True)
class EmailTarget:
    """The address an email will go to (normalised; ``needs_smtputf8`` for a non-ASCII local part,
    RFC 6531: only a relay that offers SMTPUTF8 may carry it)."""

    address: str
    needs_smtputf8: bool = False


def choose_email(contact: Contact) -> str | Deny:
    """The contact's first address (the first one is the main one, like phones)."""
    if not contact.emails:
        return Deny("no_email", "the contact has no email address")
    return contact.emails[0]


def check_email(contact: Contact | None, address: EmailTarget | Deny, *, category: str) -> EmailTarget | Deny:
    """May an email go out? The same order of reasons as :func:`check_sms`.

    ``contact`` is None for a bare ``to.email`` that matches no contact: transactional mail is
    allowed (the business was given the address), marketing is not (no consent on record).
    """
    if contact is not None and contact.blocked:
        return Deny("contact_blocked", "the contact is blocked")
    if isinstance(address, Deny):
        return address
    if contact is not None and not contact.consent.email:
        return Deny("email_opt_out", "the contact has opted out of email")
    if category == "marketing" and (contact is None or not contact.consent.marketing):
        return Deny("no_marketing_consent", "marketing needs the contact's marketing consent")
    return address


# --- inbound email (issue 6, SPEC 1 "Policy") ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderContact:
    """One of the tenant's contacts that has the sender's address (as stored: ``pk``, ``blocked``)."""

    pk: int
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class EmailSenderAllowed:
    """The sender may write to the tenant: as a contact (``contacts``, oldest first; which one the
    message is linked to is the threading decision's) and/or from a trusted domain (``trusted_domain``
    is the tenant's entry that covers the address, for linking to no contact)."""

    address: str
    contacts: tuple[SenderContact, ...]
    trusted_domain: str | None


def trusted_domain_for(domain: str, trusted_domains: Collection[str]) -> str | None:
    """The tenant's trusted domain covering ``domain`` (itself or a parent domain), most specific
    first; None when none does. ``mail.example.com`` is covered by ``example.com``; ``badexample.com``
    is not (labels are compared whole)."""
    d = domain.lower().rstrip(".")
    best: str | None = None
    for t in trusted_domains:
        t = t.lower().rstrip(".")
        if t and (d == t or d.endswith("." + t)) and (best is None or len(t) > len(best)):
            best = t
    return best


def check_email_sender(
    address: str | None,
    *,
    contacts: Sequence[SenderContact],
    trusted_domains: Collection[str],
) -> EmailSenderAllowed | Deny:
    """Who may write to a tenant: the From address is an email of one of its contacts, or its domain
    (or a parent domain) is trusted. Anything else is ``sender_not_allowed``. A blocked contact is
    refused later (``contact_blocked``), once threading has said which contact the mail is from."""
    if not address or "@" not in address:
        return Deny("sender_not_allowed", "the message has no usable From address")
    address = address.lower()
    trusted = trusted_domain_for(address.rpartition("@")[2], trusted_domains)
    if not contacts and trusted is None:
        return Deny(
            "sender_not_allowed", f"{address} is not a contact's address and its domain is not trusted"
        )
    return EmailSenderAllowed(address, tuple(contacts), trusted)


def auto_reply_marker(header: Callable[[str], str | None]) -> str | None:
    """Why a message is an automatic reply (RFC 3834 §5 ``Auto-Submitted`` other than ``no``; the
    older ``X-Autoreply`` / ``X-Autorespond`` / ``Precedence: auto_reply``), or None. ``header``
    returns a field's first value. Inbound email keeps such mail in its thread, marked, without
    announcing it (an out-of-office answer is no customer writing back)."""
    auto = (header("Auto-Submitted") or "").strip()
    if auto and auto.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {auto[:100]}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if (header(name) or "").strip():
            return f"{name}: {(header(name) or '').strip()[:100]}"
    if (header("Precedence") or "").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    return None
