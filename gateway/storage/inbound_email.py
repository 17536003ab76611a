"""Queries for inbound email (issue 6): recipients, senders, references, dedupe, attachments, drops.

Every function takes the unit of work's connection; the service decides and holds the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.policy import SenderContact
from gateway.domain.threading import EmailCandidate, Via
from gateway.storage.db import LoopConnection, fetch, fetch_one, insert
from gateway.storage.tables import (
    UTCDateTime,
    attachments,
    contact_emails,
    contacts,
    mailbox_prefixes,
    messages,
    tenants,
    threads,
    trusted_domains,
)

_PREFIX_OWNER = sa.select(mailbox_prefixes.c.tenant_id).where(mailbox_prefixes.c.prefix == sa.bindparam("p"))


async def prefix_tenant(conn: AsyncConnection, prefix: str) -> str | None:
    """The tenant a mailbox prefix (current or earlier) belongs to; None when nobody ever had it."""
    found = (await conn.execute(_PREFIX_OWNER, {"p": prefix})).scalar_one_or_none()
    return str(found) if found is not None else None


@dataclass(frozen=True, slots=True)
class MailProfile:
    """What receiving mail needs of a tenant."""

    tenant_id: str
    trusted_domains: tuple[str, ...]
    require_verified_sender: bool
    reply_window_days: int | None
    attachments_save: bool
    quota_bytes: int
    used_bytes: int


_PROFILE = sa.select(
    tenants.c.require_verified_sender,
    tenants.c.reply_window_days,
    tenants.c.attachments_save,
    tenants.c.attachments_quota_bytes,
    tenants.c.attachments_used_bytes,
).where(tenants.c.id == sa.bindparam("t_id"))
_TRUSTED = sa.select(trusted_domains.c.domain).where(trusted_domains.c.tenant_id == sa.bindparam("t_id"))


async def mail_profile(conn: AsyncConnection, tenant_id: str) -> MailProfile | None:
    # fetch/fetch_one: prebuilt statements run straight on sqlite3 inside the SQLite writer (the
    # per-message path, tests/perf/smtp_in.py).
    row = await fetch_one(conn, _PROFILE, {"t_id": tenant_id})
    if row is None:
        return None
    domains = tuple(str(r["domain"]) for r in await fetch(conn, _TRUSTED, {"t_id": tenant_id}))
    return MailProfile(
        tenant_id=tenant_id,
        trusted_domains=domains,
        require_verified_sender=bool(row["require_verified_sender"]),
        reply_window_days=row["reply_window_days"],
        attachments_save=bool(row["attachments_save"]),
        quota_bytes=int(row["attachments_quota_bytes"]),
        used_bytes=int(row["attachments_used_bytes"]),
    )


_CONTACTS_WITH_EMAIL = (
    sa.select(contacts.c.pk, contacts.c.contact_id, contacts.c.blocked)
    .select_from(contact_emails.join(contacts, contacts.c.pk == contact_emails.c.contact_pk))
    .where(
        contact_emails.c.tenant_id == sa.bindparam("t_id"), contact_emails.c.email == sa.bindparam("email")
    )
    .order_by(contacts.c.pk)
)


async def contacts_with_email(
    conn: AsyncConnection, tenant_id: str, email: str
) -> tuple[tuple[SenderContact, ...], dict[int, str]]:
    """The tenant's contacts with this address, oldest first, and their contact ids by pk."""
    rows = await fetch(conn, _CONTACTS_WITH_EMAIL, {"t_id": tenant_id, "email": email})
    found: dict[int, SenderContact] = {}
    ids: dict[int, str] = {}
    for pk, contact_id, blocked in (tuple(r.values()) for r in rows):
        found.setdefault(int(pk), SenderContact(int(pk), bool(blocked)))
        ids[int(pk)] = str(contact_id)
    return tuple(found.values()), ids


_CANDIDATE_COLUMNS = (
    messages.c.id,
    messages.c.thread_id,
    messages.c.tenant_id,
    messages.c.recipient,
    messages.c.contact_pk,
    sa.func.coalesce(messages.c.send_at, messages.c.created_at, type_=UTCDateTime()).label("sent_at"),
)


def _candidate(via: Via, row: Any) -> EmailCandidate:
    return EmailCandidate(via, str(row[0]), str(row[1]), str(row[2]), row[3], row[4], row[5])


_OUTBOUND_EMAIL = sa.select(*_CANDIDATE_COLUMNS).where(
    messages.c.id == sa.bindparam("m_id"),
    messages.c.tenant_id == sa.bindparam("t_id"),
    messages.c.direction == "outbound",
    messages.c.channel == "email",
)


