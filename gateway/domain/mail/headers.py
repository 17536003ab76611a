"""One entity's header section: cut from the raw bytes with the caps enforced as it is scanned
(RFC 5322 §2.2), unfolded, decoded from bytes; field lookup and the compat32 ``Message`` the email
package's parameter parser needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32

from gateway.domain.mail.decoding import _decode_8bit
from gateway.domain.mail.model import MailFormatError, MimeLimits

#: A single value we hand to the email package's parameter parser (Content-Type/-Disposition).
_MAX_PARAM_HEADER = 16 * 1024

# RFC 5322 §3.6.8 field-name: printable ASCII except ":"; obs-optional (§4.5.8) allows WSP before ":".
_FIELD_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_CTRL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _unfold(value: bytes) -> bytes:
    # RFC 5322 §2.2.3: unfolding removes each CRLF that is followed by WSP.
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")


@dataclass(slots=True)
class _Section:
    """One entity's header fields and where its body lies in the message: offsets, not copies, so
    that nested parts do not each hold another copy of the bytes below them."""

    fields: list[tuple[str, str]]  # (name, unfolded value decoded from bytes)
    block_end: int  # the header section is raw[start:block_end]
    body_start: int
    body_end: int


def _split_header_section(raw: bytes, start: int, end: int, limits: MimeLimits) -> _Section:
    """Cut ``raw[start:end]`` into header fields and body, enforcing the caps as it goes (a hostile
    section costs at most ``max_headers`` fields and one scan). Like CPython's feed parser, the
    section ends at the first empty line, or at the first line that is neither a field nor a
    continuation (that line starts the body, and is not held to the header line cap)."""
    fields_raw: list[list[bytes]] = []
    pos = start
    body_start = block_end = end
    first = True
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = raw[pos:line_end]
        content = line.rstrip(b"\r\n")
        if not content:
            block_end = pos
            body_start = line_end
            break
        if content[:1] in (b" ", b"\t") and fields_raw:
            fields_raw[-1].append(line)
        elif _FIELD_RE.match(content):
            if len(fields_raw) >= limits.max_headers:
                raise MailFormatError("too_many_headers", f"more than {limits.max_headers} header fields")
            fields_raw.append([line])
        elif first and content.startswith(b"From "):
            first = False
            pos = line_end
            continue  # an mbox "From " separator line (IMAP servers and .eml files sometimes keep it)
        else:
            block_end = body_start = pos
            break
        if len(content) > limits.max_header_line:
            raise MailFormatError(
                "header_line_too_long",
                f"a header line of {len(content)} bytes (limit {limits.max_header_line})",
            )
        first = False
        pos = line_end
    fields: list[tuple[str, str]] = []
    for lines in fields_raw:
        joined = _unfold(b"".join(lines))
        name, _, value = joined.partition(b":")
        fields.append((name.strip().decode("ascii"), _decode_8bit(value.strip(b" \t"))))
    return _Section(fields, block_end, body_start, end)


def _message(fields: list[tuple[str, str]], default_type: str) -> Message:
    """A compat32 Message holding only the MIME fields, for the email package's parameter parser."""
    msg = Message(policy=compat32)
    msg.set_default_type(default_type)
    for name, value in fields:
        lower = name.lower()
        if lower in ("content-type", "content-disposition"):
            msg[name] = value[:_MAX_PARAM_HEADER]
    return msg


def _first(fields: list[tuple[str, str]], name: str) -> str | None:
    for key, value in fields:
        if key.lower() == name:
            return value
    return None


def _guard_str(call: object, *args: object) -> str | None:
    try:
        result = call(*args)  # type: ignore[operator]
    except Exception:  # the email package's parameter helpers on hostile input: treat as absent
        return None
    return result if isinstance(result, str) else None
