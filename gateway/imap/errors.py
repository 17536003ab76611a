"""Errors of the IMAP poller. Data in attributes; the message is for logs."""

from __future__ import annotations


class ImapError(Exception):
    """Base of the errors this package raises on purpose. ``command`` is the IMAP command (or
    ``connect``) that failed; ``detail`` what went wrong."""

    def __init__(self, command: str, detail: str) -> None:
        super().__init__(f"{command}: {detail}")
        self.command = command
        self.detail = detail


class ImapDisconnected(ImapError):
    """The connection is unusable: refused, lost, a TLS failure, or a wait that ran out of time
    (``timed_out``). The poller drops the connection and reconnects after a backoff."""

    def __init__(self, command: str, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(command, detail)
        self.timed_out = timed_out


class ImapCommandFailed(ImapError):
    """The server answered ``NO`` or ``BAD`` (RFC 3501 7.1); ``result`` is which, ``detail`` its text."""

    def __init__(self, command: str, result: str, detail: str) -> None:
        super().__init__(command, f"{result} {detail}".strip())
        self.result = result
