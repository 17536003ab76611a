"""Sticky pool assignments: one row per (tenant, customer number), one tenant per (number, customer)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.senders import Allocation, Holding
from gateway.storage.db import fetch, run_many
from gateway.storage.tables import sender_assignments, sender_numbers

# Statements built once (this is on every send): the customer-first unique index answers both.
_HOLDINGS = sa.select(
    sender_assignments.c.sender_e164, sender_assignments.c.tenant_id, sender_assignments.c.last_used_at
).where(sender_assignments.c.customer_e164 == sa.bindparam("customer"))
_ACTIVE_POOL = (
    sa.select(sender_numbers.c.e164).where(sender_numbers.c.active.is_(True)).order_by(sender_numbers.c.e164)
)
_TAKE_OVER = sa.delete(sender_assignments).where(
    sender_assignments.c.sender_e164 == sa.bindparam("sender"),
    sender_assignments.c.customer_e164 == sa.bindparam("customer"),
    sender_assignments.c.tenant_id != sa.bindparam("t_id"),
)


def _upsert(insert: Any) -> Any:
    stmt = insert(sender_assignments)
    return stmt.on_conflict_do_update(
        index_elements=[sender_assignments.c.tenant_id, sender_assignments.c.customer_e164],
        set_={
            "sender_e164": stmt.excluded.sender_e164,
            "contact_pk": stmt.excluded.contact_pk,
            "last_thread_id": stmt.excluded.last_thread_id,
            "last_used_at": stmt.excluded.last_used_at,
        },
    )


# "Stamp this tenant's use of the number for this customer, creating the row the first time" in one
# statement: INSERT ... ON CONFLICT DO UPDATE exists in SQLite (>= 3.24) and PostgreSQL alike.
_UPSERT = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(pg_insert)}


async def holdings_for_customer(conn: AsyncConnection, customer_e164: str) -> list[Holding]:
    rows = await fetch(conn, _HOLDINGS, {"customer": customer_e164})
    return [
        Holding(sender=r["sender_e164"], tenant_id=r["tenant_id"], last_used_at=r["last_used_at"])
        for r in rows
    ]


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
    await record_uses(conn, [(tenant_id, customer_e164, allocation, contact_pk, thread_id, now)])


async def record_uses(
    conn: AsyncConnection, uses: list[tuple[str, str, Allocation, int | None, str, datetime]]
) -> None:
    """:func:`record_use` for many (tenant, customer, allocation, contact pk, thread id, now) at
    once, in a fixed order (tenant, customer) so that concurrent writers lock the rows alike
    (PostgreSQL); a later use of the same pair wins."""
    last = {(use[0], use[1]): use for use in uses}
    ordered = [last[key] for key in sorted(last)]
    for tenant_id, customer, allocation, _, _, _ in ordered:
        if allocation.takes_over:
            # Another tenant's expired hold on (number, customer): it loses the pair (replies from
            # the customer now belong to whoever wrote last, within the window).
            await conn.execute(
                _TAKE_OVER, {"sender": allocation.sender, "customer": customer, "t_id": tenant_id}
            )
    if ordered:
        await run_many(
            conn,
            _UPSERT[conn.dialect.name],
            [
                {
                    "tenant_id": tenant_id,
                    "customer_e164": customer,
                    "sender_e164": allocation.sender,
                    "contact_pk": contact_pk,
                    "last_thread_id": thread_id,
                    "last_used_at": now,
                    "created_at": now,
                }
                for tenant_id, customer, allocation, contact_pk, thread_id, now in ordered
            ],
        )


async def holdings_for_customers(conn: AsyncConnection, customers: list[str]) -> dict[str, list[Holding]]:
    """:func:`holdings_for_customer` for many customers in one query."""
    found: dict[str, list[Holding]] = {c: [] for c in customers}
    if customers:
        for r in await fetch(conn, _HOLDINGS_OF_CUSTOMERS, {"customers": sorted(set(customers))}):
            found[r["customer_e164"]].append(
                Holding(sender=r["sender_e164"], tenant_id=r["tenant_id"], last_used_at=r["last_used_at"])
            )
    return found


_HOLDINGS_OF_CUSTOMERS = sa.select(
    sender_assignments.c.customer_e164,
    sender_assignments.c.sender_e164,
    sender_assignments.c.tenant_id,
    sender_assignments.c.last_used_at,
).where(sender_assignments.c.customer_e164.in_(sa.bindparam("customers", expanding=True)))
