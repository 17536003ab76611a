"""Message templates (issue 8): one row per (tenant, name), a body per channel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import templates

BODY_COLUMNS = ("description", "sms_text", "email_subject", "email_text", "email_html")


async def get(conn: AsyncConnection, tenant_id: str, name: str) -> dict[str, Any] | None:
    q = sa.select(templates).where(templates.c.tenant_id == tenant_id, templates.c.name == name)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def list_all(conn: AsyncConnection, tenant_id: str) -> list[dict[str, Any]]:
    q = sa.select(templates).where(templates.c.tenant_id == tenant_id).order_by(templates.c.name)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def put(
    conn: AsyncConnection, tenant_id: str, name: str, body: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], bool]:
    """Create or replace; returns (the row, created)."""
    values = {c: body.get(c) for c in BODY_COLUMNS}
    existing = await get(conn, tenant_id, name)
    if existing is None:
        await conn.execute(
            sa.insert(templates).values(
                tenant_id=tenant_id, name=name, created_at=now, updated_at=now, **values
            )
        )
    else:
        await conn.execute(
            sa.update(templates)
            .where(templates.c.tenant_id == tenant_id, templates.c.name == name)
            .values(updated_at=now, **values)
        )
    row = await get(conn, tenant_id, name)
    assert row is not None
    return row, existing is None


async def delete(conn: AsyncConnection, tenant_id: str, name: str) -> bool:
    result = await conn.execute(
        sa.delete(templates).where(templates.c.tenant_id == tenant_id, templates.c.name == name)
    )
    return bool(result.rowcount)
