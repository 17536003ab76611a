"""Phone numbers to E.164 (phonenumbers) and email addresses to one canonical form (email-validator).

Decisions:
- A number with ``+`` or ``00`` is international. Without them it is read in the configured default
  region; if that gives no valid number and it is all digits, it is read as international without
  the ``+``, because that is how carriers send them (SPEC 2.5: ``48500100200`` == ``+48500100200``).
- Email addresses are stored lower-cased whole. RFC 5321 lets a local part be case-sensitive, but
  no mailbox provider our tenants' customers use treats it so, and matching an inbound sender to a
  contact must not miss ``Jan.Kowalski@`` vs ``jan.kowalski@``. Domains are IDNA-normalised.
"""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import PhoneNumberType

from gateway.domain.model import Phone
from gateway.services.errors import InvalidInputError

_TYPE_NAMES = {v: k.lower() for k, v in vars(PhoneNumberType).items() if isinstance(v, int) and k.isupper()}


def parse_phone(raw: str, default_region: str, *, field: str = "phone") -> Phone:
    text = raw.strip()
    if not text or len(text) > 32:
        raise InvalidInputError(field, "is not a phone number")
    candidates: list[tuple[str, str | None]] = []
    if text.startswith("+"):
        candidates.append((text, None))
    elif text.startswith("00"):
        candidates.append(("+" + text[2:], None))
    else:
        candidates.append((text, default_region))
        digits = "".join(ch for ch in text if ch.isdigit())
        if digits == text.replace(" ", "").replace("-", ""):
            candidates.append(("+" + digits, None))
    for candidate, region in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return Phone(
                e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
                number_type=_TYPE_NAMES.get(phonenumbers.number_type(number), "unknown"),
                region=phonenumbers.region_code_for_number(number),
            )
    raise InvalidInputError(field, f"{raw!r} is not a valid phone number")


def normalize_email(raw: str, *, field: str = "email") -> str:
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInputError(field, f"{raw!r} is not a valid email address: {exc}") from None
    return result.normalized.lower()


def normalize_domain(raw: str, *, field: str = "domain") -> str:
    """A trusted domain: validated as the domain part of an address."""
    domain = raw.strip().lower().rstrip(".")
    try:
        result = validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError:
        raise InvalidInputError(field, f"{raw!r} is not a valid domain name") from None
    return result.ascii_domain.lower()
