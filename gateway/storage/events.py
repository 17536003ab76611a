"""Reading the event feed in an order a reader can follow without ever skipping an event.

Event ids come from a sequence when the row is inserted, but concurrent transactions commit in any
order (PostgreSQL): event 11 can be committed while event 10's transaction is still running, and a
reader that returned 11 and moved past it would never see 10. Hiding "events newer than the oldest
running transaction" is not enough either, because a transaction that got its transaction id later
can have inserted its event earlier (a lower id).

So the feed's *position* is ``(xid, id)``: the writing transaction's id first (a server default,
``pg_current_xact_id()``), then the event id within it; and a reader only takes events whose ``xid``
is below the oldest transaction still running (``pg_snapshot_xmin(pg_current_snapshot())``, taken
in the query's own snapshot). Every event that is not visible yet belongs to a transaction at or
above that horizon, so it sorts after every position handed out: nothing behind a cursor can appear
later. A long write transaction anywhere on the server delays the feed (never loses from it).
SQLite has one writer at a time, committing in id order: ``xid`` is 0 there and the position is the id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import events

#: (xid, id) of an event; (0, 0) is before every event.
Position = tuple[int, int]
START: Position = (0, 0)


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    xid: int
    type: str
    payload: dict[str, Any]
    created_at: datetime

    @property
    def position(self) -> Position:
        return (self.xid, self.id)


_COLUMNS = (events.c.id, events.c.xid, events.c.type, events.c.payload, events.c.created_at)
# The oldest transaction still running, as a number comparable with the stored xid (xid8 -> bigint).
_HORIZON = sa.cast(sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text), sa.BigInteger)


def after_position(position: Position) -> sa.ColumnElement[bool]:
    """Events strictly after ``position`` (the same test the webhook cursor uses, in SQL)."""
    xid, event_id = position
    return sa.or_(events.c.xid > xid, sa.and_(events.c.xid == xid, events.c.id > event_id))


async def events_after(conn: AsyncConnection, tenant_id: str, after: Position, limit: int) -> list[EventRow]:
    """The tenant's events after ``after`` in feed order, at most ``limit``; only events that no
    event committing later can precede (see the module docstring)."""
    q = sa.select(*_COLUMNS).where(events.c.tenant_id == tenant_id, after_position(after))
    if conn.dialect.name == "postgresql":
        q = q.where(events.c.xid < _HORIZON)
    q = q.order_by(events.c.xid, events.c.id).limit(limit)
    rows = await conn.execute(q)
    return [EventRow(int(r[0]), int(r[1]), str(r[2]), dict(r[3]), r[4]) for r in rows]


async def last_position(conn: AsyncConnection, tenant_id: str) -> Position:
    """The tenant's newest event position (START when none): where a new webhook starts."""
    row = (
        await conn.execute(
            sa.select(events.c.xid, events.c.id)
            .where(events.c.tenant_id == tenant_id)
            .order_by(events.c.xid.desc(), events.c.id.desc())
            .limit(1)
        )
    ).first()
    return (int(row[0]), int(row[1])) if row else START


async def count_after(conn: AsyncConnection, tenant_id: str, after: Position, cap: int) -> int:
    """How many events after ``after`` (counting stops at ``cap``: a status page, not a report)."""
    inner = (
        sa.select(events.c.id)
        .where(events.c.tenant_id == tenant_id, after_position(after))
        .limit(cap)
        .subquery()
    )
    return int((await conn.execute(sa.select(sa.func.count()).select_from(inner))).scalar_one())
