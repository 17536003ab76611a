"""Hostile-MIME parsing: a corpus of what attackers and broken mailers send, and property tests that
nothing but MailFormatError ever comes out of the parser."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import html as html_lib
import time
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.domain.mail_parse import (
    MailFormatError,
    MimeLimits,
    ParsedMail,
    html_to_text,
    parse_mail,
    safe_filename,
)

HEAD = (
    b"From: Jan Kowalski <Jan@Example.COM>\r\n"
    b"To: serwis@mail.example.com\r\n"
    b"Subject: Re: order\r\n"
    b"Date: Mon, 24 Nov 2025 10:00:00 +0100\r\n"
    b"Message-ID: <reply-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
)


def mixed(*parts: bytes, boundary: bytes = b"XX", close: bool = True, head: bytes = HEAD) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    end = b"--" + boundary + b"--\r\n" if close else b""
    return (
        head
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\nThis is a MIME message.\r\n'
        + body
        + end
    )


TEXT_PART = b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe text that must survive."


def attachment(disposition: bytes, data: bytes = b"payload", ctype: bytes = b"application/pdf") -> bytes:
    return (
        b"Content-Type: " + ctype + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data)
    )


def one_attachment_name(disposition: bytes) -> str:
    mail = parse_mail(mixed(TEXT_PART, attachment(disposition)))
    assert mail.text == "The text that must survive."
    assert len(mail.attachments) == 1
    assert mail.attachments[0].data == b"payload"
    return mail.attachments[0].filename


# --- the ordinary message -------------------------------------------------------------------------


def test_plain_reply_fields() -> None:
    raw = (
        b"From: =?utf-8?q?Jan_Kowalski?= <Jan@Example.COM>\r\n"
        b'To: serwis@mail.example.com, "Biuro" <biuro@mail.example.com>\r\n'
        b"Cc: x@example.org\r\n"
        b"Subject: =?utf-8?b?WmHFvMOzxYLEhw==?=\r\n =?utf-8?b?IGfEmcWbbMSFIGphxbrFhA==?= ok\r\n"
        b"Date: Mon, 24 Nov 2025 10:00:00 +0100\r\n"
        b"Message-ID: <reply-1@example.com>\r\n"
        b"In-Reply-To: <orig@mail.example.com>\r\n"
        b"References: <first@mail.example.com>\r\n <orig@mail.example.com>\r\n"
        b"\r\n"
        b"Dzie\xc5\x84 dobry\r\nline two\r\n"
    )
    mail = parse_mail(raw)
    assert mail.from_header_count == 1
    assert mail.from_address == "Jan@example.com"  # domain lower-cased, local part as written
    assert mail.from_name == "Jan Kowalski"
    assert mail.to == ("serwis@mail.example.com", "biuro@mail.example.com")
    assert mail.cc == ("x@example.org",)
    assert mail.subject == "Zażółć gęślą jaźń ok"
    assert mail.date == datetime(2025, 11, 24, 9, 0, tzinfo=UTC)
    assert mail.message_id == "<reply-1@example.com>"
    assert mail.in_reply_to == ("<orig@mail.example.com>",)
    assert mail.references == ("<first@mail.example.com>", "<orig@mail.example.com>")
    assert mail.text == "Dzień dobry\nline two\n"
    assert mail.html is None
    assert mail.attachments == ()
    assert mail.problems == ()
    assert mail.header_block == raw[: raw.index(b"\r\n\r\n") + 2]
    assert mail.header("subject") is not None


def test_lf_line_ends_and_no_body() -> None:
    mail = parse_mail(b"From: a@example.com\nSubject: hi\n")
    assert mail.from_address == "a@example.com"
    assert mail.subject == "hi"
    assert mail.text == ""


def test_alternative_picks_plain_and_keeps_html() -> None:
    alt = (
        b"Content-Type: multipart/alternative; boundary=YY\r\n\r\n"
        b"--YY\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        b"\r\nDzie=C5=84 dobry=\r\n, soft break\r\n"
        b"--YY\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Dzie&nacute; <b>dobry</b></p>\r\n"
        b"--YY--"
    )
    mail = parse_mail(mixed(alt))
    assert mail.text == "Dzień dobry, soft break"
    assert mail.html == "<p>Dzie&nacute; <b>dobry</b></p>"
    assert mail.attachments == ()


def test_html_only_gives_derived_text() -> None:
    raw = HEAD + (
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><title>T</title><style>p{}</style></head><body>"
        b"<p>Hello&nbsp;&amp; welcome</p><script>alert(1)</script><ul><li>one</li><li>two</li></ul>"
        b"line<br>break</body></html>"
    )
    mail = parse_mail(raw)
    assert mail.html is not None
    assert mail.text == "Hello & welcome\n\n- one\n- two\n\nline\nbreak"


def test_inline_image_with_content_id_is_an_attachment() -> None:
    related = (
        b"Content-Type: multipart/related; boundary=RR\r\n\r\n"
        b"--RR\r\nContent-Type: text/html\r\n\r\n<img src=cid:logo@x>\r\n"
        b"--RR\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"\x89PNG....") + b"--RR--"
    )
    mail = parse_mail(mixed(related))
    (img,) = mail.attachments
    assert img.content_type == "image/png"
    assert img.content_id == "logo@x"
    assert img.inline is True
    assert img.data == b"\x89PNG...."
    assert img.sha256 == hashlib.sha256(b"\x89PNG....").hexdigest()
    assert img.filename == "part-1.png"


def test_forwarded_message_is_one_attachment() -> None:
    inner = b"From: other@example.org\r\nSubject: inner\r\n\r\ninner text\r\n"
    mail = parse_mail(mixed(TEXT_PART, b"Content-Type: message/rfc822\r\n\r\n" + inner))
    assert mail.text == "The text that must survive."
    (fwd,) = mail.attachments
    assert (fwd.filename, fwd.content_type, fwd.data) == ("forwarded-message.eml", "message/rfc822", inner)


def test_text_attachment_is_not_the_body() -> None:
    mail = parse_mail(mixed(TEXT_PART, attachment(b'attachment; filename="notes.txt"', b"x", b"text/plain")))
    assert mail.text == "The text that must survive."
    assert [a.filename for a in mail.attachments] == ["notes.txt"]


# --- hostile filenames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (b'attachment; filename="../../../etc/passwd"', "passwd"),
        (b'attachment; filename="/etc/shadow"', "shadow"),
        (b'attachment; filename="..\\\\..\\\\windows\\\\system32\\\\evil.dll"', "evil.dll"),
        (b'attachment; filename="C:\\\\boot.ini"', "boot.ini"),
        (b"attachment; filename*=utf-8''%2e%2e%2fetc%2fpasswd", "passwd"),
        (b"attachment; filename*=utf-8''%2e%2e", "part-1.pdf"),
        (b'attachment; filename=".."', "part-1.pdf"),
        (b'attachment; filename="."', "part-1.pdf"),
        (b'attachment; filename=""', "part-1.pdf"),
        (b"attachment; filename*=utf-8''a%00b%0d%0a.pdf", "ab.pdf"),
        (b'attachment; filename="a\x01b\x7fc.pdf"', "abc.pdf"),
        (b"attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe", "invoicefdp.exe"),  # U+202E RLO
        (b'attachment; filename="=?utf-8?b?WmHFvMOzxYLEhy5wZGY=?="', "Zażółć.pdf"),
        (b'attachment; filename="=?utf-8?q?=2E=2E=2F=2E=2E=2Fx=2Epdf?="', "x.pdf"),
        (b"attachment; filename*0*=utf-8''Za%C5%BC; filename*1*=%C3%B3%C5%82%C4%87.pdf", "Zażółć.pdf"),
        (b"attachment; filename*=iso-8859-2''%BF%F3%B3%E6.pdf", "żółć.pdf"),
        (
            b'attachment; filename="Za\xc5\xbc\xc3\xb3\xc5\x82\xc4\x87.pdf"',
            "Zażółć.pdf",
        ),  # RFC 6532 raw UTF-8
        (b'attachment; filename="caf\xe9.pdf"', "café.pdf"),  # undeclared latin-1
        (b'attachment; filename="e\xcc\x81.pdf"', "é.pdf"),  # decomposed -> NFC
        (b"inline; filename=report.pdf", "report.pdf"),
    ],
)
def test_hostile_filenames(disposition: bytes, expected: str) -> None:
    assert one_attachment_name(disposition) == expected


def test_long_filename_is_bounded_and_keeps_extension() -> None:
    name = one_attachment_name(b'attachment; filename="' + "ż".encode() * 400 + b'.pdf"')
    assert len(name.encode()) <= 255
    assert name.endswith(".pdf")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, "fallback.bin"),
        ("", "fallback.bin"),
        ("...", "fallback.bin"),
        ("a/b/", "b"),
        ("foo/..", "foo"),
        ("  spaced\tname .txt  ", "spaced name .txt"),
        ("\u2028x", "x"),
    ],
)
def test_safe_filename_cases(name: str | None, expected: str) -> None:
    assert safe_filename(name, fallback="fallback.bin") == expected


def test_safe_filename_fallback_is_sanitised_too() -> None:
    assert safe_filename(None, fallback="../..") == "attachment"
    assert safe_filename("..", fallback="x/y.txt") == "y.txt"


# --- structure limits -----------------------------------------------------------------------------


def nested(levels: int) -> bytes:
    head = b""
    tail = b""
    for i in range(levels):
        head += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        tail = b"\r\n--b%d--\r\n" % i + tail
    return HEAD + head + b"Content-Type: text/plain\r\n\r\ndeep text" + tail


def test_thousand_nested_multiparts_are_cut_at_max_depth() -> None:
    started = time.process_time()
    mail = parse_mail(nested(1000))
    assert time.process_time() - started < 5  # CPython's parser needs quadratic time, then recurses out
    assert any("nesting deeper than 10" in p for p in mail.problems)
    assert mail.text == ""


def test_nesting_within_the_limit_is_read() -> None:
    assert parse_mail(nested(10)).text == "deep text"
    assert parse_mail(nested(11)).text == ""


def test_text_survives_next_to_a_deep_bomb() -> None:
    bomb = nested(500)[len(HEAD) :]
    mail = parse_mail(mixed(TEXT_PART, bomb))
    assert mail.text == "The text that must survive."
    assert any("nesting deeper" in p for p in mail.problems)


def test_ten_thousand_parts_keep_the_first_hundred() -> None:
    parts = [TEXT_PART] + [attachment(b"attachment; filename=f%d.bin" % i) for i in range(9999)]
    mail = parse_mail(mixed(*parts))
    assert mail.text == "The text that must survive."
    assert len(mail.attachments) == 99
    assert mail.attachments[-1].filename == "f98.bin"
    assert any("more than 100 parts, the rest skipped" in p for p in mail.problems)


def test_part_over_the_size_limit_keeps_no_bytes() -> None:
    limits = MimeLimits(max_part_bytes=1000)
    mail = parse_mail(
        mixed(TEXT_PART, attachment(b"attachment; filename=big.bin", b"x" * 1001), attachment(b"attachment")),
        limits,
    )
    assert mail.text == "The text that must survive."
    big, small = mail.attachments
    assert (big.filename, big.problem, big.data, big.size, big.sha256) == (
        "big.bin",
        "over_size_limit",
        b"",
        1001,
        "",
    )
    assert small.problem is None and small.data == b"payload"
    assert any("big.bin" in p for p in mail.problems)


def test_text_part_over_the_size_limit_is_not_the_text() -> None:
    mail = parse_mail(HEAD + b"\r\n" + b"y" * 2000, MimeLimits(max_part_bytes=1000))
    assert mail.text == ""
    assert mail.attachments[0].problem == "over_size_limit"


# --- malformed structure --------------------------------------------------------------------------


def test_missing_close_delimiter_keeps_the_last_part() -> None:
    mail = parse_mail(mixed(TEXT_PART, attachment(b"attachment; filename=a.pdf"), close=False))
    assert mail.text == "The text that must survive."
    assert [a.data for a in mail.attachments] == [b"payload"]
    assert any("close delimiter" in p for p in mail.problems)


def test_boundary_that_never_occurs_reads_the_body_as_text() -> None:
    raw = HEAD + b"Content-Type: multipart/mixed; boundary=NOPE\r\n\r\nJust text, no parts.\r\n"
    mail = parse_mail(raw)
    assert "Just text, no parts." in mail.text
    assert any("no usable boundary" in p for p in mail.problems)


def test_multipart_without_boundary_parameter() -> None:
    mail = parse_mail(HEAD + b"Content-Type: multipart/mixed\r\n\r\nhello\r\n")
    assert mail.text == "hello\n"


def test_boundary_with_transport_padding_and_prefix_lookalike() -> None:
    raw = (
        HEAD
        + b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
        + b"--B  \r\n\r\nfirst\r\n--Bogus line stays in the text\r\n--B--\t\r\n"
    )
    assert parse_mail(raw).text == "first\r\n--Bogus line stays in the text".replace("\r\n", "\n")


def test_base64_garbage_and_bad_padding() -> None:
    good = base64.b64encode(b"hello world").rstrip(b"=")
    part = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    mail = parse_mail(mixed(TEXT_PART, part + b"!!" + good[:4] + b"\x00\xff" + good[4:], part + b"A", part))
    assert mail.text == "The text that must survive."
    assert mail.attachments[0].data == b"hello world"
    assert mail.attachments[1].data == b""


def test_quoted_printable_garbage_passes_through() -> None:
    raw = HEAD + b"Content-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape and =\r\nsoft =C3=A9"
    assert parse_mail(raw).text == "bad =ZZ escape and soft é"


def test_undeclared_8bit_and_unknown_charsets() -> None:
    assert parse_mail(HEAD + b"\r\ncaf\xc3\xa9").text == "café"  # undeclared UTF-8
    assert parse_mail(HEAD + b"\r\ncaf\xe9").text == "café"  # undeclared legacy 8-bit
    mail = parse_mail(HEAD + b"Content-Type: text/plain; charset=x-klingon\r\n\r\ncaf\xc3\xa9")
    assert mail.text == "café"
    assert any("unknown charset" in p for p in mail.problems)
    mail = parse_mail(HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xe9 ok")
    assert mail.text == "caf\ufffd ok"
    assert parse_mail(
        HEAD + b"Content-Type: text/plain; charset=iso-8859-2\r\n\r\n\xbf\xf3\xb3\xe6"
    ).text == ("żółć")
    # codecs that are not text encodings are ignored rather than run
    assert parse_mail(HEAD + b"Content-Type: text/plain; charset=unicode_escape\r\n\r\n\\x41").text == "\\x41"


def test_8bit_headers() -> None:
    raw = b"From: J\xc3\xb3zef <jozef@example.com>\r\nSubject: caf\xe9 \x00ok\r\n\r\nx"
    mail = parse_mail(raw)
    assert mail.from_name == "Józef"
    assert mail.subject == "café ok"


def test_unusable_content_type_and_long_subject() -> None:
    raw = b"From: a@example.com\r\nSubject: " + b"s" * 8000 + b"\r\nContent-Type: te\x00xt/pl ain\r\n\r\nx"
    mail = parse_mail(raw)
    assert len(mail.subject) == 998
    assert mail.text == ""
    assert mail.attachments[0].content_type == "application/octet-stream"
    assert mail.attachments[0].data == b"x"


def test_subject_has_no_line_breaks() -> None:
    raw = b"From: a@example.com\r\nSubject: =?utf-8?q?one=0D=0Atwo?=\r\n\tthree\r\n\r\n"
    assert parse_mail(raw).subject == "onetwo\tthree"


# --- From and the header caps ---------------------------------------------------------------------


def test_two_from_headers_are_counted() -> None:
    mail = parse_mail(b"From: a@example.com\r\nFrom: b@evil.example\r\n\r\nx")
    assert mail.from_header_count == 2


def test_from_with_two_mailboxes_gives_no_address() -> None:
    mail = parse_mail(b"From: a@example.com, b@evil.example\r\n\r\nx")
    assert mail.from_header_count == 1
    assert mail.from_address is None
    assert any("2 mailboxes" in p for p in mail.problems)


@pytest.mark.parametrize("value", [b"", b"not an address", b"<>", b"a@@b", b"a@b..c", b"@example.com"])
def test_unusable_from(value: bytes) -> None:
    mail = parse_mail(b"From: " + value + b"\r\n\r\nx")
    assert mail.from_address is None


def test_no_from() -> None:
    mail = parse_mail(b"Subject: x\r\n\r\nbody")
    assert (mail.from_header_count, mail.from_address) == (0, None)


def test_header_count_cap() -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(499))
    parse_mail(b"From: a@example.com\r\n" + fields + b"\r\nx")  # exactly 500: fine
    with pytest.raises(MailFormatError) as info:
        parse_mail(b"From: a@example.com\r\n" + fields + b"X-One-More: v\r\n\r\nx")
    assert info.value.reason == "too_many_headers"


def test_continuation_lines_belong_to_their_field() -> None:
    folded = b"Subject: a\r\n" + b" b\r\n" * 2000
    mail = parse_mail(b"From: a@example.com\r\n" + folded + b"\r\nx")
    assert mail.subject.startswith("a b b")


def test_header_line_cap() -> None:
    ok = b"From: a@example.com\r\nX-Long: " + b"a" * (8192 - 8) + b"\r\n\r\nx"
    parse_mail(ok)
    with pytest.raises(MailFormatError) as info:
        parse_mail(b"From: a@example.com\r\nX-Long: " + b"a" * 8192 + b"\r\n\r\nx")
    assert info.value.reason == "header_line_too_long"
    with pytest.raises(MailFormatError):  # also with no line break at all
        parse_mail(b"From: " + b"a" * 10000)


def test_the_line_cap_is_for_header_lines_only() -> None:
    long_body_line = b"x" * 20000
    assert parse_mail(HEAD + b"\r\n" + long_body_line).text == long_body_line.decode()
    # no blank line: the first line that is not a field starts the body, whatever its length
    assert parse_mail(b"From: a@example.com\r\n" + long_body_line).text == long_body_line.decode()


def test_part_header_caps_skip_the_part_only() -> None:
    bad = b"Content-Type: application/pdf; name=" + b"x" * 9000 + b"\r\n\r\ndata"
    mail = parse_mail(mixed(TEXT_PART, bad))
    assert mail.text == "The text that must survive."
    assert mail.attachments == ()
    assert any("part 2: skipped" in p for p in mail.problems)


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\nbody only", b"no header here\r\n\r\n", b"\x00\xff"])
def test_no_header_section(raw: bytes) -> None:
    with pytest.raises(MailFormatError) as info:
        parse_mail(raw)
    assert info.value.reason == "no_header_section"


def test_header_section_ends_at_a_non_header_line() -> None:
    mail = parse_mail(b"From: a@example.com\r\nthis is body\r\nmore\r\n")
    assert mail.from_address == "a@example.com"
    assert mail.text == "this is body\nmore\n"


def test_mbox_from_line_is_skipped() -> None:
    mail = parse_mail(b"From a@example.com Mon Nov 24 10:00:00 2025\r\nFrom: a@example.com\r\n\r\nx")
    assert mail.from_header_count == 1


# --- dates and ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Mon, 24 Nov 2025 10:00:00 -0000", datetime(2025, 11, 24, 10, 0, tzinfo=UTC)),
        (b"24 Nov 2025 10:00 +0530", datetime(2025, 11, 24, 10, 0, tzinfo=timezone(timedelta(hours=5.5)))),
        (b"yesterday", None),
        (b"Mon, 99 Nov 99999 99:99:99 +9999", None),
    ],
)
def test_dates(value: bytes, expected: datetime | None) -> None:
    mail = parse_mail(b"From: a@example.com\r\nDate: " + value + b"\r\n\r\n")
    assert mail.date == expected
    assert mail.date is None or mail.date.tzinfo is not None


def test_message_ids() -> None:
    raw = (
        b"From: a@example.com\r\nMessage-ID: bare@example.com\r\n"
        b"In-Reply-To: <p@x> (your message of Monday)\r\nReferences: junk <a@x>,<b@x>\r\n\r\n"
    )
    mail = parse_mail(raw)
    assert mail.message_id == "<bare@example.com>"
    assert mail.in_reply_to == ("<p@x>",)
    assert mail.references == ("<a@x>", "<b@x>")


def test_references_keep_the_newest() -> None:
    refs = b" ".join(b"<r%d@x>" % i for i in range(300))
    mail = parse_mail(b"From: a@example.com\r\nReferences: " + refs + b"\r\n\r\n")
    assert len(mail.references) == 100
    assert mail.references[-1] == "<r299@x>"


# --- html_to_text ---------------------------------------------------------------------------------


def test_html_to_text_edge_cases() -> None:
    assert html_to_text("<pre>a\n  b</pre>c") == "a\n  b\n\nc"
    assert html_to_text("<div><div>one</div></div><div>two<br/>three</div>") == "one\ntwo\nthree"
    assert html_to_text("<html><head><title>t</title><body>unclosed head</body>") == "unclosed head"
    assert html_to_text("<table><tr><td>1</td><td>2</td></tr></table>") == "1 2"
    assert html_to_text("<script>never closed") == ""
    assert html_to_text("&lt;b&gt; &#x41; &bogus;") == "<b> A &bogus;"
    assert html_to_text("<![if !supportLists]>x<![endif]>") == "x"


# --- properties -----------------------------------------------------------------------------------

VALID = mixed(
    b"Content-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    b"--YY\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--YY--",
    attachment(b"attachment; filename*=utf-8''%C5%BC.pdf"),
    b"Content-Type: message/rfc822\r\n\r\nFrom: x@y\r\n\r\nfwd",
)


def parse_or_refuse(raw: bytes, limits: MimeLimits | None = None) -> ParsedMail | None:
    try:
        return parse_mail(raw, limits or MimeLimits())
    except MailFormatError:
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    parse_or_refuse(raw)
    parse_or_refuse(b"From: a@example.com\r\n" + raw)
    parse_or_refuse(b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n" + raw)


TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--",
    b"--XX",
    b"--XX--",
    b"--YY",
    b":",
    b";",
    b"=",
    b'"',
    b"=?utf-8?b?",
    b"?=",
    b"=?x?q?=ZZ?=",
    b"*=utf-8''%",
    b"filename",
    b"boundary=",
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b" ",
    b"\t",
    b"<",
    b">",
    b"@",
    b"(",
    b"\\",
]


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    raw = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if action == "insert":
            raw[pos:pos] = draw(st.sampled_from(TOKENS) | st.binary(max_size=8))
        elif action == "delete":
            del raw[pos : pos + draw(st.integers(1, 40))]
        elif action == "replace":
            raw[pos : pos + 1] = draw(st.binary(min_size=1, max_size=1))
        else:
            end = min(len(raw), pos + draw(st.integers(1, 200)))
            raw[pos:pos] = raw[pos:end]
    return bytes(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutations_of_a_valid_message_never_raise_anything_else(raw: bytes) -> None:
    mail = parse_or_refuse(raw, MimeLimits(max_parts=5, max_depth=3))
    if mail is not None:
        assert "\n" not in mail.subject and "\r" not in mail.subject
        for a in mail.attachments:
            assert "/" not in a.filename and a.filename not in ("", ".", "..")
            assert a.size == len(a.data) or a.problem == "over_size_limit"


def test_the_unmutated_message() -> None:
    mail = parse_mail(VALID)
    assert mail.text == "hi"
    assert [a.filename for a in mail.attachments] == ["ż.pdf", "forwarded-message.eml"]


@given(st.one_of(st.none(), st.text(max_size=300), st.from_regex(r"[./\\\x00-\x1f ]{0,12}", fullmatch=True)))
def test_safe_filename_properties(name: str | None) -> None:
    out = safe_filename(name, fallback="attachment")
    assert out and out not in (".", "..")
    assert "/" not in out and "\\" not in out
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in out)
    assert len(out.encode("utf-8")) <= 255
    assert out == out.strip()
    assert unicodedata.is_normalized("NFC", out)


@given(st.text(max_size=500))
def test_html_to_text_never_raises(html: str) -> None:
    html_to_text(html)
    html_to_text("<p>" + html + "<script>" + html)


# --- differential: what the stdlib composes, we read as the stdlib reads it -----------------------

body_text = st.text(
    st.characters(whitelist_categories=("L", "N", "P", "Zs", "S")) | st.just("\n"), max_size=400
)
# (the stdlib refuses to write line breaks into a header; safe_filename's own tests cover them)
file_names = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=120)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(body_text, st.lists(st.tuples(file_names, st.binary(max_size=300)), max_size=4), st.booleans())
def test_agrees_with_the_stdlib_on_well_formed_mail(
    text: str, files: list[tuple[str, bytes]], with_html: bool
) -> None:
    msg = EmailMessage()
    msg["From"] = "Jan <jan@example.com>"
    msg["Subject"] = "hello"
    msg.set_content(text)
    if with_html:
        msg.add_alternative("<p>" + html_lib.escape(text) + "</p>", subtype="html")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    raw = msg.as_bytes(policy=email.policy.SMTP)

    oracle = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(oracle, EmailMessage)
    mail = parse_mail(raw)
    plain = oracle.get_body(("plain",))
    assert plain is not None
    assert mail.text == plain.get_content().replace("\r\n", "\n")
    if with_html:
        html_part = oracle.get_body(("html",))
        assert html_part is not None
        assert mail.html == html_part.get_content().replace("\r\n", "\n")
    expected = [
        (safe_filename(name, fallback=f"part-{i}.bin"), data) for i, (name, data) in enumerate(files, start=1)
    ]
    assert [(a.filename, a.data) for a in mail.attachments] == expected
    assert mail.problems == ()
