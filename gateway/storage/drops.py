"""Drop records: what was refused or could not be placed, and why (SPEC 1: every drop is recorded).

One writer for every channel: inbound SMS, inbound email, bounces. A drop with ``tenant_id`` None
belongs to nobody and is listed to the admin token (SPEC 2.3).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.db import fetch_one
from gateway.storage.tables import drops

__all__ = ["insert_drop"]

_INSERT_DROP = sa.insert(drops).returning(drops.c.id)


async def insert_drop(
    conn: AsyncConnection,
    *,
    channel: str,
    tenant_id: str | None,
    reason: str,
    sender: str,
    recipient: str,
    size_bytes: int,
    detail: str,
    now: datetime,
    email_message_id: str | None = None,
    subject: str | None = None,
) -> int:
    """Write one drop record; its id. Values are cut to their columns' sizes (a hostile sender
    chooses them), never refused."""
    row = await fetch_one(
        conn,
        _INSERT_DROP,
        {
            "tenant_id": tenant_id,
            "channel": channel,
            "reason": reason,
            "sender": sender[:320],
            "recipient": recipient[:320],
            "size_bytes": size_bytes,
            "detail": detail,
            "email_message_id": email_message_id[:998] if email_message_id else None,
            "subject": subject[:998] if subject else None,
            "created_at": now,
        },
    )
    assert row is not None  # RETURNING the id of the row just inserted
    return int(row["id"])
