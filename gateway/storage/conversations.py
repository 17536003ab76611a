"""Read queries for the conversation views: threads, their messages and attachments, the operators'
message list, drop records. Every query is scoped to one tenant (or, for drops, to nobody's).

Lists are keyset-paginated: a page ends at the sort key of its last row and the next page starts
strictly after it, so pages stay cheap however deep, and a row inserted meanwhile never shifts the
rest by one (it is either before the cursor, already passed, or after it, still to come).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import attachments, contacts, drops, messages, threads

#: (timestamp, id) of the last row of the previous page.
Keyset = tuple[datetime, str]
IntKeyset = tuple[datetime, int]


def _before(ts_col: sa.ColumnElement[Any], id_col: sa.ColumnElement[Any], key: tuple[datetime, Any]) -> Any:
    """Rows after ``key`` in a newest-first order ((ts, id) descending)."""
    return sa.or_(ts_col < key[0], sa.and_(ts_col == key[0], id_col < key[1]))


def _after(ts_col: sa.ColumnElement[Any], id_col: sa.ColumnElement[Any], key: tuple[datetime, Any]) -> Any:
    """Rows after ``key`` in an oldest-first order ((ts, id) ascending)."""
    return sa.or_(ts_col > key[0], sa.and_(ts_col == key[0], id_col > key[1]))


# --- threads -------------------------------------------------------------------------------------

_LAST_MESSAGE_ID = (
    sa.select(messages.c.id)
    .where(messages.c.thread_id == threads.c.id)
    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_MESSAGE_COUNT = sa.select(sa.func.count()).where(messages.c.thread_id == threads.c.id).scalar_subquery()
_THREADS = sa.select(
    threads.c.id,
    threads.c.context_type,
    threads.c.context_id,
    threads.c.created_at,
    threads.c.last_message_at,
    contacts.c.contact_id,
    _MESSAGE_COUNT.label("message_count"),
    _LAST_MESSAGE_ID.label("last_message_id"),
).select_from(threads.outerjoin(contacts, contacts.c.pk == threads.c.contact_pk))


async def list_threads(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    contact_pk: int | None = None,
    context_type: str | None = None,
    context_id: str | None = None,
    after: Keyset | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest activity first (``last_message_at``, then id); ``limit`` rows at most."""
    q = _THREADS.where(threads.c.tenant_id == tenant_id)
    if contact_pk is not None:
        q = q.where(threads.c.contact_pk == contact_pk)
    if context_type is not None:
        q = q.where(threads.c.context_type == context_type)
    if context_id is not None:
        q = q.where(threads.c.context_id == context_id)
    if after is not None:
        q = q.where(_before(threads.c.last_message_at, threads.c.id, after))
    q = q.order_by(threads.c.last_message_at.desc(), threads.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def get_thread(conn: AsyncConnection, tenant_id: str, thread_id: str) -> dict[str, Any] | None:
    q = _THREADS.where(threads.c.id == thread_id, threads.c.tenant_id == tenant_id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def messages_by_id(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await conn.execute(sa.select(messages).where(messages.c.id.in_(list(ids))))
    return {r["id"]: dict(r) for r in rows.mappings()}


async def thread_messages(
    conn: AsyncConnection, thread_id: str, *, after: Keyset | None, limit: int
) -> list[dict[str, Any]]:
    """The thread's messages in the order they happened (both directions and channels)."""
    q = sa.select(messages).where(messages.c.thread_id == thread_id)
    if after is not None:
        q = q.where(_after(messages.c.created_at, messages.c.id, after))
    q = q.order_by(messages.c.created_at, messages.c.id).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def attachments_of(
    conn: AsyncConnection, message_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in message_ids}
    if not message_ids:
        return out
    q = (
        sa.select(attachments)
        .where(attachments.c.message_id.in_(list(message_ids)))
        .order_by(attachments.c.created_at, attachments.c.id)
    )
    for r in (await conn.execute(q)).mappings():
        out[r["message_id"]].append(dict(r))
    return out


async def get_attachment(conn: AsyncConnection, tenant_id: str, attachment_id: str) -> dict[str, Any] | None:
    q = sa.select(attachments).where(attachments.c.id == attachment_id, attachments.c.tenant_id == tenant_id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


# --- messages (operators' view) ----------------------------------------------------------------------


async def list_messages(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    status: str | None,
    since: datetime | None,
    after: Keyset | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; ``since`` bounds how far back (inclusive)."""
    q = (
        sa.select(messages, contacts.c.contact_id)
        .select_from(messages.outerjoin(contacts, contacts.c.pk == messages.c.contact_pk))
        .where(messages.c.tenant_id == tenant_id)
    )
    if status is not None:
        q = q.where(messages.c.status == status)
    if since is not None:
        q = q.where(messages.c.created_at >= since)
    if after is not None:
        q = q.where(_before(messages.c.created_at, messages.c.id, after))
    q = q.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


# --- drops ---------------------------------------------------------------------------------------------


async def list_drops(
    conn: AsyncConnection,
    tenant_id: str | None,
    *,
    since: datetime | None,
    after: IntKeyset | None,
    limit: int,
) -> list[dict[str, Any]]:
    """A tenant's drop records, or (``tenant_id`` None) those that belong to no tenant; newest first."""
    q = sa.select(drops).where(drops.c.tenant_id == tenant_id if tenant_id else drops.c.tenant_id.is_(None))
    if since is not None:
        q = q.where(drops.c.created_at >= since)
    if after is not None:
        q = q.where(_before(drops.c.created_at, drops.c.id, after))
    q = q.order_by(drops.c.created_at.desc(), drops.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]
