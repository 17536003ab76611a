"""Interfaces the services need from adapters, and the plain data that crosses them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

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
