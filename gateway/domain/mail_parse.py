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
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser

__all__ = [
    "MailFormatError",
    "MimeLimits",
    "ParsedAttachment",
    "ParsedMail",
    "html_to_text",
    "parse_mail",
    "safe_filename",
]

#: An address header longer than this (after unfolding) is parsed only up to here: the address
#: parser is pure Python and the value is not bounded by the per-line cap (continuation lines).
_MAX_ADDRESS_HEADER = 64 * 1024
#: Keep at most this many recipients per To/Cc, and the newest this many References.
_MAX_ADDRESSES = 1000
_MAX_REFERENCES = 100
#: A single value we hand to the email package's parameter parser (Content-Type/-Disposition).
_MAX_PARAM_HEADER = 16 * 1024
#: RFC 5322 §2.1.1 line limit; also the width of ``messages.subject``.
_MAX_SUBJECT = 998
#: Display names are bounded in UTF-8 bytes (most file systems' NAME_MAX is 255 bytes).
_MAX_FILENAME_BYTES = 255

# RFC 5322 §3.6.8 field-name: printable ASCII except ":"; obs-optional (§4.5.8) allows WSP before ":".
_FIELD_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
# RFC 2047 §2 encoded-word; charset may carry an RFC 2231 §5 language ("utf-8*pl").
_EWORD_RE = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
_EWORD_GAP_RE = re.compile(r"(=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*\?=)[ \t\r\n]+(?==\?[^?\s]{1,75}\?[bBqQ]\?)")
_MSGID_RE = re.compile(r"<[^<>\s]{1,995}>")
# RFC 6838 §4.2 type-name "/" subtype-name, lower-cased by the email package.
_MEDIA_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_CTRL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_RFC2231_VALUE_RE = re.compile(r"^([A-Za-z0-9_.:-]{1,40})'[A-Za-z0-9-]{0,40}'(.*)$", re.S)


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


# --- bytes and charsets ----------------------------------------------------------------------------

# Labels mail gets wrong in practice, mapped to what the sender meant (as WHATWG Encoding does):
# ISO-8859-1/ASCII labels on Windows text, GB2312 on GBK/GB18030 text, KS C 5601 on CP949 text.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "tis-620": "cp874",
}
_UNDECLARED = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"})


def _codec(charset: str | None) -> str | None:
    """The Python codec for a declared MIME charset, or None when undeclared/unknown. Only real text
    codecs: Python also registers ``unicode_escape``, ``rot13``, ``zlib``… which no mail means."""
    label = (charset or "").strip().strip("\"'").lower()
    if label in _UNDECLARED or len(label) > 40:
        return None
    label = _CHARSET_ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    name = info.name
    if "escape" in name or name in {"idna", "punycode", "undefined"}:
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return name


