"""The things the gateway talks about: plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class SenderMode(StrEnum):
    POOL = "pool"  # a number from the pool, stuck to each customer: replies possible
    ALPHANUMERIC = "alphanumeric"  # a text header such as SERWIS: no replies (GSM 03.40)


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RECEIVED = "received"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    mailbox_prefix: str
    mailbox_aliases: tuple[str, ...]
    trusted_domains: tuple[str, ...]
    sms_sender_mode: SenderMode
    sms_alphanumeric: str | None
    attachments_save: bool
    attachments_quota_bytes: int
    attachments_used_bytes: int
    sms_credits: int
    webhook_url: str | None
    webhook_secret: str | None
    business_hours: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    #: Inbound SMS opt-out/opt-in words as the tenant set them ({"stop": [...], "start": [...]}, a
    #: missing list = the default); None = the defaults (gateway.domain.mo.DEFAULT_KEYWORDS).
    sms_keywords: dict[str, list[str]] | None = None
    #: Further alphanumeric headers a message may choose with ``sms_sender`` (the default is
    #: ``sms_alphanumeric``); only for the alphanumeric mode.
    sms_alphanumeric_allowed: tuple[str, ...] = ()
    #: Inbound email without an aligned DKIM/SPF pass is refused (``sender_unverified``, issue 6).
    require_verified_sender: bool = False


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str
    number_type: str  # mobile | fixed_line | fixed_line_or_mobile | voip | ... (libphonenumber's names)
    region: str | None

    @property
    def can_receive_sms(self) -> bool:
        # fixed_line_or_mobile: some numbering plans (e.g. US) do not tell the two apart.
        return self.number_type in {"mobile", "fixed_line_or_mobile"}


@dataclass(frozen=True, slots=True)
class Consent:
    sms: bool = True
    email: bool = True
    marketing: bool = False


@dataclass(frozen=True, slots=True)
class Contact:
    tenant_id: str
    contact_id: str
    name: str
    phones: tuple[Phone, ...]
    emails: tuple[str, ...]
    consent: Consent = field(default_factory=Consent)
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
