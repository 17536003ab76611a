"""Response bodies of the conversation routes (threads, message lists, drops, events, webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from gateway.http.schemas import Out, SmsInfo


class ContextOut(Out):
    type: str
    id: str


class AttachmentOut(Out):
    id: str
    filename: str | None
    content_type: str
    size_bytes: int
    stored: bool
    not_stored_reason: str | None = Field(
        description="saving_disabled | quota_exceeded | …; null when stored"
    )
    download_url: str | None = Field(description="GET it with the API key; null when only listed")


class ThreadMessageOut(Out):
    id: str
    direction: str = Field(description="outbound | inbound")
    channel: str = Field(description="sms | email")
    status: str
    status_reason: str | None
    sender: str | None
    recipient: str | None
    subject: str | None
    text: str
    category: str
    note: str | None = Field(description="what the gateway noticed, e.g. an incomplete concatenated SMS")
    sms: SmsInfo | None = None
    attachments: list[AttachmentOut]
    created_at: datetime
    updated_at: datetime


class MessageBrief(Out):
    id: str
    direction: str
    channel: str
    status: str
    text: str
    created_at: datetime


class ThreadSummaryOut(Out):
    id: str
    contact_id: str | None
    context: ContextOut | None
    created_at: datetime
    last_message_at: datetime
    message_count: int
    last_message: MessageBrief | None


class ThreadList(Out):
    threads: list[ThreadSummaryOut] = Field(description="newest activity first")
    next_cursor: str | None = Field(description="pass as cursor= for the next page; null: no more")


class ThreadOut(ThreadSummaryOut):
    messages: list[ThreadMessageOut] = Field(description="oldest first, both directions and channels")
    next_cursor: str | None = Field(description="more messages: pass as cursor=; null: that was all")


class ListedMessageOut(ThreadMessageOut):
    thread_id: str
    contact_id: str | None


class MessageList(Out):
    messages: list[ListedMessageOut] = Field(description="newest first")
    next_cursor: str | None


class DropOut(Out):
    id: int
    tenant_id: str | None = Field(description="null: nobody's (listed to the admin token)")
    reason: str = Field(description="reply_too_old, unsolicited, unknown_destination, duplicate, …")
    channel: str
    sender: str | None = Field(description="from: the phone number or email address")
    recipient: str | None = Field(description="to: our pool number or mailbox address")
    size_bytes: int | None
    detail: str | None
    email_message_id: str | None = Field(description="email drops: the Message-ID")
    subject: str | None = Field(description="email drops: the subject")
    created_at: datetime


class DropList(Out):
    drops: list[DropOut] = Field(description="newest first")
    next_cursor: str | None


class EventOut(Out):
    id: int = Field(description="unique, increasing as events are written; receivers dedupe on it")
    type: str = Field(
        description="message.received, message.status, message.dropped, contact.opted_out, contact.opted_in"
    )
    created_at: datetime
    data: dict[str, Any]
    cursor: str = Field(description="the feed position after this event: after= continues from here")


class EventList(Out):
    events: list[EventOut] = Field(description="in the order the changes were committed")
    next: str = Field(description="pass as after= next time (the last event's cursor, or where you were)")


class WebhookStatusOut(Out):
    url: str | None
    delivered_through: int | None = Field(
        description="id of the last event delivered or given up; every event before it in the feed was too"
    )
    pending: int = Field(description="events not delivered yet (counting stops at 10000)")
    attempts: int = Field(description="failed attempts at the next event")
    next_attempt_at: datetime | None
    failing_since: datetime | None
    last_error: str | None
    last_delivered_at: datetime | None


class WebhookFailureOut(Out):
    event_id: int
    event_type: str
    url: str
    attempts: int
    last_error: str | None
    first_failed_at: datetime
    failed_at: datetime
    event: EventOut | None = Field(description="the event as it would have been POSTed")


class WebhookFailureList(Out):
    failures: list[WebhookFailureOut] = Field(description="newest first")
    next_cursor: str | None