def _decode_8bit(data: bytes) -> str:
    """Bytes with no usable charset label: UTF-8 if it is UTF-8, else Windows-1252 (a superset of the
    printable Latin-1 range, what undeclared legacy mail nearly always is). Never raises."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _decode_text(data: bytes, charset: str | None, problems: list[str], where: str) -> str:
    codec = _codec(charset)
    if codec is None:
        if charset and charset.strip().lower() not in _UNDECLARED:
            problems.append(f"{where}: unknown charset {charset[:40]!r}, decoded as UTF-8")
        return _decode_8bit(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        problems.append(
            f"{where}: text is not valid {charset[:40] if charset else codec}, bad bytes replaced"
        )
        return data.decode(codec, errors="replace")
    except Exception:  # a codec's own bug on hostile bytes must not take the message down
        problems.append(f"{where}: charset {codec} failed, decoded as UTF-8")
        return _decode_8bit(data)


def _decode_encoded_words(value: str) -> str:
    """RFC 2047 §6 decoding, tolerant: a bad encoded-word stays as written; whitespace between two
    adjacent encoded-words is dropped (§6.2); adjacent words of one charset are joined as bytes first,
    so a multi-byte character split across words (common from real mailers) survives."""
    if "=?" not in value:
        return value
    value = _EWORD_GAP_RE.sub(r"\1", value)
    out: list[str] = []
    pending: bytearray = bytearray()
    pending_codec: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_codec
        if pending:
            try:
                decoded = pending.decode(pending_codec or "utf-8")
            except Exception:  # wrong bytes for the label, or a codec's own error on hostile bytes
                decoded = _decode_8bit(bytes(pending))
            out.append(decoded)
        pending = bytearray()
        pending_codec = None

    for m in _EWORD_RE.finditer(value):
        charset, enc, text = m.group(1).split("*", 1)[0], m.group(2).lower(), m.group(3)
        try:
            if enc == "b":
                raw = _b64decode(text.encode("ascii", "replace"))
            else:
                raw = binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
        except Exception:
            continue  # leave the word as written (it is appended with the text around it)
        if m.start() > pos:
            flush()
            out.append(value[pos : m.start()])
        codec = _codec(charset)
        if pending and codec != pending_codec:
            flush()
        pending_codec = codec
        pending += raw
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _b64decode(data: bytes) -> bytes:
    """RFC 2045 §6.8: characters outside the alphabet are ignored; missing or broken padding is
    repaired (what remains after the last full quantum is dropped if it cannot be a quantum)."""
    try:
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        pass
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    # A lone sixth bit (length % 4 == 1) cannot encode a byte: drop it; pad 2 or 3 to a quantum.
    rest = len(clean) % 4
    clean = clean[: len(clean) - rest] if rest == 1 else clean + b"=" * ((4 - rest) % 4)
    try:
        return binascii.a2b_base64(clean)
    except (binascii.Error, ValueError):
        return b""


def _unfold(value: bytes) -> bytes:
    # RFC 5322 §2.2.3: unfolding removes each CRLF that is followed by WSP.
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")


# --- header sections -------------------------------------------------------------------------------


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


# --- addresses, dates, ids -------------------------------------------------------------------------


def _clean_line(value: str) -> str:
    """One-line display text: encoded-words decoded, line breaks and other controls removed."""
    return _CTRL_RE.sub("", _decode_encoded_words(value)).strip()


def _valid_address(addr: str) -> str | None:
    addr = addr.strip()
    if len(addr) > 320 or addr.count("@") != 1 or any(c.isspace() or ord(c) < 32 or c in "<>," for c in addr):
        return None
    local, _, domain = addr.partition("@")
    if not local or not domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return None
    return f"{local}@{domain.lower()}"


def _addresses(values: list[str], problems: list[str], what: str) -> list[tuple[str, str]]:
    clipped: list[str] = []
    for value in values:
        if len(value) > _MAX_ADDRESS_HEADER:
            problems.append(f"{what}: header longer than {_MAX_ADDRESS_HEADER} characters, rest ignored")
            value = value[:_MAX_ADDRESS_HEADER]
        clipped.append(value)
    try:
        pairs = getaddresses(clipped)
    except Exception:
        problems.append(f"{what}: unparseable address list")
        return []
    return [(name, addr) for name, addr in pairs if name or addr]


def _address_list(values: list[str], problems: list[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()
    for _, addr in _addresses(values, problems, what):
        valid = _valid_address(addr)
        if valid is not None and valid.lower() not in seen:
            seen.add(valid.lower())
            out.append(valid)
            if len(out) >= _MAX_ADDRESSES:
                problems.append(f"{what}: more than {_MAX_ADDRESSES} addresses, rest ignored")
                break
    return tuple(out)


def _date(value: str | None, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value[:200])
    except Exception:
        problems.append("Date: unparseable, ignored")
        return None
    # RFC 5322 §3.3: "-0000" means the time is UTC and says nothing about the local zone.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _msg_ids(value: str | None) -> list[str]:
    return _MSGID_RE.findall(value) if value else []


def _message_id(value: str | None) -> str | None:
    ids = _msg_ids(value)
    if ids:
        return ids[0]
    # Some mailers omit the angle brackets (RFC 5322 §3.6.4 requires them): accept one bare token.
    bare = (value or "").strip()
    if bare and "@" in bare and len(bare) < 995 and not any(c.isspace() or c in "<>" for c in bare):
        return f"<{bare}>"
    return None


# --- filenames -------------------------------------------------------------------------------------

_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "text/rfc822-headers": ".txt",
}
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _rfc2231_value(name: str) -> str:
    """``utf-8''%2e%2e%2fetc`` (an RFC 2231 §4 extended value passed through undecoded) -> its text."""
    m = _RFC2231_VALUE_RE.match(name)
    if m is None or "%" not in m.group(2):
        return name
    codec = _codec(m.group(1))
    if codec is None:
        return name
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda h: bytes([int(h.group(1), 16)]), m.group(2).encode("utf-8"))
    return raw.decode(codec, errors="replace")


def _truncate_utf8(name: str, limit: int) -> str:
    """Shorten to ``limit`` UTF-8 bytes, keeping a short extension and whole characters."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if dot and stem and 0 < len(ext.encode("utf-8")) <= 16 else ""
    base = stem if suffix else name
    budget = limit - len(suffix.encode("utf-8"))
    encoded = base.encode("utf-8")[:budget]
    return encoded.decode("utf-8", errors="ignore") + suffix


