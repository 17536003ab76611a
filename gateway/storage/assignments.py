"""Sticky pool assignments: one row per (tenant, customer number), one tenant per (number, customer)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.senders import Allocation, Holding
from gateway.storage.tables import sender_assignments, sender_numbers


async def holdings_for_customer(conn: AsyncConnection, customer_e164: str) -> list[Holding]:
    rows = await conn.execute(
        sa.select(
            sender_assignments.c.sender_e164,
            sender_assignments.c.tenant_id,
            sender_assignments.c.last_used_at,
        ).where(sender_assignments.c.customer_e164 == customer_e164)
    )
    return [Holding(sender=r[0], tenant_id=r[1], last_used_at=r[2]) for r in rows]


_ACTIVE_POOL = (
    sa.select(sender_numbers.c.e164).where(sender_numbers.c.active.is_(True)).order_by(sender_numbers.c.e164)
)


async def active_pool(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(_ACTIVE_POOL)).scalars())


async def record_use(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    customer_e164: str,
    allocation: Allocation,
    contact_pk: int | None,
    thread_id: str,
    now: datetime,
) -> None:
    """Make ``allocation.sender`` this tenant's number for the customer and stamp the use."""
    if allocation.takes_over:
        # Another tenant's expired hold on (number, customer): it loses the pair (replies from the
        # customer now belong to whoever wrote last, within the window).
        await conn.execute(
            sa.delete(sender_assignments).where(
                sender_assignments.c.sender_e164 == allocation.sender,
                sender_assignments.c.customer_e164 == customer_e164,
                sender_assignments.c.tenant_id != tenant_id,
            )
        )
    values = {
        "sender_e164": allocation.sender,
        "contact_pk": contact_pk,
        "last_thread_id": thread_id,
        "last_used_at": now,
    }
    updated = await conn.execute(
        sa.update(sender_assignments)
        .where(
            sender_assignments.c.tenant_id == tenant_id, sender_assignments.c.customer_e164 == customer_e164
        )
        .values(**values)
    )
    if updated.rowcount == 0:
        await conn.execute(
            sa.insert(sender_assignments).values(
                tenant_id=tenant_id, customer_e164=customer_e164, created_at=now, **values
            )
        )
