"""Deleting what has served its purpose, in bounded chunks (see gateway/services/maintenance.py)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import attachments, idempotency_keys, parked_receipts


async def purge_parked_receipts(conn: AsyncConnection, before: datetime, limit: int) -> int:
    """Receipts parked before ``before`` whose part never showed up (an SMSC's stray or a resend)."""
    old = (
        sa.select(parked_receipts.c.id)
        .where(parked_receipts.c.received_at < before)
        .limit(limit)
        .scalar_subquery()
    )
    result = await conn.execute(sa.delete(parked_receipts).where(parked_receipts.c.id.in_(old)))
    return int(result.rowcount)


async def purge_idempotency_keys(conn: AsyncConnection, before: datetime, limit: int) -> int:
    """Keys first used before ``before``, at most ``limit`` of them, in one statement."""
    key = sa.tuple_(idempotency_keys.c.tenant_id, idempotency_keys.c.key)
    old = sa.select(idempotency_keys.c.tenant_id, idempotency_keys.c.key).where(
        idempotency_keys.c.created_at < before
    )
    # Row values (SQLite >= 3.15, PostgreSQL): the composite key picked by the bounded subquery.
    result = await conn.execute(sa.delete(idempotency_keys).where(key.in_(old.limit(limit))))
    return int(result.rowcount)


async def referenced_attachments(conn: AsyncConnection, hashes: list[str]) -> set[str]:
    """Which of these file hashes a stored attachment row still refers to."""
    if not hashes:
        return set()
    q = sa.select(attachments.c.sha256).where(attachments.c.sha256.in_(hashes)).distinct()
    return {str(h) for h in (await conn.execute(q)).scalars()}