def safe_filename(name: str | None, *, fallback: str) -> str:
    """A display name that is safe to show and to offer as a download name, never a path.

    RFC 2047 encoded-words and a raw RFC 2231 extended value are decoded; the result is NFC; only the
    last path component survives (``/`` and ``\\`` both separate, a ``C:`` drive is dropped, ``.`` and
    ``..`` components are ignored); control, format (bidi overrides, U+202E), surrogate, private-use
    and unassigned characters are removed and other whitespace becomes one space; at most 255 UTF-8
    bytes. When nothing usable remains the (equally sanitised) ``fallback`` is used, and if even that
    is empty, ``attachment``.
    """
    if name is not None:
        text = _decode_encoded_words(_rfc2231_value(name))
        text = unicodedata.normalize("NFC", text)
        # Tabs and Unicode spaces become a space; line breaks and the rest of the unsafe set go.
        text = "".join(
            " " if ch == "\t" or unicodedata.category(ch) == "Zs" else ch
            for ch in text
            if ch == "\t" or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
        )
        parts = [p.strip() for p in text.replace("\\", "/").split("/")]
        parts = [p for p in parts if p and p.strip(".")]
        if parts:
            candidate = re.sub(r"^[A-Za-z]:(?=.)", "", parts[-1])
            candidate = re.sub(r" {2,}", " ", candidate).strip()
            candidate = unicodedata.normalize("NFC", _truncate_utf8(candidate, _MAX_FILENAME_BYTES)).strip()
            if candidate.strip("."):
                return _truncate_utf8(candidate, _MAX_FILENAME_BYTES)
    if fallback == "attachment":
        return fallback
    return safe_filename(fallback, fallback="attachment")


# --- HTML to text ----------------------------------------------------------------------------------

