"""Errors of the SMPP layer; one place for all of them.

Each carries its data in attributes; the message is for logs, never parsed. Submits never raise these to
the caller: their outcome is a :class:`~gateway.smpp.types.SubmitResult`. They surface as
``SmppSession.last_error`` (why a bind is down) and from the codec functions.
"""

from __future__ import annotations


class SmppError(Exception):
    """Base of every error raised on purpose by :mod:`gateway.smpp`."""


class PduEncodeError(SmppError):
    """A PDU cannot be built from the given values.

    ``command`` is the PDU being built (``submit_sm``); ``field`` names the offending field or TLV;
    ``reason`` says what is wrong with it.
    """

    def __init__(self, command: str, field: str, reason: str) -> None:
        super().__init__(f"{command}.{field}: {reason}")
        self.command = command
        self.field = field
        self.reason = reason


class PduDecodeError(SmppError):
    """Bytes received from the SMSC are not a PDU we can decode.

    ``command_id`` and ``sequence`` come from the header when it could be read (else None);
    ``nack_status`` is the command status to answer a request with (in a ``generic_nack``).
    """

    def __init__(
        self,
        reason: str,
        *,
        command_id: int | None = None,
        sequence: int | None = None,
        nack_status: int = 0x08,
    ) -> None:
        where = "" if command_id is None else f" (command_id=0x{command_id:08x} sequence={sequence})"
        super().__init__(f"{reason}{where}")
        self.reason = reason
        self.command_id = command_id
        self.sequence = sequence
        self.nack_status = nack_status


class BindError(SmppError):
    """The SMSC refused a bind: ``command`` (``bind_transceiver`` ...) answered with ``command_status``,
    whose name (``ESME_RINVPASWD`` ...) is ``status_name``; ``connector`` names our connector."""

    def __init__(self, connector: str, command: str, command_status: int, status_name: str) -> None:
        super().__init__(f"{connector}: {command} refused with {status_name} (0x{command_status:08x})")
        self.connector = connector
        self.command = command
        self.command_status = command_status
        self.status_name = status_name


class ResponseTimeoutError(SmppError):
    """No response to ``command`` (sequence ``sequence``) on ``connector`` within ``timeout`` seconds."""

    def __init__(self, connector: str, command: str, sequence: int, timeout: float) -> None:
        super().__init__(f"{connector}: no response to {command} #{sequence} within {timeout:g}s")
        self.connector = connector
        self.command = command
        self.sequence = sequence
        self.timeout = timeout


class ConnectionClosedError(SmppError):
    """The connection of ``connector`` closed (``reason``: EOF, reset, unbind from the SMSC, ...) while a
    request was waiting for its response."""

    def __init__(self, connector: str, reason: str) -> None:
        super().__init__(f"{connector}: connection closed: {reason}")
        self.connector = connector
        self.reason = reason
