"""What the parser returns and the one error it raises (see :mod:`gateway.domain.mail_parse`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


class MailFormatError(ValueError):
    """The message is refused as a whole. ``reason`` is a stable code (``too_many_headers``,
    ``header_line_too_long``, ``no_header_section``), ``detail`` says what was seen."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """``max_headers``/``max_header_line`` apply to the top-level header section (refusal) and to each
    part's headers (that part is skipped). ``max_header_line`` counts bytes of one physical line
    without its line break. ``max_depth``: multipart levels below the top-level entity.
    ``max_parts``: entities below the top-level one (multiparts included). ``max_html_for_text``: when
    the text has to be derived from HTML, only this many characters of it are read (the HTML itself
    is kept whole)."""

    max_headers: int = 500
    max_header_line: int = 8192
    max_depth: int = 10
    max_parts: int = 100
    max_part_bytes: int = 25 * 2**20
    max_html_for_text: int = 2 * 2**20


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    """One attachment. ``filename`` is a safe display name (never a path). ``problem`` is
    ``over_size_limit`` when the part decoded to more than ``max_part_bytes``: then ``data`` is empty,
    ``sha256`` is ``""`` and ``size`` is the decoded size. ``content_id`` is set for inline parts that
    carry one (RFC 2392), without the angle brackets; ``inline`` says the disposition was inline."""

    filename: str
    content_type: str
    data: bytes
    size: int
    sha256: str
    problem: str | None = None
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What the inbound-email service needs from a message. See the module docstring for rules.
    ``headers`` holds every top-level field as (name, unfolded value decoded from bytes, encoded-words
    not decoded), in order."""

    from_header_count: int
    from_address: str | None
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    date: datetime | None
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    problems: tuple[str, ...]
    header_block: bytes
    headers: tuple[tuple[str, str], ...] = field(default=())

    def header(self, name: str) -> str | None:
        """The first field called ``name`` (case-insensitive), as in ``headers``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None
