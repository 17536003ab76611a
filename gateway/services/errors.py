"""Errors raised by services; one place per layer. Adapters map them to protocol replies.

Each carries its data in attributes; the message is for logs, never parsed.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error a use case raises on purpose."""


class InvalidInputError(ServiceError):
    """A value the caller gave is not acceptable. ``field`` names it (``phones[1]``, ``mailbox_prefix``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFoundError(ServiceError):
    """The thing asked for does not exist, or belongs to another tenant (we do not tell which)."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class ConflictError(ServiceError):
    """The change collides with existing data (a prefix taken by any tenant, current or alias)."""

    def __init__(self, code: str, field: str, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.code = code
        self.field = field
        self.reason = reason
        self.details = details or {}


class ChannelsRefusedError(ServiceError):
    """A message cannot go out on one or more requested channels; nothing was sent or stored.

    ``refusals`` maps each refused channel to (reason, detail); reasons are the SPEC 2.3 codes
    (``no_phone``, ``not_mobile``, ``sms_opt_out``, ``insufficient_credits``, ...).
    """

    def __init__(self, refusals: dict[str, tuple[str, str]]) -> None:
        super().__init__("refused: " + ", ".join(f"{c}={r}" for c, (r, _) in refusals.items()))
        self.refusals = refusals


class PermanentJobError(ServiceError):
    """Raised by a job handler when retrying cannot help (e.g. the carrier rejected the number):
    the job goes straight to ``failed`` with this error's text as the reason."""
