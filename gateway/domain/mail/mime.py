"""The MIME structure: an explicit-stack walk over the entities (no recursion, bounded by
``max_depth`` and ``max_parts``), the multipart splitter (RFC 2046 §5.1.1) working on offsets into
the raw bytes, and the sorting of leaf parts into text, HTML and attachments."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from gateway.domain.mail.decoding import _decode_cte, _decode_text
from gateway.domain.mail.filenames import _EXTENSIONS, safe_filename
from gateway.domain.mail.headers import (
    _CTRL_RE,
    _first,
    _guard_str,
    _message,
    _Section,
    _split_header_section,
)
from gateway.domain.mail.model import MailFormatError, MimeLimits, ParsedAttachment

# RFC 6838 §4.2 type-name "/" subtype-name, lower-cased by the email package.
_MEDIA_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(slots=True)
class _Walk:
    limits: MimeLimits
    problems: list[str]
    attachments: list[ParsedAttachment] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    parts_seen: int = 0
    counter: int = 0


def _boundary_split(
    raw: bytes, start: int, end: int, boundary: str, limit: int
) -> tuple[list[tuple[int, int]], str]:
    """The parts of the multipart body ``raw[start:end]`` as offsets (RFC 2046 §5.1.1): the preamble
    before the first delimiter and the epilogue after the close delimiter are dropped; the line break
    before each delimiter belongs to the delimiter; transport padding (spaces/tabs) after it is
    allowed. Returns the parts and ``closed``, ``open`` (no close delimiter: the last part runs to
    the end of the body) or ``truncated`` (more than ``limit`` parts: the scan stopped there)."""
    delim = re.compile(rb"^--" + re.escape(boundary.encode("utf-8", "replace")) + rb"(--)?[ \t]*\r?$", re.M)
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    # "^" matches at ``start`` because a body always begins a line.
    for m in delim.finditer(raw, start, end):
        if part_start is not None:
            if len(parts) >= limit:
                return parts, "truncated"
            stop = m.start()
            if stop > part_start and raw[stop - 1 : stop] == b"\n":
                stop -= 2 if raw[stop - 2 : stop] == b"\r\n" else 1
            parts.append((part_start, max(part_start, stop)))
        if m.group(1):
            return parts, "closed"
        nl = raw.find(b"\n", m.end(), end)
        part_start = end if nl < 0 else nl + 1
    if part_start is not None:
        if len(parts) >= limit:
            return parts, "truncated"
        parts.append((part_start, end))
    return parts, "open"


def _add_attachment(
    walk: _Walk,
    data: bytes,
    *,
    ctype: str,
    filename: str | None,
    content_id: str | None,
    inline: bool,
    fallback: str | None = None,
) -> None:
    walk.counter += 1
    name = safe_filename(
        filename, fallback=fallback or f"part-{walk.counter}{_EXTENSIONS.get(ctype, '.bin')}"
    )
    if len(data) > walk.limits.max_part_bytes:
        walk.problems.append(
            f"attachment {name!r}: {len(data)} bytes, over the {walk.limits.max_part_bytes}-byte part limit"
        )
        walk.attachments.append(
            ParsedAttachment(name, ctype, b"", len(data), "", "over_size_limit", content_id, inline)
        )
        return
    walk.attachments.append(
        ParsedAttachment(
            name, ctype, data, len(data), hashlib.sha256(data).hexdigest(), None, content_id, inline
        )
    )


def _walk(walk: _Walk, raw: bytes, top: _Section) -> None:
    limits = walk.limits
    # Stack entries: (section or raw bytes to split, depth, default content type, parent subtype,
    # the part's number as IMAP BODY[] numbers it, RFC 3501 §6.4.5, for the problem notes).
    stack: list[tuple[_Section | tuple[int, int], int, str, str, str]] = [(top, 0, "text/plain", "", "")]
    while stack:
        item, depth, default_type, parent, number = stack.pop()
        where = f"part {number}" if number else "body"
        if isinstance(item, tuple):
            try:
                section = _split_header_section(raw, item[0], item[1], limits)
            except MailFormatError as exc:
                walk.problems.append(f"{where}: skipped, {exc.detail}")
                continue
        else:
            section = item
        msg = _message(section.fields, default_type)
        ctype = msg.get_content_type()
        if not _MEDIA_TYPE_RE.fullmatch(ctype):
            # RFC 6838 §4.2 names only; anything else is not a type we can act on (or store, the
            # column is 255 characters), so it is opaque data.
            walk.problems.append(f"{where}: unusable Content-Type, read as application/octet-stream")
            ctype = "application/octet-stream"
        maintype = ctype.split("/", 1)[0]
        cte = (_first(section.fields, "content-transfer-encoding") or "").strip().lower()

        if maintype == "multipart":
            boundary = _guard_str(msg.get_boundary)
            children: list[tuple[int, int]] = []
            status = "open"
            room = max(0, limits.max_parts - walk.parts_seen)
            if boundary:
                # Past max_depth only "are there parts at all" matters: one part is enough to know.
                keep = 1 if depth >= limits.max_depth else room
                children, status = _boundary_split(raw, section.body_start, section.body_end, boundary, keep)
            if not children and status != "truncated":
                walk.problems.append(f"{where}: {ctype} with no usable boundary, body read as text")
                ctype = "text/plain"
            elif depth >= limits.max_depth:
                walk.problems.append(
                    f"{where}: multipart nesting deeper than {limits.max_depth} levels, its parts skipped"
                )
                continue
            else:
                if status == "open":
                    walk.problems.append(f"{where}: {ctype} without a close delimiter, last part kept")
                elif status == "truncated":
                    walk.problems.append(f"{where}: more than {limits.max_parts} parts, the rest skipped")
                walk.parts_seen += len(children)
                child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
                subtype = ctype.split("/", 1)[1]
                for i in range(len(children), 0, -1):
                    label = f"{number}.{i}" if number else str(i)
                    stack.append((children[i - 1], depth + 1, child_default, subtype, label))
                continue

        data = _decode_cte(raw[section.body_start : section.body_end], cte)
        disposition = (_guard_str(msg.get_content_disposition) or "").lower()
        filename = _guard_str(msg.get_filename)
        content_id = _first(section.fields, "content-id")
        cid = _CTRL_RE.sub("", content_id).strip().strip("<>").strip()[:998] or None if content_id else None
        inline = disposition != "attachment"

        if ctype == "message/rfc822" or ctype == "message/global":
            _add_attachment(
                walk,
                data,
                ctype=ctype,
                filename=filename,
                content_id=cid,
                inline=False,
                fallback="forwarded-message.eml",
            )
            continue
        is_body_text = ctype in ("text/plain", "text/html") and inline and filename is None
        if is_body_text and len(data) <= limits.max_part_bytes:
            charset = _guard_str(msg.get_content_charset)
            if ctype == "text/plain":
                if walk.text is None:
                    walk.text = _decode_text(data, charset, walk.problems, where)
                    continue
            elif walk.html is None:
                walk.html = _decode_text(data, charset, walk.problems, where)
                continue
            if parent == "alternative":
                continue  # another rendering of text we already have (RFC 2046 §5.1.4)
        _add_attachment(walk, data, ctype=ctype, filename=filename, content_id=cid, inline=inline)
