"""Phone and email normalisation: every spelling of a number is the same E.164; junk is a clear error."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gateway.domain.mailbox import prefix_from_name, prefix_problem, split_recipient
from gateway.services.errors import InvalidInputError
from gateway.services.normalize import normalize_domain, normalize_email, parse_phone

REGIONS = ["PL", "DE", "GB", "FR", "US", "UA", "CZ", "ES"]


def spellings(region: str) -> tuple[str, list[tuple[str, str]]]:
    number = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    return e164, [
        (e164, "PL"),
        (international, "PL"),
        ("00" + e164[1:], "PL"),
        (e164[1:], "PL"),  # as carriers send it: international without '+' (SPEC 2.5)
        (national, region),  # national form, read in the configured default region
    ]


@given(st.sampled_from(REGIONS), st.data())
def test_every_spelling_is_the_same_e164(region: str, data: st.DataObject) -> None:
    e164, forms = spellings(region)
    text, default_region = data.draw(st.sampled_from(forms))
    phone = parse_phone(text, default_region)
    assert phone.e164 == e164
    assert phone.region == region


def test_polish_examples() -> None:
    for text in ("+48 500 100 200", "48500100200", "0048500100200", "500-100-200", "500100200"):
        assert parse_phone(text, "PL").e164 == "+48500100200"
    assert parse_phone("+48500100200", "PL").number_type == "mobile"
    assert parse_phone("+48 22 123 45 67", "PL").number_type == "fixed_line"


@given(st.text(max_size=40))
def test_junk_numbers_raise_a_field_error_only(text: str) -> None:
    try:
        phone = parse_phone(text, "PL", field="phones[3]")
    except InvalidInputError as exc:
        assert exc.field == "phones[3]"
    else:
        assert phone.e164.startswith("+") and phone.e164[1:].isdigit()


@given(st.text(max_size=80))
def test_junk_emails_raise_a_field_error_only(text: str) -> None:
    try:
        email = normalize_email(text, field="emails[0]")
    except InvalidInputError as exc:
        assert exc.field == "emails[0]"
    else:
        assert email == email.lower() and "@" in email


def test_email_and_domain_normalisation() -> None:
    assert normalize_email(" Jan.Kowalski@Example.COM ") == "jan.kowalski@example.com"
    assert normalize_domain("Kowalski.PL.") == "kowalski.pl"
    assert normalize_domain("łódź.pl") == "xn--d-uga0v4h.pl"
    with pytest.raises(InvalidInputError):
        normalize_domain("not a domain")


@given(st.text(max_size=60))
def test_prefix_from_any_name_is_valid(name: str) -> None:
    assert prefix_problem(prefix_from_name(name)) is None


def test_prefix_rules_and_subaddress() -> None:
    assert prefix_from_name("Serwis Łódź 24") == "serwis-lodz-24"
    assert prefix_problem("serwis-kowalski") is None
    assert prefix_problem("ab") and prefix_problem("Serwis") and prefix_problem("abuse")
    assert split_recipient("Serwis+T123") == ("serwis", "T123")
    assert split_recipient("serwis") == ("serwis", None)
