"""Interfaces the services need from adapters, and the plain data that crosses them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from gateway.domain.mailauth import AuthVerdict

SubmitOutcome = Literal["ok", "failed", "unknown", "retry", "no_route"]


@dataclass(frozen=True, slots=True)
class SubmitPart:
    """One submit_sm as the SMS job wants it sent (SMPP 3.4 §4.4.1). ``short_message`` already
    carries the UDH when ``esm_class`` has UDHI (0x40); ``ref`` is echoed back in callbacks."""

    source_addr: str
    source_ton: int
    source_npi: int
    destination_addr: str
    dest_ton: int = 1
    dest_npi: int = 1
    esm_class: int = 0
    data_coding: int = 0
    short_message: bytes = b""
    registered_delivery: int = 1
    tlvs: Mapping[str, Any] = field(default_factory=dict)
    ref: Any = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What became of a submit: ``ok`` (accepted, ``message_id`` set), ``failed`` (permanent error,
    ``status_name`` says which), ``unknown`` (written but no response: it may or may not go out),
    ``retry`` / ``no_route`` (not accepted; try again later)."""

    outcome: SubmitOutcome
    message_id: str | None = None
    command_status: int | None = None
    status_name: str | None = None
    connector: str | None = None


@dataclass(frozen=True, slots=True)
class InboundSms:
    """A deliver_sm / data_sm from an SMSC: a receipt or a mobile-originated message."""

    connector: str
    source_addr: str
    source_ton: int
    destination_addr: str
    dest_ton: int
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: Mapping[str, Any]
    received_at: datetime


class SmsTransport(Protocol):
    """Sends SMS parts to an SMSC (gateway.smpp.pool.ConnectorPool implements it)."""

    async def submit(self, part: SubmitPart, *, timeout: float) -> SubmitResult: ...

    async def submit_many(self, parts: Sequence[SubmitPart], *, timeout: float) -> list[SubmitResult]:
        """Several parts at once; one result per part, in order."""
        ...


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One email as the send job hands it to the relay adapter, which composes (MIME), signs (DKIM)
    and relays it. Values are plain text; the adapter encodes them (RFC 2047). ``ref`` is our message
    id (logs). Everything here is stored, so a retry builds the same message (same Message-ID, Date)."""

    ref: str
    envelope_from: str  # the VERP return path (RFC 5321 §4.1.1.2)
    recipient: str  # RCPT TO and the To address
    from_address: str
    from_name: str
    to_name: str
    subject: str
    text: str
    html: str | None
    message_id: str  # "<…@mail_domain>"
    date: datetime
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    needs_smtputf8: bool = False  # a non-ASCII local part (RFC 6531)


RelayOutcome = Literal["sent", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class RelayResult:
    """``sent``: the relay answered 250 to the end of DATA. ``failed``: a 5xx (``reply`` holds the
    relay's code and text); retrying cannot help. ``retry``: a 4xx, a lost or refused connection, a
    timeout; ``data_sent`` says whether the message may have gone out anyway (no reply to DATA)."""

    outcome: RelayOutcome
    reply: str | None = None
    data_sent: bool = False


class EmailTransport(Protocol):
    """Relays composed emails (gateway.smtp.relay.SmtpRelay implements it)."""

    async def send(self, mail: OutgoingEmail) -> RelayResult: ...


class SenderVerifier(Protocol):
    """Checks who sent an inbound email: SPF for the envelope sender, every DKIM signature, DMARC
    for the From domain (gateway.mailauth.MailVerifier implements it; issue 6 anti-spoofing).
    ``client_ip`` is None for mail fetched over IMAP (SPF is then ``none``)."""

    async def verify(
        self,
        raw: bytes,
        *,
        mail_from: str,
        helo: str | None,
        client_ip: str | None,
        from_domain: str | None,
    ) -> AuthVerdict: ...
