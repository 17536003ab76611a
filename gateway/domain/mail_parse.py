"""Reading an inbound message that anyone on the Internet may have written. Pure: stdlib only, no I/O.

The SMTP listener and the IMAP poller hand the inbound-email service raw bytes; this module turns them
into :class:`ParsedMail` or raises :class:`MailFormatError` (and nothing else). Hostile input is the
normal case here, so the design choices are about bounded work and never losing the readable text:

- **Header caps first, on the raw bytes** (issue 6 "SMTP server"): the number of header fields
  (continuation lines belong to the field above, RFC 5322 §2.2.3) and the length of one physical line
  are checked before anything is parsed. Over a cap the message is refused (``MailFormatError``).
- **Our own MIME splitter, not** ``email.parser``. CPython's feed parser nests one generator per
  multipart level: every body line passes through all of them (quadratic in depth) and about 1,000
  levels raise ``RecursionError``. Here the structure is walked with an explicit stack: a multipart's
  body is cut on its delimiter lines (RFC 2046 §5.1.1) by one regex scan, children deeper than
  ``max_depth`` or past ``max_parts`` are skipped with a note in ``problems``. Work is bounded by
  ``max_depth x len(raw)``.
- The ``email`` package is still used for what it is good at and cheap: parameters (``boundary``,
  ``charset``, RFC 2231 ``filename*`` continuations and charsets) via a compat32
  :class:`email.message.Message` built from already decoded header values (compat32 never runs the
  structured header parser of ``policy.default``, which raises on some malformed headers and has
  had quadratic cases); addresses via :func:`email.utils.getaddresses`; dates via
  :func:`email.utils.parsedate_to_datetime`. Every such call on attacker data is guarded.
- Header bytes that are not ASCII (RFC 6532 UTF-8, or undeclared legacy 8-bit) are decoded as UTF-8,
  falling back to Windows-1252; RFC 2047 encoded-words are decoded by a small tolerant decoder.
- Transfer encodings are decoded leniently (RFC 2045 §6.8 says to ignore characters outside the
  base64 alphabet; bad padding is repaired; quoted-printable garbage passes through).
- ``message/rfc822`` parts are not descended into: the forwarded message is kept whole as an
  attachment (``forwarded-message.eml`` unless named), its text is not merged into ours.

This module is the public entry (every name in ``__all__``) and reads the top-level fields; the
pieces live in :mod:`gateway.domain.mail`, one module per concept (types, decoding, headers, fields,
filenames, html_text, mime; see its docstring).
"""

from __future__ import annotations

from gateway.domain.mail.fields import (
    _MAX_REFERENCES,
    _MAX_SUBJECT,
    _address_list,
    _addresses,
    _clean_line,
    _date,
    _message_id,
    _msg_ids,
    _valid_address,
)
from gateway.domain.mail.filenames import safe_filename
from gateway.domain.mail.headers import _first, _split_header_section
from gateway.domain.mail.html_text import html_to_text
from gateway.domain.mail.mime import _Walk, _walk
from gateway.domain.mail.model import MailFormatError, MimeLimits, ParsedAttachment, ParsedMail

__all__ = [
    "MailFormatError",
    "MimeLimits",
    "ParsedAttachment",
    "ParsedMail",
    "html_to_text",
    "parse_mail",
    "safe_filename",
]


# MimeLimits is a frozen dataclass, so one shared default is safe; ruff only sees that in its own module.
def parse_mail(raw: bytes, limits: MimeLimits = MimeLimits()) -> ParsedMail:  # noqa: B008
    """Parse ``raw`` (CRLF or LF line ends). Raises :class:`MailFormatError` only: when a header cap
    is exceeded or there is no header section at all; everything else is kept or noted in
    ``problems``."""
    top = _split_header_section(raw, 0, len(raw), limits)
    if not top.fields:
        raise MailFormatError("no_header_section", "the message does not start with a header field")
    problems: list[str] = []
    fields = top.fields

    def values(name: str) -> list[str]:
        return [v for k, v in fields if k.lower() == name]

    from_values = values("from")
    from_address: str | None = None
    from_name = ""
    if from_values:
        mailboxes = _addresses(from_values[:1], problems, "From")
        if len(mailboxes) == 1:
            from_name = _clean_line(mailboxes[0][0])
            from_address = _valid_address(mailboxes[0][1])
            if from_address is None:
                problems.append("From: not a usable address")
        elif len(mailboxes) > 1:
            # RFC 5322 §3.6.2 allows several authors (with Sender); we cannot attribute the mail.
            problems.append(f"From: {len(mailboxes)} mailboxes, none taken")
        else:
            problems.append("From: no address")
    references = _msg_ids(" ".join(values("references")))
    if len(references) > _MAX_REFERENCES:
        problems.append(f"References: {len(references)} ids, the newest {_MAX_REFERENCES} kept")
        references = references[-_MAX_REFERENCES:]

    walk = _Walk(limits, problems)
    _walk(walk, raw, top)
    # Stored text uses "\n" line ends whatever the wire used (RFC 5322 §2.1 CRLF is transport).
    html_body = walk.html.replace("\r\n", "\n") if walk.html is not None else None
    text = walk.text.replace("\r\n", "\n") if walk.text is not None else None
    if text is None and html_body is not None:
        if len(html_body) > limits.max_html_for_text:
            problems.append(f"HTML over {limits.max_html_for_text} characters: text derived from the start")
        text = html_to_text(html_body[: limits.max_html_for_text])

    return ParsedMail(
        from_header_count=len(from_values),
        from_address=from_address,
        from_name=from_name,
        to=_address_list(values("to"), problems, "To"),
        cc=_address_list(values("cc"), problems, "Cc"),
        subject=_clean_line((values("subject") or [""])[0])[:_MAX_SUBJECT],
        date=_date(_first(fields, "date"), problems),
        message_id=_message_id(_first(fields, "message-id")),
        in_reply_to=tuple(_msg_ids(_first(fields, "in-reply-to"))[:_MAX_REFERENCES]),
        references=tuple(references),
        text=text or "",
        html=html_body,
        attachments=tuple(walk.attachments),
        problems=tuple(problems),
        header_block=raw[: top.block_end],
        headers=tuple(fields),
    )