# Elements that start and end a paragraph (a blank line around them) or just a line.
_PARAGRAPH_TAGS = frozenset(
    {"blockquote", "dl", "fieldset", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p"}
    | {"pre", "table", "ul"}
)
_LINE_TAGS = frozenset(
    {"address", "article", "aside", "caption", "dd", "div", "dt", "figcaption", "footer", "form"}
    | {"header", "li", "main", "nav", "section", "tbody", "tfoot", "thead", "tr"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})


class _TextExtractor(HTMLParser):
    """Collects text; ``newlines`` counts the line breaks at the end of what was collected so that
    nested blocks (``<div><div>``) give one break, not one per tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skip = 0
        self.pre = 0
        self.newlines = 2  # the start of the text counts as the start of a paragraph

    def _break(self, count: int) -> None:
        while self.newlines < count:
            self.chunks.append("\n")
            self.newlines += 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "body":
            self.skip = 0  # an unclosed <head> ends where the body starts (HTML5 §13.2.6.4.4)
        elif tag == "br":
            self.chunks.append("\n")
            self.newlines += 1
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            self.pre += tag == "pre"
        elif tag in _LINE_TAGS:
            self._break(1)
            if tag == "li":
                self.chunks.append("- ")
        elif tag in ("td", "th"):
            self.chunks.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP_TAGS:
            self.handle_starttag(tag, attrs)
            if tag != "br":
                self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in _LINE_TAGS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if self.pre:
            # Protected from _tidy's whitespace collapsing by stand-ins (stripped from the input).
            self.chunks.append(data.replace("\n", "\x00").replace(" ", "\x01"))
            self.newlines = 0
        elif data.strip():
            self.chunks.append(re.sub(r"\s+", " ", data))
            self.newlines = 0
        else:
            self.chunks.append(" ")


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).replace("\x00", "\n").replace("\x01", " ").strip()


# A complete tag or declaration: no "<" or ">" inside, so a failed match stops at the next "<" and the
# whole pre-pass is one linear scan (attribute values containing "<"/">" lose their tag; mail HTML
# almost never has them).
_COMPLETE_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>|<[!?][^<>]*>")


def _only_complete_tags(text: str) -> str:
    """Hand ``html.parser`` only what it handles in linear time. CPython's parser rescans from every
    unclosed construct (``<a <a <a …``, ``<!--`` without ``-->``, ``<![CDATA[`` without ``]]>``) to
    the end of the input: quadratic, minutes of CPU for a megabyte. Here a ``<`` that does not start a
    complete tag becomes ``&lt;`` (shown as text, as a browser would), comments, declarations,
    marked sections and processing instructions are removed (none of them shows text)."""
    out: list[str] = []
    pos = 0
    end = len(text)
    comment_open_after = end + 1  # find("-->") failed from here: later "<!--" cannot close either
    while pos < end:
        lt = text.find("<", pos)
        if lt < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:lt])
        if text.startswith("<!--", lt):
            close = -1 if lt >= comment_open_after else text.find("-->", lt + 4)
            if close >= 0:
                pos = close + 3
                continue
            comment_open_after = min(comment_open_after, lt)
        tag = _COMPLETE_TAG_RE.match(text, lt)
        if tag is None:
            out.append("&lt;")
            pos = lt + 1
        elif text[lt + 1] in "!?":
            pos = tag.end()
        else:
            out.append(tag.group())
            pos = tag.end()
    return "".join(out)


def html_to_text(html_text: str) -> str:
    """Readable text from HTML: ``script``/``style``/``head`` dropped, block elements and ``<br>`` give
    line breaks, list items a ``- ``, entities unescaped, runs of blank lines collapsed. Linear in the
    input (see :func:`_only_complete_tags`). Never raises: if the stdlib parser gives up on some
    markup, tags are stripped by a regex instead."""
    cleaned = _only_complete_tags(html_text.replace("\x00", "").replace("\x01", ""))
    parser = _TextExtractor()
    try:
        parser.feed(cleaned)
        parser.close()
        return _tidy("".join(parser.chunks))
    except Exception:
        return _tidy(html.unescape(re.sub(r"<[^<>]*>", " ", cleaned)))


# --- the MIME walk ---------------------------------------------------------------------------------


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


def _decode_cte(body: bytes, cte: str) -> bytes:
    # RFC 2045 §6: only base64 and quoted-printable transform; 7bit/8bit/binary and unknown
    # encodings are taken as they are.
    if cte == "base64":
        return _b64decode(body)
    if cte == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except Exception:
            return body
    return body


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


def parse_mail(raw: bytes, limits: MimeLimits = MimeLimits()) -> ParsedMail:
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
