"""Contact use cases: create-or-replace, read, look up by any phone number or email address."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import Consent, Contact, Phone
from gateway.services.errors import InvalidInputError, NotFoundError
from gateway.services.normalize import normalize_email, parse_phone
from gateway.storage import contacts as repo
from gateway.storage.db import Database

MAX_PHONES = 10
MAX_EMAILS = 10


def check_contact_id(contact_id: str) -> str:
    # Ids appear in URL paths: printable, no '/', no surrounding blanks. By convention the main phone.
    if not (1 <= len(contact_id) <= 100) or contact_id != contact_id.strip():
        raise InvalidInputError("contact_id", "must be 1-100 characters without surrounding spaces")
    if any(ch == "/" or not ch.isprintable() for ch in contact_id):
        raise InvalidInputError("contact_id", "must not contain '/' or control characters")
    return contact_id


class ContactService:
    def __init__(self, db: Database, clock: Callable[[], datetime], *, default_region: str) -> None:
        self.db = db
        self.clock = clock
        self.default_region = default_region

    async def put(
        self,
        tenant_id: str,
        contact_id: str,
        *,
        name: str,
        phones: Sequence[str],
        emails: Sequence[str],
        consent: Consent,
        blocked: bool,
    ) -> tuple[Contact, bool]:
        """Create or replace a contact; returns it and whether it was created."""
        check_contact_id(contact_id)
        if len(phones) > MAX_PHONES:
            raise InvalidInputError("phones", f"at most {MAX_PHONES} numbers")
        if len(emails) > MAX_EMAILS:
            raise InvalidInputError("emails", f"at most {MAX_EMAILS} addresses")
        parsed: list[Phone] = []
        for i, raw in enumerate(phones):
            phone = parse_phone(raw, self.default_region, field=f"phones[{i}]")
            if all(p.e164 != phone.e164 for p in parsed):  # '+48…' and '48…' are one number
                parsed.append(phone)
        addresses: list[str] = []
        for i, raw in enumerate(emails):
            email = normalize_email(raw, field=f"emails[{i}]")
            if email not in addresses:
                addresses.append(email)
        contact = Contact(
            tenant_id=tenant_id,
            contact_id=contact_id,
            name=name.strip(),
            phones=tuple(parsed),
            emails=tuple(addresses),
            consent=consent,
            blocked=blocked,
        )
        now = self.clock()

        async def unit(conn: AsyncConnection) -> tuple[Contact, bool]:
            pk, created = await repo.upsert_contact(conn, contact, now)
            (stored,) = await repo.load_contacts(conn, tenant_id, [pk])
            return stored, created

        return await self.db.write(unit)

    async def get(self, tenant_id: str, contact_id: str) -> Contact:
        async def unit(conn: AsyncConnection) -> Contact | None:
            pk = await repo.contact_pk(conn, tenant_id, contact_id)
            if pk is None:
                return None
            found = await repo.load_contacts(conn, tenant_id, [pk])
            return found[0] if found else None

        contact = await self.db.read(unit)
        if contact is None:
            raise NotFoundError("contact", contact_id)
        return contact

    async def find(
        self, tenant_id: str, *, phone: str | None = None, email: str | None = None
    ) -> list[Contact]:
        """Every contact of the tenant with this number or address (a family may share one)."""
        if (phone is None) == (email is None):
            raise InvalidInputError("phone", "give exactly one of 'phone' or 'email'")
        if phone is not None:
            e164 = parse_phone(phone, self.default_region, field="phone").e164

            async def by_phone(conn: AsyncConnection) -> list[Contact]:
                return await repo.load_contacts(
                    conn, tenant_id, await repo.pks_by_phone(conn, tenant_id, e164)
                )

            return await self.db.read(by_phone)
        assert email is not None
        address = normalize_email(email, field="email")

        async def by_email(conn: AsyncConnection) -> list[Contact]:
            return await repo.load_contacts(
                conn, tenant_id, await repo.pks_by_email(conn, tenant_id, address)
            )

        return await self.db.read(by_email)
