"""Notifications (issue 8): a send request with a template, a delay, business hours or a dedupe
key becomes the ordinary :class:`SendRequest` before the accept path runs.

:meth:`NotifyService.prepare` renders the template (per channel), turns ``delay`` and
``business_hours_only`` into a ``send_at``, and passes the dedupe key on; the accept transaction
(:class:`OutboundService`) then does what it does for every message (consent, credits, threads),
plus the dedupe take-over (gateway.services.dedupe) inside the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import Channel
from gateway.domain.schedule import (
    Hours,
    ScheduleError,
    last_opening,
    next_opening,
    parse_business_hours,
    parse_duration,
)
from gateway.services import dedupe, templates
from gateway.services.errors import InvalidInputError
from gateway.services.outbound import OutboundService, SendRequest
from gateway.storage import messages as messages_repo
from gateway.storage import tenants as tenants_repo
from gateway.storage.db import Database

#: The longest ``delay`` (and rule ``remind_before``) accepted.
MAX_DELAY = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class NotifyOptions:
    """The issue-8 parts of a send request (the rest is the :class:`SendRequest`)."""

    template: str | None = None
    variables: Mapping[str, Any] | None = None
    delay: int | float | str | None = None
    business_hours_only: bool = False
    location: str | None = None

    @property
    def empty(self) -> bool:
        return (
            self.template is None
            and self.variables is None
            and self.delay is None
            and not self.business_hours_only
            and self.location is None
        )


class NotifyService:
    def __init__(self, db: Database, clock: Callable[[], datetime], outbound: OutboundService) -> None:
        self.db = db
        self.clock = clock
        self.outbound = outbound
        self.templates = templates.TemplateService(db, clock)

    async def prepare(self, tenant_id: str, draft: SendRequest, opts: NotifyOptions) -> SendRequest:
        """The request as the accept path takes it. 422 (InvalidInputError) for a missing variable,
        a bad delay, business hours that never open, an unknown location…"""
        if opts.empty:
            return draft
        now = self.clock()
        changes: dict[str, Any] = {}
        hours_doc: dict[str, Any] | None = None
        hours_loaded = False
        if opts.template is not None:
            if draft.text or draft.subject is not None or draft.html is not None:
                raise InvalidInputError("template", "give text (with subject and html) or template, not both")
            template, hours_doc = await self.templates.load_for_render(tenant_id, opts.template)
            hours_loaded = True
            changes.update(self._render(template, draft.channels, opts.variables or {}, hours_doc))
        elif opts.variables is not None:
            raise InvalidInputError("variables", "only with template")

        due: datetime | None = None
        if opts.delay is not None:
            if draft.send_at is not None:
                raise InvalidInputError("delay", "give send_at or delay, not both")
            due = now + duration(opts.delay, "delay")
        if opts.location is not None and not opts.business_hours_only:
            raise InvalidInputError("location", "only with business_hours_only")
        if opts.business_hours_only:
            if not hours_loaded:
                hours_doc = await self._business_hours(tenant_id)
            due = opening(hours_doc, opts.location, max(due or draft.send_at or now, now))
        if due is not None:
            changes["send_at"] = due if due > now else None
        return dataclasses.replace(draft, **changes)

    def _render(
        self,
        template: dict[str, Any],
        channels: tuple[str, ...],
        variables: Mapping[str, Any],
        hours_doc: dict[str, Any] | None,
    ) -> dict[str, Any]:
        name = str(template["name"])
        has = templates.channels_of(template)
        for i, channel in enumerate(channels):
            if channel in (Channel.SMS, Channel.EMAIL) and channel not in has:
                raise InvalidInputError(f"channels[{i}]", f"template {name!r} has no {channel} body")
        tz = templates.tenant_timezone(hours_doc)
        # Only the parts the requested channels use: a variable that only the email needs is not
        # required for an SMS.
        sms = (
            templates.render_part(name, "sms.text", template["sms_text"], variables, tz)
            if Channel.SMS in channels
            else None
        )
        changes: dict[str, Any] = {}
        if Channel.EMAIL in channels:
            email_text = templates.render_part(name, "email.text", template["email_text"], variables, tz)
            if template.get("email_subject") is not None:
                changes["subject"] = templates.render_part(
                    name, "email.subject", template["email_subject"], variables, tz
                ).strip()
            if template.get("email_html") is not None:
                changes["html"] = templates.render_part(
                    name, "email.html", template["email_html"], variables, tz
                )
            if sms is None:
                changes["text"] = email_text
            else:
                changes["email_text"] = email_text
        if sms is not None:
            changes["text"] = sms
        for part in ("text", "email_text"):
            if part in changes and not changes[part].strip():
                raise InvalidInputError("template", f"template {name!r} renders an empty message")
        return changes

    async def _business_hours(self, tenant_id: str) -> dict[str, Any] | None:
        async def unit(conn: AsyncConnection) -> dict[str, Any] | None:
            tenant = await tenants_repo.load_tenant(conn, tenant_id)
            return tenant.business_hours if tenant else None

        return await self.db.read(unit)

    async def reminder_time(
        self, tenant_id: str, location: str | None, due: datetime, event_at: datetime
    ) -> datetime | None:
        """When a reminder due at ``due`` goes within business hours: the next opening, unless
        that is not before the event it reminds of; then the start of the last opening before
        ``due`` (or now, when that has passed). None: now."""
        now = self.clock()
        hours = place(await self._business_hours(tenant_id), location)
        found = next_opening(hours, max(due, now))
        if found is None or found >= event_at:
            earlier = last_opening(hours, due)
            found = earlier if earlier is not None and earlier > now else now
        return found if found > now else None

    async def cancel_key(self, tenant_id: str, key: str) -> list[dict[str, Any]]:
        """``DELETE /v1/messages?dedupe_key=``: the cancelled messages (rows)."""
        now = self.clock()

        async def unit(conn: AsyncConnection) -> list[dict[str, Any]]:
            ids = await dedupe.cancel_key(conn, tenant_id, key, now)
            rows = [await messages_repo.get_message(conn, m, tenant_id) for m in ids]
            return [r for r in rows if r is not None]

        return await self.db.write(unit)


def opening(hours_doc: Mapping[str, Any] | None, location: str | None, due: datetime) -> datetime:
    """The first instant >= ``due`` within the tenant's (or the location's) business hours."""
    found = next_opening(place(hours_doc, location), due)
    if found is None:
        raise InvalidInputError("business_hours_only", "the business hours never open (no weekly hours left)")
    return found


def place(hours_doc: Mapping[str, Any] | None, location: str | None) -> Hours:
    """The tenant's (or the location's) parsed business hours; 422 when there are none."""
    if not hours_doc:
        raise InvalidInputError("business_hours_only", "the tenant has no business_hours set")
    try:
        hours = parse_business_hours(hours_doc)
    except ScheduleError as exc:
        # Stored before business hours were validated (issue 8): say what to fix.
        raise InvalidInputError(exc.field, f"the tenant's business hours are invalid: {exc.reason}") from None
    found = hours.at(location)
    if found is None:
        raise InvalidInputError("location", f"no business hours for location {location!r}")
    return found


def duration(value: int | float | str, field: str) -> timedelta:
    try:
        return parse_duration(value, field, maximum=MAX_DELAY)
    except ScheduleError as exc:
        raise InvalidInputError(exc.field, exc.reason) from None
