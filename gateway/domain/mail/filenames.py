"""Safe display names for attachments: never a path, never a spoofing character (see
:func:`safe_filename`)."""

from __future__ import annotations

import re
import unicodedata

from gateway.domain.mail.decoding import _codec, _decode_encoded_words

#: Display names are bounded in UTF-8 bytes (most file systems' NAME_MAX is 255 bytes).
_MAX_FILENAME_BYTES = 255
_RFC2231_VALUE_RE = re.compile(r"^([A-Za-z0-9_.:-]{1,40})'[A-Za-z0-9-]{0,40}'(.*)$", re.S)

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
