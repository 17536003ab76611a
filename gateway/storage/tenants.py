"""Tenant, API key, mailbox prefix and credit queries. Functions take the unit of work's connection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import SenderMode, Tenant
from gateway.storage.db import fetch_one, insert
from gateway.storage.tables import api_keys, credit_ledger, mailbox_prefixes, tenants, trusted_domains


async def insert_tenant(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(sa.insert(tenants).values(**values))


async def update_tenant(conn: AsyncConnection, tenant_id: str, values: dict[str, Any]) -> None:
    await conn.execute(sa.update(tenants).where(tenants.c.id == tenant_id).values(**values))


async def load_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).mappings().first()
    if row is None:
        return None
    prefixes = (
        await conn.execute(
            sa.select(mailbox_prefixes.c.prefix, mailbox_prefixes.c.is_current)
            .where(mailbox_prefixes.c.tenant_id == tenant_id)
            .order_by(mailbox_prefixes.c.created_at, mailbox_prefixes.c.prefix)
        )
    ).all()
    domains = (
        await conn.execute(
            sa.select(trusted_domains.c.domain)
            .where(trusted_domains.c.tenant_id == tenant_id)
            .order_by(trusted_domains.c.domain)
        )
    ).scalars()
    current = next((p for p, is_current in prefixes if is_current), "")
    return Tenant(
        id=row["id"],
        name=row["name"],
        mailbox_prefix=current,
        mailbox_aliases=tuple(p for p, is_current in prefixes if not is_current),
        trusted_domains=tuple(domains),
        sms_sender_mode=SenderMode(row["sms_sender_mode"]),
        sms_alphanumeric=row["sms_alphanumeric"],
        sms_alphanumeric_allowed=tuple(row["sms_alphanumeric_allowed"] or ()),
        attachments_save=row["attachments_save"],
        attachments_quota_bytes=row["attachments_quota_bytes"],
        attachments_used_bytes=row["attachments_used_bytes"],
        sms_credits=row["sms_credits"],
        webhook_url=row["webhook_url"],
        webhook_secret=row["webhook_secret"],
        business_hours=row["business_hours"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sms_keywords=row["sms_keywords"],
        require_verified_sender=bool(row["require_verified_sender"]),
    )


async def list_tenant_ids(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(sa.select(tenants.c.id).order_by(tenants.c.created_at))).scalars())


async def prefix_owner(conn: AsyncConnection, prefix: str) -> tuple[str, bool] | None:
    """(tenant id, is current) of a prefix, current or alias; None when nobody ever had it."""
    row = (
        await conn.execute(
            sa.select(mailbox_prefixes.c.tenant_id, mailbox_prefixes.c.is_current).where(
                mailbox_prefixes.c.prefix == prefix
            )
        )
    ).first()
    return (row[0], row[1]) if row else None


async def add_prefix(conn: AsyncConnection, tenant_id: str, prefix: str, now: datetime) -> None:
    await conn.execute(
        sa.insert(mailbox_prefixes).values(
            prefix=prefix, tenant_id=tenant_id, is_current=True, created_at=now, retired_at=None
        )
    )


async def make_prefix_current(conn: AsyncConnection, tenant_id: str, prefix: str, now: datetime) -> None:
    """Retire the current prefix (it stays a live alias) and make ``prefix`` current."""
    await conn.execute(
        sa.update(mailbox_prefixes)
        .where(mailbox_prefixes.c.tenant_id == tenant_id, mailbox_prefixes.c.is_current.is_(True))
        .values(is_current=False, retired_at=now)
    )
    owner = await prefix_owner(conn, prefix)
    if owner is None:
        await add_prefix(conn, tenant_id, prefix, now)
    else:  # one of this tenant's aliases becomes current again
        await conn.execute(
            sa.update(mailbox_prefixes)
            .where(mailbox_prefixes.c.prefix == prefix)
            .values(is_current=True, retired_at=None)
        )


async def replace_trusted_domains(conn: AsyncConnection, tenant_id: str, domains: Sequence[str]) -> None:
    await conn.execute(sa.delete(trusted_domains).where(trusted_domains.c.tenant_id == tenant_id))
    if domains:
        await conn.execute(
            sa.insert(trusted_domains), [{"tenant_id": tenant_id, "domain": d} for d in domains]
        )


async def insert_api_key(
    conn: AsyncConnection, tenant_id: str, key_hash: str, hint: str, now: datetime
) -> None:
    await conn.execute(
        sa.insert(api_keys).values(tenant_id=tenant_id, key_hash=key_hash, key_hint=hint, created_at=now)
    )


async def tenant_for_key_hash(conn: AsyncConnection, key_hash: str) -> str | None:
    row = (
        await conn.execute(
            sa.select(api_keys.c.tenant_id).where(
                api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    return row[0] if row else None


_SENDING_PROFILE = sa.select(
    tenants.c.id,
    tenants.c.sms_sender_mode,
    tenants.c.sms_alphanumeric,
    tenants.c.sms_alphanumeric_allowed,
    tenants.c.sms_credits,
).where(tenants.c.id == sa.bindparam("t_id"))


async def sending_profile(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    """The few tenant columns sending a message needs (one query instead of load_tenant's three)."""
    return await fetch_one(conn, _SENDING_PROFILE, {"t_id": tenant_id})


_CHANGE_CREDITS = (
    sa.update(tenants)
    .where(tenants.c.id == sa.bindparam("t_id"), tenants.c.sms_credits + sa.bindparam("delta") >= 0)
    .values(sms_credits=tenants.c.sms_credits + sa.bindparam("delta"), updated_at=sa.bindparam("now"))
    .returning(tenants.c.sms_credits)
)


async def reserve_credits(
    conn: AsyncConnection, tenant_id: str, charges: Sequence[tuple[int, str]], reason: str, now: datetime
) -> bool:
    """:func:`change_credits` for several messages at once: ``charges`` are (credits, message id),
    taken in order with one ledger row each, in one conditional UPDATE. False (nothing changed)
    when the balance does not cover them all."""
    total = sum(amount for amount, _ in charges)
    row = await fetch_one(conn, _CHANGE_CREDITS, {"t_id": tenant_id, "delta": -total, "now": now})
    if row is None:
        return False
    balance = int(row["sms_credits"]) + total
    ledger = []
    for amount, message_id in charges:
        balance -= amount
        ledger.append(
            {
                "tenant_id": tenant_id,
                "delta": -amount,
                "reason": reason,
                "message_id": message_id,
                "balance_after": balance,
                "created_at": now,
            }
        )
    await insert(conn, credit_ledger, ledger)
    return True


async def change_credits(
    conn: AsyncConnection,
    tenant_id: str,
    delta: int,
    reason: str,
    now: datetime,
    message_id: str | None = None,
) -> int | None:
    """Add ``delta`` (may be negative) atomically; None when the balance would go below zero.

    A single conditional UPDATE, so concurrent reservations on PostgreSQL cannot overdraw.
    """
    row = await fetch_one(conn, _CHANGE_CREDITS, {"t_id": tenant_id, "delta": delta, "now": now})
    if row is None:
        return None
    balance = row["sms_credits"]
    await insert(
        conn,
        credit_ledger,
        {
            "tenant_id": tenant_id,
            "delta": delta,
            "reason": reason,
            "message_id": message_id,
            "balance_after": balance,
            "created_at": now,
        },
    )
    return int(balance)
