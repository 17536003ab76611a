"""Contact queries: one row per contact, its phones and emails in child rows (ordered)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import Consent, Contact, Phone
from gateway.storage.db import fetch, fetch_one
from gateway.storage.tables import contact_emails, contact_phones, contacts


async def upsert_contact(conn: AsyncConnection, contact: Contact, now: datetime) -> tuple[int, bool]:
    """Create or replace; returns (pk, created)."""
    pk = (
        await conn.execute(
            sa.select(contacts.c.pk).where(
                contacts.c.tenant_id == contact.tenant_id, contacts.c.contact_id == contact.contact_id
            )
        )
    ).scalar_one_or_none()
    values = {
        "name": contact.name,
        "consent_sms": contact.consent.sms,
        "consent_email": contact.consent.email,
        "consent_marketing": contact.consent.marketing,
        "blocked": contact.blocked,
        "updated_at": now,
    }
    created = pk is None
    if pk is None:
        pk = (
            await conn.execute(
                sa.insert(contacts)
                .values(tenant_id=contact.tenant_id, contact_id=contact.contact_id, created_at=now, **values)
                .returning(contacts.c.pk)
            )
        ).scalar_one()
    else:
        await conn.execute(sa.update(contacts).where(contacts.c.pk == pk).values(**values))
        await conn.execute(sa.delete(contact_phones).where(contact_phones.c.contact_pk == pk))
        await conn.execute(sa.delete(contact_emails).where(contact_emails.c.contact_pk == pk))
    if contact.phones:
        await conn.execute(
            sa.insert(contact_phones),
            [
                {
                    "contact_pk": pk,
                    "position": i,
                    "tenant_id": contact.tenant_id,
                    "e164": p.e164,
                    "number_type": p.number_type,
                    "region": p.region,
                }
                for i, p in enumerate(contact.phones)
            ],
        )
    if contact.emails:
        await conn.execute(
            sa.insert(contact_emails),
            [
                {"contact_pk": pk, "position": i, "tenant_id": contact.tenant_id, "email": e}
                for i, e in enumerate(contact.emails)
            ],
        )
    return int(pk), created


async def load_contacts(conn: AsyncConnection, tenant_id: str, pks: Iterable[int]) -> list[Contact]:
    pk_list = sorted(set(pks))
    if not pk_list:
        return []
    rows = (
        (
            await conn.execute(
                sa.select(contacts)
                .where(contacts.c.tenant_id == tenant_id, contacts.c.pk.in_(pk_list))
                .order_by(contacts.c.contact_id)
            )
        )
        .mappings()
        .all()
    )
    phones: dict[int, list[Phone]] = {}
    for r in (
        await conn.execute(
            sa.select(contact_phones)
            .where(contact_phones.c.contact_pk.in_(pk_list))
            .order_by(contact_phones.c.contact_pk, contact_phones.c.position)
        )
    ).mappings():
        phones.setdefault(r["contact_pk"], []).append(Phone(r["e164"], r["number_type"], r["region"]))
    emails: dict[int, list[str]] = {}
    for r in (
        await conn.execute(
            sa.select(contact_emails)
            .where(contact_emails.c.contact_pk.in_(pk_list))
            .order_by(contact_emails.c.contact_pk, contact_emails.c.position)
        )
    ).mappings():
        emails.setdefault(r["contact_pk"], []).append(r["email"])
    return [_contact(r, phones.get(r["pk"], ()), emails.get(r["pk"], ())) for r in rows]


def _contact(r: Any, phones: Iterable[Phone], emails: Iterable[str]) -> Contact:
    return Contact(
        tenant_id=r["tenant_id"],
        contact_id=r["contact_id"],
        name=r["name"],
        phones=tuple(phones),
        emails=tuple(emails),
        consent=Consent(sms=r["consent_sms"], email=r["consent_email"], marketing=r["consent_marketing"]),
        blocked=r["blocked"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


async def contact_pk(conn: AsyncConnection, tenant_id: str, contact_id: str) -> int | None:
    return (
        await conn.execute(
            sa.select(contacts.c.pk).where(
                contacts.c.tenant_id == tenant_id, contacts.c.contact_id == contact_id
            )
        )
    ).scalar_one_or_none()


async def pks_by_phone(conn: AsyncConnection, tenant_id: str, e164: str) -> list[int]:
    q = sa.select(contact_phones.c.contact_pk).where(
        contact_phones.c.tenant_id == tenant_id, contact_phones.c.e164 == e164
    )
    return [int(pk) for pk in (await conn.execute(q)).scalars()]


async def pks_by_email(conn: AsyncConnection, tenant_id: str, email: str) -> list[int]:
    q = sa.select(contact_emails.c.contact_pk).where(
        contact_emails.c.tenant_id == tenant_id, contact_emails.c.email == email
    )
    return [int(pk) for pk in (await conn.execute(q)).scalars()]


_CONTACT_FOR_SEND = sa.select(contacts).where(
    contacts.c.tenant_id == sa.bindparam("t_id"), contacts.c.contact_id == sa.bindparam("c_id")
)
_PHONES_FOR_SEND = (
    sa.select(contact_phones.c.e164, contact_phones.c.number_type, contact_phones.c.region)
    .where(contact_phones.c.contact_pk == sa.bindparam("pk"))
    .order_by(contact_phones.c.position)
)


_CONTACTS_FOR_SEND = sa.select(contacts).where(
    contacts.c.tenant_id == sa.bindparam("t_id"),
    contacts.c.contact_id.in_(sa.bindparam("c_ids", expanding=True)),
)
_PHONES_OF_CONTACTS = (
    sa.select(
        contact_phones.c.contact_pk,
        contact_phones.c.e164,
        contact_phones.c.number_type,
        contact_phones.c.region,
    )
    .where(contact_phones.c.contact_pk.in_(sa.bindparam("pks", expanding=True)))
    .order_by(contact_phones.c.contact_pk, contact_phones.c.position)
)


async def load_many_for_sms(
    conn: AsyncConnection, tenant_id: str, contact_ids: Sequence[str]
) -> dict[str, tuple[Contact, int]]:
    """:func:`load_for_sms` for many contacts of one tenant in two queries; missing ids are absent."""
    if not contact_ids:
        return {}
    rows = await fetch(conn, _CONTACTS_FOR_SEND, {"t_id": tenant_id, "c_ids": sorted(set(contact_ids))})
    phones: dict[int, list[Phone]] = {}
    if rows:
        for p in await fetch(conn, _PHONES_OF_CONTACTS, {"pks": [r["pk"] for r in rows]}):
            phones.setdefault(p["contact_pk"], []).append(Phone(p["e164"], p["number_type"], p["region"]))
    return {r["contact_id"]: (_contact(r, phones.get(r["pk"], ()), ()), int(r["pk"])) for r in rows}


async def load_for_sms(conn: AsyncConnection, tenant_id: str, contact_id: str) -> tuple[Contact, int] | None:
    """A contact with its phones (not its emails): the two queries sending an SMS needs."""
    r = await fetch_one(conn, _CONTACT_FOR_SEND, {"t_id": tenant_id, "c_id": contact_id})
    if r is None:
        return None
    phones = tuple(
        Phone(row["e164"], row["number_type"], row["region"])
        for row in await fetch(conn, _PHONES_FOR_SEND, {"pk": r["pk"]})
    )
    contact = _contact(r, phones, ())
    return contact, int(r["pk"])
