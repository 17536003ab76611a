"""Queries for inbound SMS: duplicate fingerprints, pending concatenation parts, reply routing, drops.

Statements are built once at import (building one per call costs more than running it; an MO costs
a handful of statements and the benchmark asks for thousands per second).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.tables import (
    contact_phones,
    contacts,
    sender_assignments,
    sender_numbers,
    sms_mo_fingerprints,
    sms_mo_parts,
    tenants,
)

# --- fingerprints (duplicate deliver_sm) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeenBefore:
    """An earlier deliver_sm with the same fingerprint, and what it became."""

    received_at: datetime
    answered: bool
    tenant_id: str | None
    message_id: str | None


_GET_FP = sa.select(
    sms_mo_fingerprints.c.received_at,
    sms_mo_fingerprints.c.answered,
    sms_mo_fingerprints.c.tenant_id,
    sms_mo_fingerprints.c.message_id,
).where(sms_mo_fingerprints.c.fingerprint == sa.bindparam("fp"))
_INSERT_FP = sa.insert(sms_mo_fingerprints)
_RENEW_FP = (
    sa.update(sms_mo_fingerprints)
    .where(sms_mo_fingerprints.c.fingerprint == sa.bindparam("fp"))
    .values(
        received_at=sa.bindparam("now"),
        answered=False,
        tenant_id=sa.bindparam("t_id"),
        message_id=sa.bindparam("m_id"),
    )
)
_ANSWERED_FP = (
    sa.update(sms_mo_fingerprints)
    .where(sms_mo_fingerprints.c.fingerprint.in_(sa.bindparam("fps", expanding=True)))
    .values(answered=True)
)


async def seen(conn: AsyncConnection, fingerprint: str) -> SeenBefore | None:
    row = (await conn.execute(_GET_FP, {"fp": fingerprint})).first()
    return SeenBefore(row[0], bool(row[1]), row[2], row[3]) if row else None


async def record_fingerprint(
    conn: AsyncConnection,
    fingerprint: str,
    *,
    known: bool,
    now: datetime,
    tenant_id: str | None,
    message_id: str | None,
) -> None:
    """Remember a deliver_sm (unanswered, with what it became), written last in its unit of work.

    Two identical deliver_sm in flight at once on PostgreSQL: the second insert fails on the
    primary key, its unit rolls back, the SMSC gets ESME_RX_T_APPN and resends it; by then the first
    is committed and the resend is recognised. No lock is taken for this rare race (one round trip
    less per message).
    """
    if known:
        await conn.execute(_RENEW_FP, {"fp": fingerprint, "now": now, "t_id": tenant_id, "m_id": message_id})
    else:
        await conn.execute(
            _INSERT_FP,
            {
                "fingerprint": fingerprint,
                "answered": False,
                "tenant_id": tenant_id,
                "message_id": message_id,
                "received_at": now,
            },
        )


async def mark_answered(conn: AsyncConnection, fingerprints: Sequence[str]) -> None:
    """These deliver_sm were acknowledged with ESME_ROK: a later identical one is a new message."""
    if fingerprints:
        await conn.execute(_ANSWERED_FP, {"fps": list(fingerprints)})


async def purge_fingerprints(conn: AsyncConnection, before: datetime) -> int:
    result = await conn.execute(
        sa.delete(sms_mo_fingerprints).where(sms_mo_fingerprints.c.received_at < before)
    )
    return int(result.rowcount or 0)


# --- concatenation parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConcatKey:
    """The Kannel key of a concatenated MO (issue 4): parts with equal keys are one message."""

    connector: str
    source: str
    destination: str
    reference: int
    total: int

    def lock_name(self) -> str:
        return f"mo-concat:{self.connector}:{self.source}:{self.destination}:{self.reference}:{self.total}"

    def where(self) -> sa.ColumnElement[bool]:
        return sa.and_(
            sms_mo_parts.c.connector == self.connector,
            sms_mo_parts.c.source == self.source,
            sms_mo_parts.c.destination == self.destination,
            sms_mo_parts.c.reference == self.reference,
            sms_mo_parts.c.total == self.total,
        )


@dataclass(frozen=True, slots=True)
class StoredPart:
    part_no: int
    data_coding: int
    payload: bytes
    received_at: datetime


_PART_COLUMNS = (
    sms_mo_parts.c.part_no,
    sms_mo_parts.c.data_coding,
    sms_mo_parts.c.payload,
    sms_mo_parts.c.received_at,
)


async def parts(conn: AsyncConnection, key: ConcatKey) -> list[StoredPart]:
    rows = await conn.execute(sa.select(*_PART_COLUMNS).where(key.where()).order_by(sms_mo_parts.c.part_no))
    return [StoredPart(r[0], r[1], bytes(r[2]), r[3]) for r in rows]


async def add_part(
    conn: AsyncConnection, key: ConcatKey, part_no: int, data_coding: int, payload: bytes, now: datetime
) -> None:
    await conn.execute(
        sa.insert(sms_mo_parts).values(
            connector=key.connector,
            source=key.source,
            destination=key.destination,
            reference=key.reference,
            total=key.total,
            part_no=part_no,
            data_coding=data_coding,
            payload=payload,
            received_at=now,
        )
    )


async def delete_parts(conn: AsyncConnection, key: ConcatKey) -> None:
    await conn.execute(sa.delete(sms_mo_parts).where(key.where()))


async def stale_keys(conn: AsyncConnection, first_part_before: datetime, limit: int = 500) -> list[ConcatKey]:
    """Concatenations whose first part arrived before ``first_part_before`` (oldest first)."""
    cols = (
        sms_mo_parts.c.connector,
        sms_mo_parts.c.source,
        sms_mo_parts.c.destination,
        sms_mo_parts.c.reference,
        sms_mo_parts.c.total,
    )
    first = sa.func.min(sms_mo_parts.c.received_at)
    q = sa.select(*cols).group_by(*cols).having(first < first_part_before).order_by(first).limit(limit)
    return [ConcatKey(r[0], r[1], r[2], r[3], r[4]) for r in await conn.execute(q)]


# --- routing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRow:
    """What one query knows about (pool number, customer): whether the number is ours, and the
    assignment with its tenant's settings and its contact (when the assignment names one)."""

    is_pool: bool
    tenant_id: str | None = None
    last_used_at: datetime | None = None
    last_thread_id: str | None = None
    tenant_reply_window_days: int | None = None
    tenant_keywords: dict[str, Any] | None = None
    contact_pk: int | None = None
    contact_id: str | None = None
    contact_blocked: bool = False
    contact_consent_sms: bool = True


