"""Dedupe keys (issue 8): which messages a tenant's key names now."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import dedupe_keys, messages


async def messages_for(conn: AsyncConnection, tenant_id: str, key: str) -> list[dict[str, Any]]:
    """The messages the key names (full rows, oldest first)."""
    q = (
        sa.select(messages)
        .join(dedupe_keys, dedupe_keys.c.message_id == messages.c.id)
        .where(dedupe_keys.c.tenant_id == tenant_id, dedupe_keys.c.key == key)
        .order_by(messages.c.created_at, messages.c.id)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def release(conn: AsyncConnection, tenant_id: str, key: str) -> None:
    await conn.execute(
        sa.delete(dedupe_keys).where(dedupe_keys.c.tenant_id == tenant_id, dedupe_keys.c.key == key)
    )


async def bind(
    conn: AsyncConnection, tenant_id: str, key: str, message_ids: Sequence[str], now: datetime
) -> None:
    if message_ids:
        await conn.execute(
            sa.insert(dedupe_keys),
            [{"tenant_id": tenant_id, "key": key, "message_id": m, "created_at": now} for m in message_ids],
        )
