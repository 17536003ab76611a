"""Composition: what the tenant wrote arrives exactly (encoded-words, quoted-printable), headers
never gain a line, the bytes are deterministic."""

from __future__ import annotations

import email
import email.policy
import email.utils
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.ports import OutgoingEmail
from gateway.smtp.mime import build, encode_phrase, encode_unstructured

# Unicode text without surrogates or controls (the API refuses NUL; other C0/C1 controls are rare).
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=300)
one_line = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=200)


def mail(**kw: object) -> OutgoingEmail:
    base: dict[str, object] = {
        "ref": "msg_0123456789abcdef",
        "envelope_from": "bounce+x@mail.example.com",
        "recipient": "jan@example.com",
        "from_address": "serwis@mail.example.com",
        "from_name": "Serwis Łódź",
        "to_name": "Jan Kowalski",
        "subject": "Zamówienie",
        "text": "Dzień dobry",
        "html": None,
        "message_id": "<msg_0123456789abcdef.a.b.c@mail.example.com>",
        "date": datetime(2026, 11, 24, 12, 0, tzinfo=UTC),
    }
    base.update(kw)
    return OutgoingEmail(**base)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_lines(raw: bytes) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


@given(one_line.filter(lambda s: s.strip() == s and "  " not in s and s.strip()))
def test_subjects_round_trip(subject: str) -> None:
    raw = build(mail(subject=subject))
    assert parse(raw)["Subject"] == subject
    assert all(len(line) <= 998 for line in header_lines(raw))  # RFC 5322 §2.1.1
    assert raw.split(b"\r\n\r\n")[0].isascii()  # non-ASCII only as encoded-words (RFC 2047)


def display_name(raw: bytes, header: str) -> tuple[str, str]:
    # Decoded as RFC 2047 §6.2 says (white space between adjacent encoded-words is dropped); the
    # modern email.policy parser keeps a space there in phrases, a CPython quirk we do not test.
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    name, address = email.utils.parseaddr(str(msg[header]).replace("\r\n", ""))
    return str(make_header(decode_header(name))), address


@given(one_line.filter(lambda s: s.strip() == s and "  " not in s and s.strip()))
def test_display_names_round_trip(name: str) -> None:
    raw = build(mail(from_name=name, to_name=name))
    assert display_name(raw, "From") == (name, "serwis@mail.example.com")
    assert display_name(raw, "To") == (name, "jan@example.com")


@given(texts, st.one_of(st.none(), texts))
def test_bodies_round_trip(text: str, html: str | None) -> None:
    raw = build(mail(text=text, html=html))
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only (RFC 5322 §2.3)
    msg = parse(raw)
    parts = [msg] if html is None else list(msg.iter_parts())
    norm = [t.replace("\r\n", "\n").replace("\r", "\n") for t in ([text] if html is None else [text, html])]
    for part, expected in zip(parts, norm, strict=True):
        got = str(part.get_content()).replace("\r\n", "\n")
        assert got.rstrip("\n") == expected.rstrip("\n")
    assert build(mail(text=text, html=html)) == raw  # deterministic: a retry sends the same bytes


@given(st.lists(st.sampled_from(["\r", "\n", "\r\n", "X-Evil: 1", "Bcc: a@b.c", "ok", " "]), max_size=8))
def test_line_breaks_never_make_a_header(pieces: list[str]) -> None:
    value = "A" + "".join(pieces)
    raw = build(mail(subject=value, from_name=value, to_name=value, in_reply_to="<a@b>" + value))
    names = [line.split(b":", 1)[0] for line in header_lines(raw) if not line.startswith((b" ", b"\t"))]
    assert b"X-Evil" not in names and b"Bcc" not in names


def test_plain_ascii_stays_readable() -> None:
    raw = build(mail(subject="Order 1042 is ready", from_name="Bike Shop", text="Hello\nBye"))
    assert b"Subject: Order 1042 is ready\r\n" in raw
    assert b"From: Bike Shop <serwis@mail.example.com>\r\n" in raw
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\nHello\r\nBye\r\n" in raw
    assert encode_phrase('Kowalski, Jan "JK"') == '"Kowalski, Jan \\"JK\\""'  # RFC 5322 §3.2.4
    assert encode_unstructured("=?utf-8?q?not_a_word?=", "Subject").startswith("=?utf-8?")
    assert b"In-Reply-To" not in raw and b"References" not in raw


def test_threading_headers() -> None:
    refs = tuple(f"<m{n}@example.com>" for n in range(3))
    msg = parse(build(mail(in_reply_to=refs[-1], references=refs)))
    assert msg["In-Reply-To"] == refs[-1]
    assert str(msg["References"]).split() == list(refs)