_ROUTE = (
    sa.select(
        sender_numbers.c.e164,
        sender_assignments.c.tenant_id,
        sender_assignments.c.last_used_at,
        sender_assignments.c.last_thread_id,
        tenants.c.reply_window_days,
        tenants.c.sms_keywords,
        contacts.c.pk,
        contacts.c.contact_id,
        contacts.c.blocked,
        contacts.c.consent_sms,
    )
    .select_from(
        sender_numbers.outerjoin(
            sender_assignments,
            sa.and_(
                sender_assignments.c.sender_e164 == sender_numbers.c.e164,
                sender_assignments.c.customer_e164 == sa.bindparam("customer"),
            ),
        )
        .outerjoin(tenants, tenants.c.id == sender_assignments.c.tenant_id)
        .outerjoin(contacts, contacts.c.pk == sender_assignments.c.contact_pk)
    )
    .where(sender_numbers.c.e164 == sa.bindparam("pool"))
)


async def route(conn: AsyncConnection, pool_e164: str, customer_e164: str) -> RouteRow:
    """A number retired from [sms] pool is still ours here: replies to what we sent from it route."""
    r = (await conn.execute(_ROUTE, {"pool": pool_e164, "customer": customer_e164})).first()
    if r is None:
        return RouteRow(is_pool=False)
    return RouteRow(
        is_pool=True,
        tenant_id=r[1],
        last_used_at=r[2],
        last_thread_id=r[3],
        tenant_reply_window_days=r[4],
        tenant_keywords=r[5],
        contact_pk=r[6],
        contact_id=r[7],
        contact_blocked=bool(r[8]),
        contact_consent_sms=True if r[9] is None else bool(r[9]),
    )


@dataclass(frozen=True, slots=True)
class ContactRow:
    pk: int
    contact_id: str
    blocked: bool
    consent_sms: bool


_CONTACT_BY_PHONE = (
    sa.select(contacts.c.pk, contacts.c.contact_id, contacts.c.blocked, contacts.c.consent_sms)
    .select_from(contacts.join(contact_phones, contact_phones.c.contact_pk == contacts.c.pk))
    .where(contact_phones.c.tenant_id == sa.bindparam("t_id"), contact_phones.c.e164 == sa.bindparam("e164"))
    .order_by(contacts.c.pk)
    .limit(1)
)


async def oldest_contact_with_phone(conn: AsyncConnection, tenant_id: str, e164: str) -> ContactRow | None:
    r = (await conn.execute(_CONTACT_BY_PHONE, {"t_id": tenant_id, "e164": e164})).first()
    return ContactRow(int(r[0]), r[1], bool(r[2]), bool(r[3])) if r else None


async def set_consent_sms(conn: AsyncConnection, contact_pk: int, consent: bool, now: datetime) -> bool:
    """True when the flag changed (a second STOP changes nothing and emits nothing)."""
    result = await conn.execute(
        sa.update(contacts)
        .where(contacts.c.pk == contact_pk, contacts.c.consent_sms != consent)
        .values(consent_sms=consent, updated_at=now)
    )
    return bool(result.rowcount)


# --- drops ---------------------------------------------------------------------------------------
