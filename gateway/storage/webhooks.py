"""Webhook delivery state: per-tenant cursors with a lease, and the events given up.

Every change to a cursor after it is claimed is *fenced*: it names the lease owner, so a daemon
whose lease expired (and whose tenant another daemon took over) cannot move the cursor any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.db import lock_name
from gateway.storage.events import Position, last_position
from gateway.storage.tables import events, tenants, webhook_cursors, webhook_failures

_C = webhook_cursors


# --- set-up, with the tenant's webhook_url (gateway/services/tenants.py) ---------------------------


async def ensure_cursor(conn: AsyncConnection, tenant_id: str, now: datetime) -> None:
    """Start delivering at the tenant's next event, unless a cursor exists (a changed URL keeps its
    place: the new endpoint gets what the old one had not). Events from before the webhook was
    set are not POSTed; they are in the feed."""
    await lock_name(conn, f"webhook-cursor:{tenant_id}")  # two PATCHes at once (PostgreSQL)
    exists = (await conn.execute(sa.select(_C.c.tenant_id).where(_C.c.tenant_id == tenant_id))).first()
    if exists is not None:
        return
    xid, event_id = await last_position(conn, tenant_id)
    await conn.execute(
        sa.insert(_C).values(
            tenant_id=tenant_id,
            last_xid=xid,
            last_event_id=event_id,
            attempts=0,
            created_at=now,
            updated_at=now,
        )
    )


async def drop_cursor(conn: AsyncConnection, tenant_id: str) -> None:
    """The webhook was removed: nothing is owed any more (a new one starts afresh)."""
    await conn.execute(sa.delete(_C).where(_C.c.tenant_id == tenant_id))


# --- claiming ----------------------------------------------------------------------------------------


_DUE = (
    sa.select(_C.c.tenant_id)
    .select_from(_C.join(tenants, tenants.c.id == _C.c.tenant_id))
    .where(
        tenants.c.webhook_url.is_not(None),
        sa.or_(_C.c.next_attempt_at.is_(None), _C.c.next_attempt_at <= sa.bindparam("now")),
        sa.or_(_C.c.lease_until.is_(None), _C.c.lease_until < sa.bindparam("now")),
        sa.exists().where(
            events.c.tenant_id == _C.c.tenant_id,
            sa.or_(
                events.c.xid > _C.c.last_xid,
                sa.and_(events.c.xid == _C.c.last_xid, events.c.id > _C.c.last_event_id),
            ),
        ),
    )
    .order_by(_C.c.next_attempt_at.is_(None), _C.c.next_attempt_at, _C.c.tenant_id)
    .limit(sa.bindparam("lim"))
)


async def due_tenants(conn: AsyncConnection, now: datetime, exclude: set[str], limit: int) -> list[str]:
    """Tenants with a webhook, an event past their cursor, not backing off and not leased. (The
    statement is built once: under load the dispatcher asks after every group commit.)"""
    rows = await conn.execute(_DUE, {"now": now, "lim": limit + len(exclude)})
    found = [str(t) for t in rows.scalars() if t not in exclude]
    return found[:limit]


async def claim(conn: AsyncConnection, tenant_id: str, owner: str, now: datetime, until: datetime) -> bool:
    """Take the tenant's lease if it is free or expired (a conditional UPDATE: of two daemons, the
    second one's WHERE no longer matches once the first committed)."""
    result = await conn.execute(
        sa.update(_C)
        .where(_C.c.tenant_id == tenant_id, sa.or_(_C.c.lease_until.is_(None), _C.c.lease_until < now))
        .values(lease_owner=owner, lease_until=until)
    )
    return bool(result.rowcount)


async def extend(conn: AsyncConnection, tenant_id: str, owner: str, until: datetime) -> bool:
    result = await conn.execute(
        sa.update(_C).where(_C.c.tenant_id == tenant_id, _C.c.lease_owner == owner).values(lease_until=until)
    )
    return bool(result.rowcount)


