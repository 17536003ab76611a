"""Policy decisions: may this message go out on this channel? Pure functions returning decisions.

Adapters map a :class:`Deny` to their protocol (HTTP 422 with the reason per channel, SMTP 550 …);
domain code never formats protocol replies.
"""

from __future__ import annotations

from collections.abc import Collection
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
