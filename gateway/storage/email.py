"""Queries for email: the tenant's From identity, a thread's email references, email drop records."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import Contact
from gateway.storage import contacts as contacts_repo
from gateway.storage.tables import contact_emails, mailbox_prefixes, messages, tenants

_EMAILS_OF = (
    sa.select(contact_emails.c.email)
    .where(contact_emails.c.contact_pk == sa.bindparam("pk"))
    .order_by(contact_emails.c.position)
)


async def load_contact(conn: AsyncConnection, tenant_id: str, contact_id: str) -> tuple[Contact, int] | None:
    """A contact with its phones and emails (three prebuilt queries: this is on the send path)."""
    found = await contacts_repo.load_for_sms(conn, tenant_id, contact_id)
    if found is None:
        return None
    contact, pk = found
    emails = tuple(row[0] for row in await conn.execute(_EMAILS_OF, {"pk": pk}))
    return dataclasses.replace(contact, emails=emails), pk


_FROM_IDENTITY = (
    sa.select(tenants.c.name, mailbox_prefixes.c.prefix)
    .select_from(tenants)
    .outerjoin(
        mailbox_prefixes,
        sa.and_(mailbox_prefixes.c.tenant_id == tenants.c.id, mailbox_prefixes.c.is_current.is_(True)),
    )
    .where(tenants.c.id == sa.bindparam("t_id"))
)


async def from_identity(conn: AsyncConnection, tenant_id: str) -> tuple[str, str | None] | None:
    """(tenant name, current mailbox prefix) or None for an unknown tenant."""
    row = (await conn.execute(_FROM_IDENTITY, {"t_id": tenant_id})).first()
    return (str(row[0]), row[1]) if row else None


_LATEST_INBOUND = (
    sa.select(messages.c.email_message_id, messages.c.subject)
    .where(
        messages.c.thread_id == sa.bindparam("thr"),
        messages.c.channel == "email",
        messages.c.direction == "inbound",
        messages.c.email_message_id.is_not(None),
    )
    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    .limit(1)
)


async def latest_inbound(conn: AsyncConnection, thread_id: str) -> tuple[str, str | None] | None:
    """(Message-ID, subject) of the newest inbound email of the thread: what a new message answers."""
    row = (await conn.execute(_LATEST_INBOUND, {"thr": thread_id})).first()
    return (str(row[0]), row[1]) if row else None


_THREAD_IDS = (
    sa.select(messages.c.thread_id, messages.c.email_message_id)
    .where(
        messages.c.thread_id.in_(sa.bindparam("thrs", expanding=True)),
        messages.c.channel == "email",
        messages.c.email_message_id.is_not(None),
        messages.c.created_at <= sa.bindparam("before"),
    )
    .order_by(messages.c.thread_id, messages.c.created_at, messages.c.id)
)


async def thread_message_ids(
    conn: AsyncConnection, thread_ids: list[str], before: datetime
) -> dict[str, list[str]]:
    """Every email Message-ID of these threads (both directions), oldest first, up to ``before``."""
    out: dict[str, list[str]] = {}
    if not thread_ids:
        return out
    for thread_id, mid in await conn.execute(_THREAD_IDS, {"thrs": thread_ids, "before": before}):
        out.setdefault(thread_id, []).append(mid)
    return out
