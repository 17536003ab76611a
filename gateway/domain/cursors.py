"""Opaque pagination cursors: the sort key of the last row a page returned, as one URL-safe token.

A cursor is ``base64url(json([version, kind, *key]))`` without padding. Clients must treat it as
opaque (the layout may change with the version); the ``kind`` keeps a thread cursor from being
accepted where a message cursor is expected. Nothing secret is in it: every query is scoped to the
caller's tenant anyway, so a forged cursor can only skip rows the caller may read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence

VERSION = 1
MAX_CURSOR_CHARS = 512

Key = str | int


class CursorError(ValueError):
    """The text is not a cursor this version wrote for this kind of list."""


def encode(kind: str, key: Sequence[Key]) -> str:
    raw = json.dumps([VERSION, kind, *key], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(kind: str, cursor: str, types: Sequence[type[str] | type[int]]) -> tuple[Key, ...]:
    """The key ``encode(kind, key)`` was given; ``types`` says what each element must be."""
    if not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise CursorError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor") from None
    if not isinstance(data, list) or len(data) != 2 + len(types) or data[0] != VERSION or data[1] != kind:
        raise CursorError(f"not a {kind} cursor")
    key = data[2:]
    for value, expected in zip(key, types, strict=True):
        # bool is an int to Python; a cursor never holds one.
        if type(value) is not expected:
            raise CursorError(f"not a {kind} cursor")
    return tuple(key)
