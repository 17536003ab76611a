"""Event rules (issue 8): which application events send which template."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import rules


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(sa.insert(rules).values(**values))


async def get(conn: AsyncConnection, tenant_id: str, rule_id: str) -> dict[str, Any] | None:
    q = sa.select(rules).where(rules.c.tenant_id == tenant_id, rules.c.id == rule_id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def list_all(
    conn: AsyncConnection, tenant_id: str, *, event: str | None = None, enabled_only: bool = False
) -> list[dict[str, Any]]:
    q = sa.select(rules).where(rules.c.tenant_id == tenant_id)
    if event is not None:
        q = q.where(rules.c.event == event)
    if enabled_only:
        q = q.where(rules.c.enabled.is_(True))
    q = q.order_by(rules.c.created_at, rules.c.id)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def update(
    conn: AsyncConnection, tenant_id: str, rule_id: str, values: dict[str, Any], now: datetime
) -> bool:
    result = await conn.execute(
        sa.update(rules)
        .where(rules.c.tenant_id == tenant_id, rules.c.id == rule_id)
        .values(updated_at=now, **values)
    )
    return bool(result.rowcount)


async def delete(conn: AsyncConnection, tenant_id: str, rule_id: str) -> bool:
    result = await conn.execute(sa.delete(rules).where(rules.c.tenant_id == tenant_id, rules.c.id == rule_id))
    return bool(result.rowcount)
