"""Drop records: what was refused or could not be placed, and why (SPEC 1: every drop is recorded).

One writer for every channel: inbound SMS, inbound email, bounces. A drop with ``tenant_id`` None
belongs to nobody and is listed to the admin token (SPEC 2.3).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.db import fetch_one
from gateway.storage.messages import add_event
from gateway.storage.tables import drops

__all__ = ["dropped_with_key", "record_drop"]

_INSERT_DROP = sa.insert(drops).returning(drops.c.id)


async def record_drop(
    conn: AsyncConnection,
    *,
    announce: bool,
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
    inbound_key: str | None = None,
) -> int:
    """Write one drop record; its id. Values are cut to their columns' sizes (a hostile sender
    chooses them), never refused. When ``announce`` (and the drop is a tenant's), also a
    ``message.dropped`` event carrying the record as GET /v1/drops lists it, in the same
    transaction."""
    values = {
        "tenant_id": tenant_id,
        "channel": channel,
        "reason": reason,
        "sender": sender[:320],
        "recipient": recipient[:320],
        "size_bytes": size_bytes,
        "detail": detail,
        "email_message_id": email_message_id[:998] if email_message_id else None,
        "subject": subject[:998] if subject else None,
    }
    row = await fetch_one(conn, _INSERT_DROP, {**values, "inbound_key": inbound_key, "created_at": now})
    assert row is not None
    drop_id = int(row["id"])
    if announce and tenant_id is not None:
        payload = {"drop_id": drop_id, **{k: v for k, v in values.items() if k != "tenant_id"}}
        if channel != "email":
            del payload["email_message_id"], payload["subject"]
        await add_event(conn, tenant_id, "message.dropped", payload, now)
    return drop_id


_DROPPED = (
    sa.select(drops.c.reason, drops.c.detail)
    .where(drops.c.tenant_id == sa.bindparam("t_id"), drops.c.inbound_key == sa.bindparam("key"))
    .limit(1)
)


async def dropped_with_key(conn: AsyncConnection, tenant_id: str, key: str) -> tuple[str, str] | None:
    """(reason, detail) of the drop already recorded for this inbound-email key, if any."""
    row = await fetch_one(conn, _DROPPED, {"t_id": tenant_id, "key": key})
    return (str(row["reason"]), str(row["detail"] or "")) if row else None
