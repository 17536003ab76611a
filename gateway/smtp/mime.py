"""Composing an outbound email (RFC 5322 + MIME) as bytes, CRLF line endings, ready for DKIM and DATA.

Written out by hand rather than through ``email.message.EmailMessage`` + generator: the layout is
fixed, it is several times faster (this runs for every message), and the output is deterministic
(the boundary comes from the Message-ID), so a retried send produces the same bytes.

- Headers (RFC 5322 §3.6): From and Reply-To the tenant's mailbox, To the contact, Subject, Date
  (§3.3), Message-ID (§3.6.4), In-Reply-To/References when answering, MIME-Version (RFC 2045 §4).
  No Return-Path: the final MTA adds it from our envelope sender (RFC 5321 §4.4).
- Non-ASCII display names and subjects become RFC 2047 encoded-words (§5(3) in phrases, §5(1) in
  unstructured text); a subject that merely *looks* like an encoded-word (``=?``) is encoded too,
  so a mail client shows exactly what the tenant wrote. A non-ASCII address (only for SMTPUTF8,
  RFC 6531/6532 §3.2) is written as UTF-8.
- Header lines are folded at white space to stay under 78 characters where possible and always
  under 998 (RFC 5322 §2.1.1, §2.2.3). CR and LF never reach a header: the API refuses them, and
  whatever older data carries them is turned into spaces here (no header injection, ever).
- Body: ``text/plain; charset=utf-8``, 7bit when it is ASCII with short lines, else
  quoted-printable (RFC 2045 §6.7); with ``html``, ``multipart/alternative`` (RFC 2046 §5.1.4),
  plain text first (the least preferred alternative first), both parts quoted-printable. The
  boundary starts with ``=_``, which quoted-printable output can never contain (RFC 2045 §6.7 (1)).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from email.header import Header
from email.utils import format_datetime

from gateway.domain.ports import OutgoingEmail

__all__ = ["build", "encode_phrase", "encode_unstructured", "mailbox"]

CRLF = b"\r\n"
_LINE_BREAKS = re.compile(r"[\r\n]+")
# RFC 5322 §3.2.3 atext plus space: a display name made of these needs no quoting.
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")


def _one_line(value: str) -> str:
    return _LINE_BREAKS.sub(" ", value).strip()


def encode_phrase(name: str) -> str:
    """A display name (RFC 5322 §3.2.5 phrase): as is, quoted, or RFC 2047 encoded-words."""
    name = _one_line(name)
    if not name:
        return ""
    if name.isascii() and "=?" not in name:
        if _ATOM_PHRASE.fullmatch(name):
            return name
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'  # §3.2.4 quoted-string
    return Header(name, "utf-8").encode(linesep="\r\n")


def encode_unstructured(value: str, header_name: str) -> str:
    """An unstructured field body (Subject): folded ASCII, or encoded-words (RFC 2047 §5(1))."""
    value = _one_line(value)
    charset = "us-ascii" if value.isascii() and "=?" not in value else "utf-8"
    return Header(value, charset, header_name=header_name).encode(linesep="\r\n")


def mailbox(name: str, address: str) -> str:
    """``"Name" <address>`` (RFC 5322 §3.4 name-addr), or the bare address without a name."""
    phrase = encode_phrase(name)
    address = _one_line(address)
    return f"{phrase} <{address}>" if phrase else address


def _fold_ids(ids: list[str]) -> str:
    # RFC 5322 §3.6.4: msg-ids separated by CFWS; one per line keeps any number of them foldable.
    return "\r\n ".join(_one_line(i) for i in ids)


def _body(text: str, *, force_qp: bool) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body ending in CRLF)."""
    raw = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if not raw.endswith(b"\n"):
        raw += b"\n"
    if not force_qp and raw.isascii() and all(len(line) <= 998 for line in raw.split(b"\n")):
        return "7bit", raw.replace(b"\n", CRLF)
    # istext: line breaks stay line breaks; trailing white space and '=' are encoded; lines <= 76.
    return "quoted-printable", binascii.b2a_qp(raw, istext=True).replace(b"\n", CRLF)


def build(mail: OutgoingEmail) -> bytes:
    """The whole message: header section, empty line, body (RFC 5322 §2.1)."""
    sender = mailbox(mail.from_name, mail.from_address)
    headers = [
        f"From: {sender}",
        f"Reply-To: {sender}",
        f"To: {mailbox(mail.to_name, mail.recipient)}",
        f"Subject: {encode_unstructured(mail.subject, 'Subject')}",
        f"Date: {format_datetime(mail.date)}",
        f"Message-ID: {_one_line(mail.message_id)}",
    ]
    if mail.in_reply_to:
        headers.append(f"In-Reply-To: {_one_line(mail.in_reply_to)}")
    if mail.references:
        headers.append(f"References: {_fold_ids(list(mail.references))}")
    headers.append("MIME-Version: 1.0")
    if mail.html is None:
        cte, body = _body(mail.text, force_qp=False)
        headers += ['Content-Type: text/plain; charset="utf-8"', f"Content-Transfer-Encoding: {cte}"]
        head = "\r\n".join(headers).encode("utf-8")
        return head + CRLF + CRLF + body
    boundary = "=_gw" + hashlib.sha256(mail.message_id.encode()).hexdigest()[:28]
    headers += [f'Content-Type: multipart/alternative; boundary="{boundary}"']
    head = "\r\n".join(headers).encode("utf-8")
    parts = []
    for subtype, content in (("plain", mail.text), ("html", mail.html)):
        cte, body = _body(content, force_qp=True)
        part_head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
        parts.append(b"--" + boundary.encode() + CRLF + part_head.encode() + CRLF + CRLF + body)
    return head + CRLF + CRLF + b"".join(parts) + b"--" + boundary.encode() + b"--" + CRLF
