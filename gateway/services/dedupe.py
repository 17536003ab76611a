"""Dedupe keys (issue 8): a later request with the same key replaces the still-scheduled message.

``take_over`` and ``bind`` run inside the accept transaction of :class:`OutboundService.send`, so
"cancel the old one, return its credits, reserve for the new one" is one unit: if the new request
is refused (a channel, credits), the old message stays scheduled as if nothing happened. A key whose
message already went out (``sending`` or later) is not taken over: the request is a 409
``already_sent`` and nothing is sent again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.services.errors import ConflictError, NotFoundError
from gateway.storage import dedupe as repo
from gateway.storage import jobs
from gateway.storage import messages as messages_repo
from gateway.storage import tenants as tenants_repo
from gateway.storage.db import lock_name

#: A message in one of these has not gone anywhere and can be cancelled.
PENDING = ("queued", "scheduled")
#: A message in one of these never reached the customer: the key is free again.
DEAD = ("cancelled", "failed")


async def take_over(conn: AsyncConnection, tenant_id: str, key: str, now: datetime) -> None:
    """Cancel the key's pending messages and release it, or raise ``already_sent``."""
    # Two requests with one key at once must not both find it free (PostgreSQL: an advisory lock
    # held to the end of this transaction; SQLite: writers are serial anyway).
    await lock_name(conn, f"dedupe:{tenant_id}:{key}")
    current = await repo.messages_for(conn, tenant_id, key)
    went = [m for m in current if m["status"] not in PENDING + DEAD]
    if went:
        raise ConflictError(
            "already_sent",
            "dedupe_key",
            f"a message with this key is already {went[0]['status']}; it is not sent again",
            {"message_ids": [m["id"] for m in went], "statuses": [m["status"] for m in went]},
        )
    for message in current:
        if message["status"] in PENDING:
            await cancel(conn, tenant_id, message, now, reason="replaced by a later request (dedupe_key)")
    await repo.release(conn, tenant_id, key)


async def bind(
    conn: AsyncConnection, tenant_id: str, key: str, message_ids: list[str], now: datetime
) -> None:
    await repo.bind(conn, tenant_id, key, message_ids, now)


async def cancel(
    conn: AsyncConnection, tenant_id: str, message: dict[str, Any], now: datetime, *, reason: str
) -> None:
    """Cancel one pending message in the caller's transaction (as ``DELETE /v1/messages/{id}``):
    its queued job is cancelled, reserved SMS credits come back, a status event is written."""
    if not await messages_repo.set_message_status(
        conn, message["id"], "cancelled", now, reason=reason, only_from=PENDING
    ):
        # Claimed by a worker between our read and now: it is going out.
        raise ConflictError(
            "already_sent", "dedupe_key", "the message with this key is being sent; it is not sent again"
        )
    await jobs.cancel_for_message(conn, message["id"], now=now)
    if message["channel"] == "sms" and message["sms_parts"]:
        await tenants_repo.change_credits(
            conn, tenant_id, int(message["sms_parts"]), "sms_refund", now, message["id"]
        )
    await messages_repo.add_event(
        conn,
        tenant_id,
        "message.status",
        {
            "message_id": message["id"],
            "channel": message["channel"],
            "status": "cancelled",
            "thread_id": message["thread_id"],
        },
        now,
    )


async def cancel_key(conn: AsyncConnection, tenant_id: str, key: str, now: datetime) -> list[str]:
    """``DELETE /v1/messages?dedupe_key=``: cancel the key's pending messages; returns their ids.

    404 when the key names nothing; 409 ``not_cancellable`` when nothing of it is pending (it went
    out, or was cancelled before). The key keeps naming the cancelled messages, so a later request
    with it is accepted (a cancelled message is no obstacle) and ``GET`` still finds them."""
    await lock_name(conn, f"dedupe:{tenant_id}:{key}")
    current = await repo.messages_for(conn, tenant_id, key)
    if not current:
        raise NotFoundError("dedupe_key", key)
    pending = [m for m in current if m["status"] in PENDING]
    if not pending:
        raise ConflictError(
            "not_cancellable",
            "dedupe_key",
            f"no message with this key is queued or scheduled (it is {current[-1]['status']})",
            {"message_ids": [m["id"] for m in current], "statuses": [m["status"] for m in current]},
        )
    for message in pending:
        await cancel(conn, tenant_id, message, now, reason="cancelled by the tenant (dedupe_key)")
    return [m["id"] for m in pending]
