"""Pool sender numbers: the table mirrors ``[sms] pool`` (numbers removed from the config are kept,
inactive, because assignments and threads still refer to them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import sender_numbers


async def sync_pool(conn: AsyncConnection, numbers: Sequence[str], now: datetime) -> tuple[int, int]:
    """Make exactly ``numbers`` active; returns (added, deactivated)."""
    existing = dict((await conn.execute(sa.select(sender_numbers.c.e164, sender_numbers.c.active))).all())
    wanted = set(numbers)
    new = [n for n in numbers if n not in existing]
    if new:
        await conn.execute(
            sa.insert(sender_numbers), [{"e164": n, "active": True, "created_at": now} for n in new]
        )
    reactivate = [n for n, active in existing.items() if n in wanted and not active]
    if reactivate:
        await conn.execute(
            sa.update(sender_numbers).where(sender_numbers.c.e164.in_(reactivate)).values(active=True)
        )
    retire = [n for n, active in existing.items() if n not in wanted and active]
    if retire:
        await conn.execute(
            sa.update(sender_numbers).where(sender_numbers.c.e164.in_(retire)).values(active=False)
        )
    return len(new), len(retire)


async def active_pool(conn: AsyncConnection) -> list[str]:
    q = (
        sa.select(sender_numbers.c.e164)
        .where(sender_numbers.c.active.is_(True))
        .order_by(sender_numbers.c.e164)
    )
    return list((await conn.execute(q)).scalars())
