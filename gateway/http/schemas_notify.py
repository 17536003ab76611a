"""Request and response bodies of the notification routes (issue 8): templates, rules, app events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from gateway.http.schemas import ContextIn, MessageAcceptedItem, MessageOut, Out, Strict

# A duration: seconds, or ISO 8601 (PT15M, P1D, P1DT2H, P2W; no years or months).
Duration = int | float | str


# --- templates -----------------------------------------------------------------------------------


class TemplateSmsIn(Strict):
    text: str = Field(min_length=1, max_length=10_000, description="Jinja2 (sandboxed) source")


class TemplateEmailIn(Strict):
    subject: str | None = Field(None, max_length=998, description="default: the text's first line")
    text: str = Field(min_length=1, max_length=100_000)
    html: str | None = Field(None, max_length=1_000_000, description="autoescaped")


class TemplatePut(Strict):
    description: str | None = Field(None, max_length=500)
    sms: TemplateSmsIn | None = None
    email: TemplateEmailIn | None = None


class TemplateOut(Out):
    name: str
    description: str | None
    sms: TemplateSmsIn | None
    email: TemplateEmailIn | None
    variables: list[str] = Field(description="the variables the template reads")
    created_at: datetime
    updated_at: datetime


class TemplateList(Out):
    templates: list[TemplateOut]


class TemplateRenderIn(Strict):
    variables: dict[str, Any] = Field(default_factory=dict)


class RenderedSms(Out):
    text: str
    encoding: Literal["gsm7", "ucs2"]
    chars: int
    parts: int
    chars_left_in_part: int


class RenderedEmail(Out):
    subject: str | None
    text: str
    html: str | None


class TemplateRendered(Out):
    sms: RenderedSms | None
    email: RenderedEmail | None


# --- rules ---------------------------------------------------------------------------------------


class RuleCreate(Strict):
    event: str = Field(
        min_length=1, max_length=100, description="the app event type, e.g. order.status_changed"
    )
    match: dict[str, Any] = Field(
        default_factory=dict,
        description='data field (dotted) -> value, or {"in": [...]}, {"not": value}, {"exists": bool}',
    )
    channels: list[str] = Field(min_length=1, max_length=2)
    template: str = Field(min_length=1, max_length=64)
    category: Literal["transactional", "marketing"] = "transactional"
    delay: Duration | None = Field(None, description="seconds or ISO 8601 duration")
    business_hours_only: bool = False
    location: str | None = Field(
        None, max_length=64, description="whose business hours (with business_hours_only)"
    )
    remind_before: Duration | None = Field(None, description="send this long before data[time_field]")
    time_field: str | None = Field(None, max_length=100, description="data field with an RFC 3339 time")
    enabled: bool = True


class RulePatch(Strict):
    event: str | None = Field(None, min_length=1, max_length=100)
    match: dict[str, Any] | None = None
    channels: list[str] | None = Field(None, min_length=1, max_length=2)
    template: str | None = Field(None, min_length=1, max_length=64)
    category: Literal["transactional", "marketing"] | None = None
    delay: Duration | None = None
    business_hours_only: bool | None = None
    location: str | None = Field(None, max_length=64)
    remind_before: Duration | None = None
    time_field: str | None = Field(None, max_length=100)
    enabled: bool | None = None


class RuleOut(Out):
    id: str
    event: str
    match: dict[str, Any]
    channels: list[str]
    template: str
    category: str
    delay_seconds: int | None
    business_hours_only: bool
    location: str | None
    remind_before_seconds: int | None
    time_field: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class RuleList(Out):
    rules: list[RuleOut]


# --- app events ----------------------------------------------------------------------------------


class AppEventIn(Strict):
    type: str = Field(min_length=1, max_length=100)
    contact_id: str = Field(min_length=1, max_length=100)
    context: ContextIn | None = Field(None, description="the thread the messages join")
    data: dict[str, Any] = Field(
        default_factory=dict, description="matched by rules; the templates' variables"
    )
    id: str | None = Field(
        None, min_length=1, max_length=100, description="the app's event id: a repeat sends nothing twice"
    )


class RuleOutcome(Out):
    rule_id: str
    template: str
    outcome: Literal["queued", "scheduled", "refused", "skipped", "error"]
    reason: str | None = Field(None, description="refused/skipped/error: e.g. sms_opt_out, already_sent")
    detail: str | None = None
    field: str | None = Field(None, description="error: the variable or field at fault")
    channels: dict[str, dict[str, str]] | None = Field(None, description="refused: the reason per channel")
    dedupe_key: str | None = Field(None, description="reminders: the key that names the reminder")
    messages: list[MessageAcceptedItem]


class AppEventResult(Out):
    type: str
    results: list[RuleOutcome] = Field(description="one per enabled rule that matched, in creation order")


class MessagesCancelled(Out):
    messages: list[MessageOut] = Field(description="the messages cancelled now")
