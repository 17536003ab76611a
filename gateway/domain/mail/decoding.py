"""Bytes to text, leniently: MIME charset labels (RFC 2046 §4.1.2) mapped to Python codecs, undeclared
8-bit text, RFC 2047 encoded-words, and the RFC 2045 §6 transfer encodings. Never raises on attacker
data: problems are noted and the text is kept."""

from __future__ import annotations

import binascii
import codecs
import re

# RFC 2047 §2 encoded-word; charset may carry an RFC 2231 §5 language ("utf-8*pl").
_EWORD_RE = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
_EWORD_GAP_RE = re.compile(r"(=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]*\?=)[ \t\r\n]+(?==\?[^?\s]{1,75}\?[bBqQ]\?)")

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
