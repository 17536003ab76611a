"""Logging setup: one handler on the root logger writing to stderr (journald captures it).

"json" emits one object per line so log shippers need no parsing rules; anything passed via
``extra=`` (tenant_id, message_id, peer, ...) becomes a top-level field, which is how the rest
of the code attaches context to a line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]

FORMATS = ("json", "text")

# Attributes every LogRecord has; whatever else is in record.__dict__ came from `extra=`.
# Computed from a real record so new Python versions (e.g. 3.12's taskName) are covered.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE_KEYS = ("ts", "level", "logger", "msg", "exc", "stack")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def _timestamp(record: logging.LogRecord) -> str:
    # Always UTC with milliseconds and "Z": comparable across hosts regardless of their TZ.
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, and exc/stack when present."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # Never let an extra overwrite a core field; keep it under a distinct name instead.
            payload[f"extra.{key}" if key in _CORE_KEYS else key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(payload, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            # default=str does not cover non-string dict keys or circular references; a log
            # line must never be lost to that, so fall back to str() for every extra.
            safe = {k: v if k in _CORE_KEYS else str(v) for k, v in payload.items()}
            return json.dumps(safe, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable line; extras appended as key=value so context is not lost."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        # Keep the traceback (if any) below the context, which belongs to the first line.
        head, sep, tail = line.partition("\n")
        context = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} [{context}]{sep}{tail}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is *now* (like logging.lastResort).

    Binding the stream at setup time would keep writing to a stale object after stderr is
    swapped (pytest capture, daemon re-wiring).
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.setStream assigns; ignore, we always follow sys.stderr


def setup_logging(level: str, fmt: str) -> None:
    """Install (or replace) the gateway's root handler. Safe to call again, e.g. on reload."""
    levelno = logging.getLevelNamesMapping().get(level.upper())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(levelno)