async def release(conn: AsyncConnection, tenant_id: str, owner: str) -> None:
    await conn.execute(
        sa.update(_C)
        .where(_C.c.tenant_id == tenant_id, _C.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


# --- delivering ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a delivery round needs to know about one tenant."""

    url: str | None
    secret: str
    position: Position  # of the last event delivered or given up
    attempts: int
    failing_since: datetime | None
    lease_owner: str | None


async def target(conn: AsyncConnection, tenant_id: str) -> Target | None:
    row = (
        await conn.execute(
            sa.select(
                tenants.c.webhook_url,
                tenants.c.webhook_secret,
                _C.c.last_xid,
                _C.c.last_event_id,
                _C.c.attempts,
                _C.c.failing_since,
                _C.c.lease_owner,
            )
            .select_from(_C.join(tenants, tenants.c.id == _C.c.tenant_id))
            .where(_C.c.tenant_id == tenant_id)
        )
    ).first()
    if row is None:
        return None
    return Target(row[0], row[1] or "", (int(row[2]), int(row[3])), int(row[4]), row[5], row[6])


async def _update_leased(conn: AsyncConnection, tenant_id: str, owner: str, **values: Any) -> bool:
    """Change the tenant's cursor only while ``owner`` holds its lease; False when it no longer does
    (the lease expired and another daemon took it)."""
    result = await conn.execute(
        sa.update(_C).where(_C.c.tenant_id == tenant_id, _C.c.lease_owner == owner).values(**values)
    )
    return bool(result.rowcount)


def _moved_past(position: Position, now: datetime) -> dict[str, Any]:
    """The cursor after an event (delivered or given up): the next one starts with no attempts."""
    return {
        "last_xid": position[0],
        "last_event_id": position[1],
        "attempts": 0,
        "next_attempt_at": None,
        "updated_at": now,
    }


async def delivered(
    conn: AsyncConnection, tenant_id: str, owner: str, position: Position, now: datetime
) -> bool:
    """The event was accepted: move past it and forget earlier failures. False: not our lease."""
    return await _update_leased(
        conn,
        tenant_id,
        owner,
        **_moved_past(position, now),
        failing_since=None,
        last_error=None,
        last_delivered_at=now,
    )


async def attempt_failed(
    conn: AsyncConnection,
    tenant_id: str,
    owner: str,
    *,
    attempts: int,
    next_attempt_at: datetime,
    failing_since: datetime,
    error: str,
    now: datetime,
) -> bool:
    """Back off until ``next_attempt_at`` and let the lease go (any daemon may take it up then)."""
    return await _update_leased(
        conn,
        tenant_id,
        owner,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        failing_since=failing_since,
        last_error=error[:500],
        lease_owner=None,
        lease_until=None,
        updated_at=now,
    )


async def give_up(
    conn: AsyncConnection,
    tenant_id: str,
    owner: str,
    *,
    position: Position,
    event_type: str,
    url: str,
    attempts: int,
    first_failed_at: datetime,
    error: str,
    now: datetime,
) -> bool:
    """The event's retry window is over: record it as failed and move on to the next one."""
    moved = await _update_leased(
        conn,
        tenant_id,
        owner,
        **_moved_past(position, now),
        # Still failing (the endpoint is down): kept until an event gets through.
        failing_since=first_failed_at,
        last_error=error[:500],
    )
    if not moved:
        return False
    await conn.execute(
        sa.insert(webhook_failures).values(
            tenant_id=tenant_id,
            event_id=position[1],
            event_type=event_type,
            url=url[:2000],
            attempts=attempts,
            last_error=error[:500],
            first_failed_at=first_failed_at,
            failed_at=now,
        )
    )
    return True


# --- what the tenant and /metrics see ------------------------------------------------------------------


async def status(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(_C).where(_C.c.tenant_id == tenant_id))).mappings().first()
    return dict(row) if row else None


async def failures(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Events given up, newest first, with the event itself when it is still stored."""
    f = webhook_failures
    q = (
        sa.select(
            f,
            events.c.payload,
            events.c.created_at.label("event_created_at"),
            events.c.xid.label("event_xid"),
        )
        .select_from(f.outerjoin(events, events.c.id == f.c.event_id))
        .where(f.c.tenant_id == tenant_id)
    )
    if since is not None:
        q = q.where(f.c.failed_at >= since)
    if after is not None:
        q = q.where(sa.or_(f.c.failed_at < after[0], sa.and_(f.c.failed_at == after[0], f.c.id < after[1])))
    q = q.order_by(f.c.failed_at.desc(), f.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def counts(conn: AsyncConnection) -> tuple[int, int]:
    """(events given up, tenants currently failing) across the database, for /metrics."""
    failed = (await conn.execute(sa.select(sa.func.count()).select_from(webhook_failures))).scalar_one()
    failing = (
        await conn.execute(sa.select(sa.func.count()).select_from(_C).where(_C.c.failing_since.is_not(None)))
    ).scalar_one()
    return int(failed), int(failing)
