"""Errors of the email adapters. Data in attributes; the message is for logs."""

from __future__ import annotations


class SmtpAdapterError(Exception):
    """Base of the errors this package raises on purpose."""


class DkimKeyError(SmtpAdapterError):
    """A configured DKIM key cannot be used (unreadable, not a key, too short, no PyNaCl for
    ed25519). Raised at start-up; ``key`` is the config key to look at."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class SmtpTlsError(SmtpAdapterError):
    """The SMTP listener's STARTTLS certificate or key cannot be used (missing, unreadable, not
    matching). Raised at start-up; ``key`` is the config key to look at."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
