"""Inbound email decisions (issue 6): who may write (policy) and which thread a mail joins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.policy import (
    Deny,
    EmailSenderAllowed,
    SenderContact,
    auto_reply_marker,
    check_email_sender,
    trusted_domain_for,
)
from gateway.domain.threading import (
    MAX_REFERENCES,
    EmailCandidate,
    EmailRoute,
    reference_order,
    route_email,
)
from gateway.http.routes_attachments import content_disposition

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=15)


def cand(
    *,
    tenant: str = "ten_a",
    recipient: str | None = "jan@example.com",
    contact_pk: int | None = 1,
    age: timedelta = timedelta(days=1),
    via: str = "in_reply_to",
    mid: str = "msg_1",
    thread: str = "thr_1",
) -> EmailCandidate:
    return EmailCandidate(via, mid, thread, tenant, recipient, contact_pk, NOW - age)  # type: ignore[arg-type]


def sender(
    address: str = "jan@example.com",
    contacts: tuple[SenderContact, ...] = (SenderContact(1),),
    trusted: str | None = None,
) -> EmailSenderAllowed:
    return EmailSenderAllowed(address, contacts, trusted)


def route(s: EmailSenderAllowed, *candidates: EmailCandidate, tenant: str = "ten_a") -> EmailRoute | Deny:
    return route_email(
        tenant_id=tenant, sender=s, candidates=candidates, received_at=NOW, reply_window=WINDOW
    )


# --- policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "trusted", "expected"),
    [
        ("example.com", ["example.com"], "example.com"),
        ("mail.example.com", ["example.com"], "example.com"),
        ("MAIL.Example.COM.", ["example.com"], "example.com"),
        ("badexample.com", ["example.com"], None),  # labels compared whole
        ("example.com", ["mail.example.com"], None),  # a child does not cover its parent
        ("a.b.example.com", ["example.com", "b.example.com"], "b.example.com"),  # most specific
        ("example.com", [], None),
    ],
)
def test_trusted_domain_covers_itself_and_subdomains(
    domain: str, trusted: list[str], expected: str | None
) -> None:
    assert trusted_domain_for(domain, trusted) == expected


def test_a_contact_or_a_trusted_domain_may_write_nobody_else() -> None:
    ok = check_email_sender("Jan@Example.com", contacts=[SenderContact(7)], trusted_domains=[])
    assert ok == EmailSenderAllowed("jan@example.com", (SenderContact(7),), None)
    firm = check_email_sender("bob@sales.firm.pl", contacts=[], trusted_domains=["firm.pl"])
    assert firm == EmailSenderAllowed("bob@sales.firm.pl", (), "firm.pl")
    for address in ("eve@evil.example", None, "", "no-at-sign"):
        denied = check_email_sender(address, contacts=[], trusted_domains=["firm.pl"])
        assert isinstance(denied, Deny) and denied.reason == "sender_not_allowed"


def test_a_blocked_contact_passes_the_allowlist_and_is_refused_by_routing() -> None:
    allowed = check_email_sender(
        "jan@example.com", contacts=[SenderContact(1, blocked=True)], trusted_domains=[]
    )
    assert isinstance(allowed, EmailSenderAllowed)
    denied = route(allowed)
    assert isinstance(denied, Deny) and denied.reason == "contact_blocked"


# --- reference order -----------------------------------------------------------------------------------


def test_in_reply_to_first_then_references_newest_first_each_once() -> None:
    assert reference_order(["<c@x>"], ["<a@x>", "<b@x>", "<C@X>"]) == ["<c@x>", "<b@x>", "<a@x>"]
    assert reference_order([], []) == []


@given(st.lists(st.text(min_size=1, max_size=8)), st.lists(st.text(min_size=1, max_size=8)))
def test_reference_order_is_bounded_and_unique(irt: list[str], refs: list[str]) -> None:
    out = reference_order(irt, refs)
    assert len(out) <= MAX_REFERENCES
    keys = [m.strip().lower() for m in out]
    assert len(keys) == len(set(keys)) and all(keys)


# --- routing -------------------------------------------------------------------------------------------


def test_a_reply_joins_the_thread_of_the_message_it_answers() -> None:
    r = route(sender(), cand(thread="thr_9"))
    assert isinstance(r, EmailRoute) and (r.thread_id, r.contact_pk) == ("thr_9", 1)
    assert r.matched is not None and r.matched.via == "in_reply_to"


def test_another_tenants_message_or_one_sent_to_someone_else_does_not_count() -> None:
    other_tenant = cand(tenant="ten_b", thread="thr_b")
    someone_else = cand(recipient="anna@example.com", contact_pk=2, thread="thr_anna")
    token = cand(via="token", thread="thr_tok", mid="msg_t")
    r = route(sender(), other_tenant, someone_else, token)
    assert isinstance(r, EmailRoute) and r.thread_id == "thr_tok"
    r = route(sender(), other_tenant, someone_else)
    assert r == EmailRoute(None, 1, None)  # nothing matched: a new thread for the contact


def test_the_contacts_other_address_and_a_trusted_colleague_count() -> None:
    # Sent to the contact's main address, answered from its second one.
    r = route(sender("jan.private@example.org"), cand(recipient="jan@example.com", contact_pk=1))
    assert isinstance(r, EmailRoute) and r.thread_id == "thr_1"
    # Sent to anna@firm.pl (nobody's contact), answered by bob@firm.pl (trusted domain).
    colleague = sender("bob@firm.pl", contacts=(), trusted="firm.pl")
    r = route(colleague, cand(recipient="anna@firm.pl", contact_pk=None))
    assert r == EmailRoute("thr_1", None, cand(recipient="anna@firm.pl", contact_pk=None))
    # But not a message sent to another domain.
    assert route(colleague, cand(recipient="anna@other.pl", contact_pk=None)) == EmailRoute(None, None, None)


def test_the_reply_window_counts_from_the_answered_message_inclusive() -> None:
    assert isinstance(route(sender(), cand(age=WINDOW)), EmailRoute)
    old = route(sender(), cand(age=timedelta(days=16)))
    assert isinstance(old, Deny) and old.reason == "reply_too_old" and "16 days" in old.detail
    # A newer reference later in the list does not rescue it: the first match decides.
    assert isinstance(route(sender(), cand(age=timedelta(days=16)), cand(mid="msg_2")), Deny)


def test_the_contact_the_answered_message_went_to_wins() -> None:
    s = sender(contacts=(SenderContact(1), SenderContact(5)))
    r = route(s, cand(contact_pk=5, recipient="jan@example.com"))
    assert isinstance(r, EmailRoute) and r.contact_pk == 5
    assert route(s) == EmailRoute(None, 1, None)  # the oldest contact otherwise
    blocked_other = sender(contacts=(SenderContact(1), SenderContact(5, blocked=True)))
    assert isinstance(route(blocked_other), EmailRoute)
    denied = route(blocked_other, cand(contact_pk=5))
    assert isinstance(denied, Deny) and denied.reason == "contact_blocked"


# --- auto-replies and download headers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "marked"),
    [
        ({"Auto-Submitted": "auto-replied"}, True),
        ({"Auto-Submitted": "No"}, False),
        ({"Auto-Submitted": "no; comment"}, False),
        ({"X-Autoreply": "yes"}, True),
        ({"Precedence": "Auto_Reply"}, True),
        ({"Precedence": "bulk"}, False),
        ({}, False),
    ],
)
def test_auto_reply_markers_of_rfc_3834(headers: dict[str, str], marked: bool) -> None:
    lower = {k.lower(): v for k, v in headers.items()}
    assert (auto_reply_marker(lambda name: lower.get(name.lower())) is not None) == marked


def test_content_disposition_keeps_plain_names_and_encodes_the_rest() -> None:
    assert content_disposition("photo.jpg") == 'attachment; filename="photo.jpg"'
    value = content_disposition("faktura żółć.pdf")
    assert (
        value
        == "attachment; filename=\"faktura zoc.pdf\"; filename*=UTF-8''faktura%20%C5%BC%C3%B3%C5%82%C4%87.pdf"
    )


@given(st.text())
def test_content_disposition_is_one_ascii_header_whatever_the_name(name: str) -> None:
    value = content_disposition(name)
    assert value.isascii() and value.startswith('attachment; filename="')
    assert not any(c in value for c in "\r\n\x00")
    fallback = value.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback and "\\" not in fallback and "/" not in fallback
