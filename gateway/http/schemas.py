"""Request and response bodies (pydantic), which also produce the OpenAPI schemas.

Requests are strict (no type coercion: ``"5"`` is not a number, ``1`` is not ``true``) and forbid
unknown fields, so a typo in a field name is an error naming the field rather than a silent no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator


def _reject_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            # PostgreSQL text and jsonb cannot store U+0000; SQLite could, so refuse it everywhere.
            raise ValueError("must not contain NUL (U+0000) characters")
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)


def _one_line(value: str) -> str:
    # Values that end up in email header fields (names, subjects, addresses): a CR or LF would end
    # the field and start a new one (RFC 5322 §2.2), so they are refused, never cleaned up.
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks (CR or LF)")
    return value


#: A string that goes into an email header field.
OneLine = Annotated[str, AfterValidator(_one_line)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        _reject_nul(value)
        return value


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ------------------------------------------------------------------------------------


class ErrorBody(Out):
    code: str = Field(description="machine-readable, e.g. validation_error, not_found, prefix_taken")
    message: str
    details: dict[str, Any] = Field(description="for validation errors: field (first) and problems")


class ErrorOut(Out):
    error: ErrorBody


# --- tenants -----------------------------------------------------------------------------------


class SmsSenderIn(Strict):
    mode: Literal["pool", "alphanumeric"] = "pool"
    alphanumeric: str | None = Field(None, description="1-11 characters; required for mode alphanumeric")
    allowed: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="more alphanumeric headers a message may pick with sms_sender (default: alphanumeric)",
    )


class AttachmentsIn(Strict):
    save: bool = False
    quota_bytes: int | None = Field(None, ge=0, description="disk quota for saved attachments")


class SmsKeywordsIn(Strict):
    stop: list[str] | None = Field(
        None, max_length=20, description="replies that opt the contact out of SMS; omitted: the default list"
    )
    start: list[str] | None = Field(
        None, max_length=20, description="replies that opt the contact back in; omitted: the default list"
    )


class TenantCreate(Strict):
    name: OneLine = Field(min_length=1, max_length=200)
    mailbox_prefix: str | None = Field(None, description="[a-z0-9-]{3,32}; default derived from the name")
    trusted_domains: list[str] = Field(default_factory=list, max_length=100)
    sms_sender: SmsSenderIn = Field(default_factory=lambda: SmsSenderIn())
    attachments: AttachmentsIn = Field(default_factory=lambda: AttachmentsIn())
    sms_credits: int = Field(0, ge=0)
    webhook_url: str | None = Field(None, max_length=2000)
    business_hours: dict[str, Any] | None = None
    sms_keywords: SmsKeywordsIn | None = Field(
        None, description="inbound SMS keywords (whole reply, trimmed, any case); null: the defaults"
    )
    require_verified_sender: bool = Field(
        False, description="refuse inbound email without an aligned DKIM or SPF pass (sender_unverified)"
    )


class SmsSenderPatch(Strict):
    mode: Literal["pool", "alphanumeric"] | None = None
    alphanumeric: str | None = None
    allowed: list[str] | None = Field(None, max_length=20, description="replaces the list")


class AttachmentsPatch(Strict):
    save: bool | None = None
    quota_bytes: int | None = Field(None, ge=0)


class TenantPatch(Strict):
    name: OneLine | None = Field(None, min_length=1, max_length=200)
    mailbox_prefix: str | None = Field(None, description="renaming keeps every earlier prefix as an alias")
    trusted_domains: list[str] | None = Field(None, max_length=100)
    sms_sender: SmsSenderPatch | None = None
    attachments: AttachmentsPatch | None = None
    webhook_url: str | None = Field(None, max_length=2000)
    business_hours: dict[str, Any] | None = None
    sms_keywords: SmsKeywordsIn | None = Field(None, description="replaces both lists; null: the defaults")
    require_verified_sender: bool | None = None


class CreditsIn(Strict):
    amount: int = Field(gt=0, le=100_000_000, description="credits to add; one credit = one SMS part")


class SmsSenderOut(Out):
    mode: str
    alphanumeric: str | None
    allowed: list[str] = Field(default_factory=list)


class AttachmentsOut(Out):
    save: bool
    quota_bytes: int
    used_bytes: int


class SmsKeywordsOut(Out):
    stop: list[str]
    start: list[str]


class TenantOut(Out):
    id: str
    name: str
    mailbox_prefix: str
    mailbox_address: str
    mailbox_aliases: list[str] = Field(description="earlier prefixes, still delivered to this tenant")
    trusted_domains: list[str]
    sms_sender: SmsSenderOut
    attachments: AttachmentsOut
    sms_credits: int
    webhook_url: str | None
    business_hours: dict[str, Any] | None
    sms_keywords: SmsKeywordsOut = Field(description="the keyword lists in force (defaults filled in)")
    require_verified_sender: bool = Field(
        False, description="inbound email without an aligned DKIM or SPF pass is refused"
    )
    created_at: datetime
    updated_at: datetime


class TenantCreated(TenantOut):
    api_key: str = Field(description="shown once; only its hash is stored")
    webhook_secret: str = Field(description="HMAC key for webhook signatures; shown once")


# --- contacts ----------------------------------------------------------------------------------


class ConsentIn(Strict):
    sms: bool = True
    email: bool = True
    marketing: bool = False


class ContactPut(Strict):
    name: OneLine = Field("", max_length=200)
    phones: list[str] = Field(default_factory=list, max_length=10)
    emails: list[OneLine] = Field(default_factory=list, max_length=10)
    consent: ConsentIn = Field(default_factory=ConsentIn)
    blocked: bool = False


class PhoneOut(Out):
    number: str = Field(description="E.164")
    type: str = Field(description="mobile, fixed_line, fixed_line_or_mobile, voip, …")
    region: str | None
    sms_capable: bool


class ConsentOut(Out):
    sms: bool
    email: bool
    marketing: bool


class ContactOut(Out):
    id: str
    name: str
    phones: list[str]
    phone_details: list[PhoneOut]
    emails: list[str]
    consent: ConsentOut
    blocked: bool
    created_at: datetime | None
    updated_at: datetime | None


class ContactList(Out):
    contacts: list[ContactOut]


# --- sms preview -------------------------------------------------------------------------------


class PreviewIn(Strict):
    text: str = Field(max_length=10_000)


class PreviewOut(Out):
    encoding: Literal["gsm7", "ucs2"]
    chars: int = Field(description="GSM septets (extension characters count 2) or UTF-16 units")
    parts: int
    chars_left_in_part: int


# --- operations --------------------------------------------------------------------------------


class HealthOut(Out):
    status: str


class ReadyOut(Out):
    status: Literal["ready", "not_ready"]
    checks: dict[str, dict[str, Any]]


# --- messages ----------------------------------------------------------------------------------


class ToIn(Strict):
    phone: str | None = Field(None, max_length=32)
    email: OneLine | None = Field(None, max_length=320)


class ContextIn(Strict):
    type: str = Field(min_length=1, max_length=64, description="e.g. repair, order, booking")
    id: str = Field(min_length=1, max_length=200)


class MessageCreate(Strict):
    contact_id: str | None = Field(None, max_length=100)
    to: ToIn | None = None
    channels: list[str] = Field(min_length=1, max_length=2, description='"sms" and/or "email"')
    text: str = Field("", max_length=10_000, description="required unless template is given")
    subject: OneLine | None = Field(None, max_length=998, description="email; default: the first line")
    html: str | None = Field(None, max_length=1_000_000)
    context: ContextIn | None = None
    thread_id: str | None = Field(None, max_length=40)
    category: Literal["transactional", "marketing"] = "transactional"
    send_at: AwareDatetime | None = Field(None, description="ISO 8601 with a UTC offset; later = scheduled")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    sms_sender: str | None = Field(
        None,
        max_length=11,
        description="alphanumeric tenants: the header to send, one of sms_sender.allowed; default: theirs",
    )
    # Issue 8 (gateway.services.notify): a template instead of text, timing, dedupe.
    template: str | None = Field(None, min_length=1, max_length=64, description="replaces text/html")
    variables: dict[str, Any] | None = Field(None, description="the template's variables")
    delay: int | float | str | None = Field(None, description="seconds or ISO 8601 (PT15M); not with send_at")
    business_hours_only: bool = Field(False, description="wait for the next opening of the business hours")
    location: str | None = Field(None, max_length=64, description="whose business hours (a location's)")
    dedupe_key: str | None = Field(
        None, min_length=1, max_length=200, description="replaces the scheduled message with this key"
    )


class SmsInfo(Out):
    encoding: str
    parts: int
    sender: str | None = None


class EmailInfo(Out):
    sender: str = Field(description="the tenant's current mailbox address (From)")
    recipient: str
    subject: str
    message_id: str = Field(description="the RFC 5322 Message-ID the email carries")


class MessageAcceptedItem(Out):
    id: str
    channel: str
    status: str
    thread_id: str
    sms: SmsInfo | None = None
    email: EmailInfo | None = None


class MessagesAccepted(Out):
    messages: list[MessageAcceptedItem]


class SmsPartOut(Out):
    part_no: int
    status: str
    connector: str | None
    smsc_message_id: str | None
    status_reason: str | None


class EmailOut(Out):
    subject: str | None
    message_id: str | None = Field(description="RFC 5322 Message-ID")
    in_reply_to: str | None = Field(description="the inbound email this one answers")
    html: bool = Field(description="true when an HTML alternative was given")


class MessageOut(Out):
    id: str
    direction: str
    channel: str
    status: str
    status_reason: str | None
    thread_id: str
    category: str
    sender: str | None
    recipient: str | None
    text: str
    sms: SmsInfo | None = None
    sms_parts: list[SmsPartOut] | None = None
    email: EmailOut | None = None
    send_at: datetime | None
    created_at: datetime
    updated_at: datetime