async def outbound_emails(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[tuple[Via, str]]
) -> list[EmailCandidate]:
    """The tenant's outbound emails named by ``ids`` (our message ids from verified Message-IDs),
    in the order given; ids that name nothing (deleted, another tenant's) are left out."""
    if not ids:
        return []
    distinct = list(dict.fromkeys(i for _, i in ids))
    if len(distinct) == 1 or isinstance(conn, LoopConnection):
        # One id (a first reply: In-Reply-To and References name the same message), or the SQLite
        # writer, where a prebuilt statement per id costs less than compiling an expanding IN.
        found = {}
        for i in distinct:
            row = await fetch_one(conn, _OUTBOUND_EMAIL, {"m_id": i, "t_id": tenant_id})
            if row is not None:
                found[i] = tuple(row.values())
        return [_candidate(via, found[i]) for via, i in ids if i in found]
    q = sa.select(*_CANDIDATE_COLUMNS).where(
        messages.c.id.in_([i for _, i in ids]),
        messages.c.tenant_id == tenant_id,
        messages.c.direction == "outbound",
        messages.c.channel == "email",
    )
    rows = {str(r[0]): r for r in await conn.execute(q)}
    return [_candidate(via, rows[i]) for via, i in ids if i in rows]


_BY_TOKEN = (
    sa.select(*_CANDIDATE_COLUMNS)
    .select_from(messages.join(threads, threads.c.id == messages.c.thread_id))
    .where(
        threads.c.token == sa.bindparam("token"),
        threads.c.tenant_id == sa.bindparam("t_id"),
        messages.c.direction == "outbound",
        messages.c.channel == "email",
    )
    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    .limit(1)
)


async def token_candidate(conn: AsyncConnection, tenant_id: str, token: str) -> EmailCandidate | None:
    """The newest outbound email of the tenant's thread with this ``+token`` (threads.token)."""
    row = await fetch_one(conn, _BY_TOKEN, {"token": token.lower(), "t_id": tenant_id})
    return _candidate("token", tuple(row.values())) if row is not None else None


_DUPLICATE = sa.select(messages.c.id).where(
    messages.c.tenant_id == sa.bindparam("t_id"), messages.c.inbound_key == sa.bindparam("key")
)


async def stored_with_key(conn: AsyncConnection, tenant_id: str, key: str) -> str | None:
    """The message already stored for this dedupe key (sender + Message-ID), if any."""
    found = await fetch_one(conn, _DUPLICATE, {"t_id": tenant_id, "key": key})
    return str(found["id"]) if found is not None else None


# --- attachments ---------------------------------------------------------------------------------

_HAS_FILE = (
    sa.select(attachments.c.id)
    .where(
        attachments.c.tenant_id == sa.bindparam("t_id"),
        attachments.c.sha256 == sa.bindparam("sha"),
        attachments.c.stored.is_(True),
    )
    .limit(1)
)
_CHARGE = (
    sa.update(tenants)
    .where(
        tenants.c.id == sa.bindparam("t_id"),
        tenants.c.attachments_used_bytes + sa.bindparam("size") <= tenants.c.attachments_quota_bytes,
    )
    .values(attachments_used_bytes=tenants.c.attachments_used_bytes + sa.bindparam("size"))
    .returning(tenants.c.attachments_used_bytes)
)
_USAGE = sa.select(tenants.c.attachments_used_bytes, tenants.c.attachments_quota_bytes).where(
    tenants.c.id == sa.bindparam("t_id")
)


async def tenant_has_file(conn: AsyncConnection, tenant_id: str, sha256: str) -> bool:
    """Does the tenant already hold a stored attachment with these bytes (counted in its quota)?"""
    return await fetch_one(conn, _HAS_FILE, {"t_id": tenant_id, "sha": sha256}) is not None


async def charge_quota(conn: AsyncConnection, tenant_id: str, size: int) -> bool:
    """Add ``size`` to the tenant's used bytes unless that would pass its quota (one conditional
    UPDATE: concurrent messages on PostgreSQL cannot both squeeze past the limit)."""
    return await fetch_one(conn, _CHARGE, {"t_id": tenant_id, "size": size}) is not None


async def quota_usage(conn: AsyncConnection, tenant_id: str) -> tuple[int, int]:
    """(used bytes, quota bytes) as they stand in this transaction."""
    row = await fetch_one(conn, _USAGE, {"t_id": tenant_id})
    return (int(row["attachments_used_bytes"]), int(row["attachments_quota_bytes"])) if row else (0, 0)


async def insert_attachments(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await insert(conn, attachments, rows)


# --- drops ---------------------------------------------------------------------------------------
