"""Sending a message: validate every channel, reserve credits, pick the sender, persist, enqueue.

One transaction per request (SPEC 1: an accepted request is committed before the 202). Every
requested channel is checked first; if one cannot be used, nothing is written and the caller gets a
reason per channel. The same ``idempotency_key`` returns the first result and sends nothing twice,
even for two requests at the same moment (the key's row is inserted first, so on PostgreSQL the
second transaction waits on it and then fails on the primary key; on SQLite writers are serial).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import sms_text
from gateway.domain.email_ids import make_message_id
from gateway.domain.ids import new_id
from gateway.domain.model import Channel, Contact, Phone, SenderMode
from gateway.domain.policy import (
    Deny,
    EmailTarget,
    SmsTarget,
    check_email,
    check_sms,
    choose_email,
    choose_sms_phone,
)
from gateway.domain.senders import Allocation, Holding, allocate
from gateway.domain.udh import ReferenceCounter
from gateway.services import dedupe
from gateway.services.errors import ChannelsRefusedError, ConflictError, InvalidInputError, NotFoundError
from gateway.services.normalize import parse_phone
from gateway.storage import (
    assignments,
    jobs,
)
from gateway.storage import (
    contacts as contacts_repo,
)
from gateway.storage import (
    email as email_repo,
)
from gateway.storage import (
    messages as repo,
)
from gateway.storage import (
    tenants as tenants_repo,
)
from gateway.storage.db import Database, insert
from gateway.storage.tables import sms_parts

log = logging.getLogger(__name__)

SMS_JOB = "sms.submit"
EMAIL_JOB = "email.send"


@dataclass(frozen=True, slots=True)
class SendRequest:
    channels: tuple[str, ...]
    text: str
    contact_id: str | None = None
    to_phone: str | None = None
    to_email: str | None = None
    subject: str | None = None
    html: str | None = None
    context: tuple[str, str] | None = None
    thread_id: str | None = None
    category: str = "transactional"
    send_at: datetime | None = None
    idempotency_key: str | None = None
    #: Alphanumeric tenants: the header for this message, one of the tenant's allowed ones.
    sms_sender: str | None = None
    #: Issue 8 (gateway.services.notify builds these): the email body when it differs from the SMS
    #: ``text`` (a template's email part), and the dedupe key whose earlier messages this replaces.
    email_text: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class SmsSettings:
    allowed_regions: tuple[str, ...]
    default_region: str
    max_parts: int
    reply_window: timedelta
    max_attempts: int
    #: The active sender pool when the caller knows it (the daemon: ``[sms] pool``, which every daemon
    #: sharing a database must agree on); None = read it from the database on each send.
    pool: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class EmailSettings:
    """Outbound email: mail goes out as ``PREFIX@mail_domain``; ``message_id_key`` signs the
    Message-IDs (gateway.domain.email_ids). ``deliverability`` (optional, ``[smtp]
    check_deliverability``) looks an address's domain up in DNS: None when it can receive mail,
    else the reason; it runs before the transaction, never inside it."""

    mail_domain: str
    message_id_key: bytes
    max_attempts: int
    deliverability: Callable[[str], Awaitable[str | None]] | None = None


class OutboundService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        settings: SmsSettings,
        *,
        references: ReferenceCounter | None = None,
        on_enqueued: Callable[[], None] | None = None,
        email: EmailSettings | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.email = email
        self.references = references or ReferenceCounter()
        self.on_enqueued = on_enqueued or (lambda: None)
        self.no_sender_available = 0  # counted for /metrics

    async def send(self, tenant_id: str, req: SendRequest, request_hash: str) -> tuple[int, dict[str, Any]]:
        """Returns (HTTP-ish status, response body): 202 for a new request, the stored one for a repeat."""
        _check_shape(req)
        now = self.clock()
        to_phone = (
            parse_phone(req.to_phone, self.settings.default_region, field="to.phone")
            if req.to_phone
            else None
        )
        shape = sms_text.preview(req.text)
        encoding, parts = shape.encoding, shape.parts
        if _batchable(req):
            # The common request (an SMS to a contact) joins the others waiting for the database:
            # one statement per table for all of them (ISSUE 3), same checks and outcome as alone.
            item = _SmsItem(tenant_id, req, encoding, parts, request_hash)
            try:
                status, body = await self.db.write_batched(self._accept_sms, item)
            except ChannelsRefusedError as exc:
                if exc.refusals.get("sms", ("", ""))[0] == "no_sender_available":
                    self.no_sender_available += 1
                raise
            except IntegrityError as exc:
                # PostgreSQL: another daemon stored the same idempotency key first; answer as it did.
                return await self._replay_committed(tenant_id, req, request_hash, exc)
            if status == 202:
                self.on_enqueued()
            return status, body
        undeliverable = await self._deliverability(tenant_id, req)

        async def unit(conn: AsyncConnection) -> tuple[int, dict[str, Any]]:
            if req.idempotency_key:
                stored = await repo.get_idempotent(conn, tenant_id, req.idempotency_key)
                if stored is not None:
                    return _replay(stored, request_hash)
                # Claim the key first: a concurrent twin blocks here (PostgreSQL) until we commit.
                await repo.put_idempotent(conn, tenant_id, req.idempotency_key, request_hash, 0, {}, now)
            tenant = await tenants_repo.sending_profile(conn, tenant_id)
            if tenant is None:
                raise NotFoundError("tenant", tenant_id)
            if req.dedupe_key:
                # Issue 8: cancel what the key names (credits back) before this request reserves.
                await dedupe.take_over(conn, tenant_id, req.dedupe_key, now)
            contact, contact_pk = await self._recipient(conn, tenant_id, req, to_phone)
            refusals: dict[str, Deny] = {}
            sms_target: SmsTarget | None = None
            if Channel.SMS in req.channels:
                decided = self._sms_decision(tenant, contact, to_phone, req, parts)
                if isinstance(decided, Deny):
                    refusals["sms"] = decided
                else:
                    sms_target = decided
            email_target: EmailTarget | None = None
            email_contact: tuple[Contact | None, int | None] = (contact, contact_pk)
            if Channel.EMAIL in req.channels:
                email_contact = await self._email_contact(conn, tenant_id, req, contact, contact_pk)
                decided_email = self._check_email(email_contact[0], req, undeliverable)
                if isinstance(decided_email, Deny):
                    refusals["email"] = decided_email
                else:
                    email_target = decided_email
            if refusals:
                raise ChannelsRefusedError({c: (d.reason, d.detail) for c, d in refusals.items()})

            thread_id, thread_created = await self._thread(conn, tenant_id, contact_pk, req, to_phone, now)
            status = "scheduled" if req.send_at and req.send_at > now else "queued"
            out: list[dict[str, Any]] = []
            if sms_target is not None:
                out.append(
                    await self._persist_sms(
                        conn, tenant, contact_pk, sms_target, req, thread_id, status, encoding, parts, now
                    )
                )
            if email_target is not None:
                out.append(
                    await self._persist_email(
                        conn, tenant_id, email_contact, email_target, req, thread_id, status, now
                    )
                )
            if not thread_created:
                await repo.touch_thread(conn, thread_id, now)
            body = {"messages": out}
            if req.dedupe_key:
                await dedupe.bind(conn, tenant_id, req.dedupe_key, [m["id"] for m in out], now)
            if req.idempotency_key:
                await repo.update_idempotent(conn, tenant_id, req.idempotency_key, 202, body)
            return 202, body

        try:
            result = await self.db.write(unit)
        except IntegrityError as exc:
            return await self._replay_committed(tenant_id, req, request_hash, exc)
        self.on_enqueued()
        return result

    async def _replay_committed(
        self, tenant_id: str, req: SendRequest, request_hash: str, error: IntegrityError
    ) -> tuple[int, dict[str, Any]]:
        """After an IntegrityError: if a twin with our idempotency key committed first, answer what
        it answered (we wrote nothing); else the error was something else and is raised again."""
        if not req.idempotency_key:
            raise error
        stored = await self.db.read(
            lambda conn: repo.get_idempotent(conn, tenant_id, req.idempotency_key or "")
        )
        if stored is None:
            raise error
        return _replay(stored, request_hash)

    def _sms_decision(
        self,
        tenant: dict[str, Any],
        contact: Contact | None,
        to_phone: Phone | None,
        req: SendRequest,
        parts: int,
    ) -> SmsTarget | Deny:
        """Whether the SMS of ``req`` may go (SPEC 2.3 reasons), and where."""
        phone: Phone | Deny
        if to_phone is not None:
            phone = to_phone
        elif contact is not None:
            phone = choose_sms_phone(contact)
        else:
            phone = Deny("no_phone", "no phone number given")
        decided = check_sms(
            contact,
            phone,
            category=req.category,
            allowed_regions=self.settings.allowed_regions,
            parts=parts,
            max_parts=self.settings.max_parts,
        )
        if isinstance(decided, Deny):
            return decided
        return _check_sms_sender(tenant, req.sms_sender) or decided

    async def _accept_sms(self, conn: AsyncConnection, items: list[_SmsItem]) -> list[Any]:
        """Accept many SMS-to-a-contact requests in one unit (Database.write_batched): the
        decisions of :meth:`send` for each request in arrival order, each seeing the ones before
        it (credits, threads and pool numbers taken), then one statement per table for the lot.
        A refused request gets its error as its outcome and writes nothing. An idempotency key
        already stored gets its stored answer (409 for another body); a second request with the
        key of an earlier one in the batch gets that one's answer, as it would right after it.
        Outcomes are (status, body) as :meth:`send` returns them."""
        outcomes: list[Any] = [None] * len(items)
        now = self.clock()  # the batch's time: its rows are committed together
        tenant_ids = sorted({i.tenant_id for i in items})
        profiles: dict[str, dict[str, Any] | None] = {}
        found: dict[str, dict[str, tuple[Contact, int]]] = {}
        stored: dict[str, dict[str, dict[str, Any]]] = {}
        for t in tenant_ids:
            mine = [i.req for i in items if i.tenant_id == t]
            profiles[t] = await tenants_repo.sending_profile(conn, t)
            wanted = [r.contact_id or "" for r in mine]
            found[t] = await contacts_repo.load_many_for_sms(conn, t, wanted) if profiles[t] else {}
            keys = [r.idempotency_key for r in mine if r.idempotency_key]
            stored[t] = await repo.get_idempotent_many(conn, t, keys)
        claimed: dict[tuple[str, str], int] = {}  # (tenant, idempotency key) -> the item that has it
        twins: list[tuple[int, int]] = []  # (item, earlier item of this batch with the same key)
        decided: list[tuple[int, SmsTarget, int, dict[str, Any]]] = []  # (item, target, contact pk, tenant)
        for n, item in enumerate(items):
            if key := item.req.idempotency_key:
                if (prior := stored[item.tenant_id].get(key)) is not None:
                    outcomes[n] = _replayed(prior, item.request_hash)
                    continue
                if (item.tenant_id, key) in claimed:
                    twins.append((n, claimed[(item.tenant_id, key)]))
                    continue
                claimed[(item.tenant_id, key)] = n
            tenant = profiles[item.tenant_id]
            hit = found[item.tenant_id].get(item.req.contact_id or "")
            if tenant is None:
                outcomes[n] = NotFoundError("tenant", item.tenant_id)
            elif hit is None:
                outcomes[n] = NotFoundError("contact", item.req.contact_id or "")
            elif isinstance(target := self._sms_decision(tenant, hit[0], None, item.req, item.parts), Deny):
                outcomes[n] = ChannelsRefusedError({"sms": (target.reason, target.detail)})
            else:
                decided.append((n, target, hit[1], tenant))
        needs_pool = any(t["sms_sender_mode"] != SenderMode.ALPHANUMERIC for _, _, _, t in decided)
        pool = await self._pool(conn) if needs_pool else []
        customers = [target.phone.e164 for _, target, _, _ in decided]
        holdings = await assignments.holdings_for_customers(conn, customers) if needs_pool else {}
        balance = {t: int(p["sms_credits"]) for t, p in profiles.items() if p is not None}
        accepted: list[tuple[int, SmsTarget, int, Allocation | str]] = []
        for n, target, pk, tenant in decided:
            item = items[n]
            customer = target.phone.e164
            chosen = self._sender(tenant, item.req, customer, pool, holdings.get(customer, []), now)
            if chosen is None:
                outcomes[n] = _no_sender()  # counted by send(): a batch may be decided twice
                continue
            if balance[item.tenant_id] < item.parts:
                outcomes[n] = _insufficient(item.parts, balance[item.tenant_id])
                continue
            balance[item.tenant_id] -= item.parts
            if isinstance(chosen, Allocation):
                # Later requests for this customer see the number as this tenant's now.
                held = [
                    h
                    for h in holdings[customer]
                    if h.tenant_id != item.tenant_id and not (chosen.takes_over and h.sender == chosen.sender)
                ]
                holdings[customer] = [
                    *held,
                    Holding(sender=chosen.sender, tenant_id=item.tenant_id, last_used_at=now),
                ]
            accepted.append((n, target, pk, chosen))
        if accepted:
            await self._write_accepted(conn, items, accepted, outcomes, now)
        for n, first in twins:
            # As if one after the other: the twin gets the first one's stored answer.
            if isinstance(outcomes[first], Exception):
                raise _DecideAlone("a twin of a refused request")
            outcomes[n] = _replayed(_stored_answer(items[first], outcomes[first], now), items[n].request_hash)
        return outcomes

    async def _write_accepted(
        self,
        conn: AsyncConnection,
        items: list[_SmsItem],
        accepted: list[tuple[int, SmsTarget, int, Allocation | str]],
        outcomes: list[Any],
        now: datetime,
    ) -> None:
        # The threads: without a context, every contact's ongoing one in one go; with one, as alone.
        plain: dict[str, list[int]] = {}
        for n, _, pk, _ in accepted:
            if items[n].req.context is None:
                plain.setdefault(items[n].tenant_id, []).append(pk)
        ongoing = {t: await repo.ongoing_threads(conn, t, pks, now) for t, pks in plain.items()}
        created: set[str] = set()
        touched: set[str] = set()  # existing threads this batch writes to
        uses: list[tuple[str, str, Allocation, int | None, str, datetime]] = []
        charges: dict[str, list[tuple[int, str]]] = {}
        rows: list[_SmsRows] = []
        for n, target, pk, chosen in accepted:
            item = items[n]
            if item.req.context is None:
                thread_id, new = ongoing[item.tenant_id][pk]
            else:
                thread_id, new = await repo.find_or_create_thread(
                    conn, tenant_id=item.tenant_id, contact_pk=pk, context=item.req.context, now=now
                )
            if new and thread_id not in created:
                created.add(thread_id)  # its first message; the next ones in the batch touch it
            else:
                touched.add(thread_id)
            customer = target.phone.e164
            status = "scheduled" if item.req.send_at and item.req.send_at > now else "queued"
            if isinstance(chosen, Allocation):
                uses.append((item.tenant_id, customer, chosen, pk, thread_id, now))
                sender = chosen.sender
            else:
                sender = chosen
            message_id = new_id("msg")
            charges.setdefault(item.tenant_id, []).append((item.parts, message_id))
            rows.append(
                self._sms_rows(
                    message_id,
                    item.tenant_id,
                    thread_id,
                    pk,
                    item.req,
                    status,
                    sender,
                    customer,
                    item.encoding,
                    item.parts,
                    now,
                )
            )
        await repo.touch_threads(conn, [(thread_id, now) for thread_id in sorted(touched)])
        await assignments.record_uses(conn, uses)
        for tenant_id in sorted(charges):
            if not await tenants_repo.reserve_credits(
                conn, tenant_id, charges[tenant_id], "sms_reserved", now
            ):
                # Someone else spent them since we read the balance (another daemon). Raising undoes
                # this unit: several requests are then decided one by one; a lone one is refused.
                if len(items) == 1:
                    now_held = await tenants_repo.sending_profile(conn, tenant_id)
                    raise _insufficient(items[0].parts, now_held["sms_credits"] if now_held else 0)
                raise _DecideAlone(f"credits of {tenant_id} spent meanwhile")
        await repo.insert_message(conn, [r.message for r in rows])
        await insert(conn, sms_parts, [p for r in rows for p in r.parts])
        await jobs.enqueue_rows(conn, [r.job for r in rows])
        await repo.add_event_rows(conn, [r.event for r in rows])
        answers: list[dict[str, Any]] = []
        for (n, _, _, _), r in zip(accepted, rows, strict=True):
            outcomes[n] = (202, {"messages": [r.body]})
            if items[n].req.idempotency_key:
                answers.append(_stored_answer(items[n], outcomes[n], now))
        # PostgreSQL: a twin committed by another daemon meanwhile makes this an IntegrityError:
        # each request then runs alone and finds the twin's answer.
        await repo.put_idempotent_rows(conn, answers)

    async def _recipient(
        self, conn: AsyncConnection, tenant_id: str, req: SendRequest, to_phone: Phone | None
    ) -> tuple[Contact | None, int | None]:
        if req.contact_id is None:
            if to_phone is not None:
                # A bare number that belongs to contacts of ours obeys their consent and block flags.
                pks = await contacts_repo.pks_by_phone(conn, tenant_id, to_phone.e164)
                if pks:
                    found = await contacts_repo.load_contacts(conn, tenant_id, pks[:1])
                    return found[0], pks[0]
            return None, None
        if Channel.EMAIL not in req.channels:
            for_sms = await contacts_repo.load_for_sms(conn, tenant_id, req.contact_id)
            if for_sms is None:
                raise NotFoundError("contact", req.contact_id)
            return for_sms
        for_email = await email_repo.load_contact(conn, tenant_id, req.contact_id)
        if for_email is None:
            raise NotFoundError("contact", req.contact_id)
        return for_email

    async def _thread(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        contact_pk: int | None,
        req: SendRequest,
        to_phone: Phone | None,
        now: datetime,
    ) -> tuple[str, bool]:
        # Issue 7: thread_id names a thread outright, but only one of this tenant's (else 404, as for
        # any other tenant's id) and this contact's (else 422: a conversation is with one customer).
        if req.thread_id is not None:
            owner = await repo.thread_owner(conn, tenant_id, req.thread_id)
            if owner is None:
                raise NotFoundError("thread", req.thread_id)
            if owner.contact_pk != contact_pk:
                raise InvalidInputError("thread_id", "is a thread with another contact")
            if req.context is not None and owner.context != req.context:
                raise InvalidInputError("context", "differs from the context of the thread thread_id names")
            return req.thread_id, False
        addresses: tuple[str, ...] = ()
        if contact_pk is None:
            # Nobody's contact: the address stands in for the contact when choosing the thread.
            phone = to_phone.e164 if to_phone is not None else None
            addresses = tuple(a for a in (phone, (req.to_email or "").strip().lower()) if a)
        return await repo.find_or_create_thread(
            conn,
            tenant_id=tenant_id,
            contact_pk=contact_pk,
            context=req.context,
            now=now,
            addresses=addresses,
        )

    # --- email ----------------------------------------------------------------------------------

    async def _deliverability(self, tenant_id: str, req: SendRequest) -> str | None:
        """The optional DNS check of the recipient's domain, done before the unit of work (no I/O
        inside one). None: fine, not configured, or nothing to check."""
        if self.email is None or self.email.deliverability is None or Channel.EMAIL not in req.channels:
            return None
        address = req.to_email
        if address is None and req.contact_id is not None:
            contact_id = req.contact_id

            async def first_email(conn: AsyncConnection) -> str | None:
                found = await email_repo.load_contact(conn, tenant_id, contact_id)
                return found[0].emails[0] if found and found[0].emails else None

            address = await self.db.read(first_email)
        if not address:
            return None
        return await self.email.deliverability(address)

    async def _email_contact(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        req: SendRequest,
        contact: Contact | None,
        contact_pk: int | None,
    ) -> tuple[Contact | None, int | None]:
        """Whose consent and block flags the email obeys: the contact, or for a bare ``to.email``
        the tenant's first contact with that address (like a bare ``to.phone``)."""
        if req.contact_id is not None or not req.to_email:
            return contact, contact_pk
        target = email_target(req.to_email)
        if isinstance(target, Deny):
            return None, None
        pks = await contacts_repo.pks_by_email(conn, tenant_id, target.address)
        if not pks:
            return None, None
        found = await contacts_repo.load_contacts(conn, tenant_id, pks[:1])
        return found[0], pks[0]

    def _check_email(
        self, contact: Contact | None, req: SendRequest, undeliverable: str | None
    ) -> EmailTarget | Deny:
        if self.email is None:
            return Deny("channel_not_available", "email is not configured on this gateway")
        address: EmailTarget | Deny
        if req.to_email:
            address = email_target(req.to_email)
        elif contact is not None:
            chosen = choose_email(contact)
            address = chosen if isinstance(chosen, Deny) else email_target(chosen)
        else:
            address = Deny("no_email", "no email address given")
        if undeliverable and not isinstance(address, Deny):
            address = Deny("invalid_email", f"{address.address}: {undeliverable}")
        return check_email(contact, address, category=req.category)

    async def _persist_email(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        recipient: tuple[Contact | None, int | None],
        target: EmailTarget,
        req: SendRequest,
        thread_id: str,
        status: str,
        now: datetime,
    ) -> dict[str, Any]:
        assert self.email is not None
        identity = await email_repo.from_identity(conn, tenant_id)
        if identity is None or identity[1] is None:
            raise ChannelsRefusedError({"email": ("no_mailbox", "the tenant has no mailbox prefix")})
        sender = f"{identity[1]}@{self.email.mail_domain}"
        # Answer the thread's newest inbound email, so the customer's mail client threads ours
        # under it (RFC 5322 §3.6.4); References are completed from the thread when it is sent.
        answered = await email_repo.latest_inbound(conn, thread_id)
        text = req.email_text if req.email_text is not None else req.text
        subject = req.subject
        if subject is None:
            subject = reply_subject(answered[1]) if answered and answered[1] else default_subject(text)
        message_id = new_id("msg")
        header_id = make_message_id(
            self.email.message_id_key,
            self.email.mail_domain,
            tenant_id=tenant_id,
            thread_id=thread_id,
            message_id=message_id,
        )
        await repo.insert_message(
            conn,
            {
                "id": message_id,
                "tenant_id": tenant_id,
                "thread_id": thread_id,
                "contact_pk": recipient[1],
                "direction": "outbound",
                "channel": "email",
                "status": status,
                "category": req.category,
                "sender": sender,
                "recipient": target.address,
                "text": text,
                "sms_encoding": None,
                "sms_parts": None,
                "send_at": req.send_at,
                "html": req.html,
                "subject": subject,
                "status_reason": None,
                "email_message_id": header_id,
                "in_reply_to": answered[0] if answered else None,
                "size_bytes": None,
                "note": None,
                "created_at": now,
                "updated_at": now,
            },
        )
        await jobs.enqueue(
            conn,
            EMAIL_JOB,
            {"message_id": message_id},
            now=now,
            run_at=req.send_at,
            message_id=message_id,
            tenant_id=tenant_id,
            max_attempts=self.email.max_attempts,
        )
        await repo.add_event(
            conn,
            tenant_id,
            "message.status",
            {"message_id": message_id, "channel": "email", "status": status, "thread_id": thread_id},
            now,
        )
        return {
            "id": message_id,
            "channel": "email",
            "status": status,
            "thread_id": thread_id,
            "email": {
                "sender": sender,
                "recipient": target.address,
                "subject": subject,
                "message_id": header_id,
            },
        }

    async def _persist_sms(
        self,
        conn: AsyncConnection,
        tenant: dict[str, Any],
        contact_pk: int | None,
        target: SmsTarget,
        req: SendRequest,
        thread_id: str,
        status: str,
        encoding: sms_text.Encoding,
        parts: int,
        now: datetime,
    ) -> dict[str, Any]:
        customer = target.phone.e164
        tenant_id: str = tenant["id"]
        alphanumeric = tenant["sms_sender_mode"] == SenderMode.ALPHANUMERIC
        pool = [] if alphanumeric else await self._pool(conn)
        holdings = [] if alphanumeric else await assignments.holdings_for_customer(conn, customer)
        chosen = self._sender(tenant, req, customer, pool, holdings, now)
        if chosen is None:
            self.no_sender_available += 1
            raise _no_sender()
        if isinstance(chosen, Allocation):
            await assignments.record_use(
                conn,
                tenant_id=tenant_id,
                customer_e164=customer,
                allocation=chosen,
                contact_pk=contact_pk,
                thread_id=thread_id,
                now=now,
            )
            sender = chosen.sender
        else:
            sender = chosen
        if await tenants_repo.change_credits(conn, tenant_id, -parts, "sms_reserved", now, None) is None:
            raise _insufficient(parts, tenant["sms_credits"])
        message_id = new_id("msg")
        rows = self._sms_rows(
            message_id, tenant_id, thread_id, contact_pk, req, status, sender, customer, encoding, parts, now
        )
        await repo.insert_message(conn, rows.message)
        await insert(conn, sms_parts, rows.parts)
        await jobs.enqueue_rows(conn, [rows.job])
        await repo.add_event_rows(conn, [rows.event])
        return rows.body

    async def _pool(self, conn: AsyncConnection) -> Sequence[str]:
        return self.settings.pool if self.settings.pool is not None else await assignments.active_pool(conn)

    def _sender(
        self,
        tenant: dict[str, Any],
        req: SendRequest,
        customer: str,
        pool: Sequence[str],
        holdings: Sequence[Holding],
        now: datetime,
    ) -> Allocation | str | None:
        """The header of an alphanumeric tenant; else the pool number to use for ``customer``
        (None: none is free)."""
        if tenant["sms_sender_mode"] == SenderMode.ALPHANUMERIC:
            return str(req.sms_sender or tenant["sms_alphanumeric"] or "")
        return allocate(
            tenant_id=tenant["id"],
            pool=pool,
            holdings=holdings,
            customer=customer,
            now=now,
            reply_window=self.settings.reply_window,
        )

    def _sms_rows(
        self,
        message_id: str,
        tenant_id: str,
        thread_id: str,
        contact_pk: int | None,
        req: SendRequest,
        status: str,
        sender: str,
        customer: str,
        encoding: sms_text.Encoding,
        parts: int,
        now: datetime,
    ) -> _SmsRows:
        """What accepting one SMS writes (besides credits, thread and sender assignment), and the
        answer for it."""
        ref = self.references.next(customer) if parts > 1 else 0
        return _SmsRows(
            message={
                "id": message_id,
                "tenant_id": tenant_id,
                "thread_id": thread_id,
                "contact_pk": contact_pk,
                "direction": "outbound",
                "channel": "sms",
                "status": status,
                "category": req.category,
                "sender": sender,
                "recipient": customer,
                "text": req.text,
                "sms_encoding": encoding.value,
                "sms_parts": parts,
                "send_at": req.send_at,
                "html": None,
                "subject": None,
                "status_reason": None,
                "email_message_id": None,
                "in_reply_to": None,
                "size_bytes": None,
                "note": None,
                "created_at": now,
                "updated_at": now,
            },
            parts=[
                {"message_id": message_id, "part_no": n, "status": "pending", "updated_at": now}
                for n in range(1, parts + 1)
            ],
            job=jobs.job_row(
                SMS_JOB,
                {"message_id": message_id, "ref": ref},
                now=now,
                run_at=req.send_at,
                message_id=message_id,
                tenant_id=tenant_id,
                max_attempts=self.settings.max_attempts,
            ),
            event={
                "tenant_id": tenant_id,
                "type": "message.status",
                "payload": {
                    "message_id": message_id,
                    "channel": "sms",
                    "status": status,
                    "thread_id": thread_id,
                },
                "created_at": now,
            },
            body={
                "id": message_id,
                "channel": "sms",
                "status": status,
                "thread_id": thread_id,
                "sms": {"encoding": encoding.value, "parts": parts, "sender": sender},
            },
        )


@dataclass(frozen=True, slots=True)
class _SmsRows:
    message: dict[str, Any]
    parts: list[dict[str, Any]]
    job: dict[str, Any]
    event: dict[str, Any]
    body: dict[str, Any]


def request_hash(body: dict[str, Any]) -> str:
    """Hash of the request as sent (key order does not matter), to tell a repeat from a reuse."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def email_target(raw: str) -> EmailTarget | Deny:
    """Syntax check (email-validator, no DNS) and the form the address travels in: the ASCII form
    when there is one (an IDN domain as A-labels, RFC 5890), else UTF-8 with SMTPUTF8 (RFC 6531)."""
    try:
        checked = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        return Deny("invalid_email", f"{raw!r} is not a valid email address: {exc}")
    if checked.ascii_email:
        return EmailTarget(checked.ascii_email.lower())
    return EmailTarget(checked.normalized.lower(), needs_smtputf8=True)


def default_subject(text: str, limit: int = 78) -> str:
    """A message without a subject gets its first line (cut at a word, at most ``limit``)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) <= limit:
        return first
    cut = first[: limit - 1].rsplit(" ", 1)[0] or first[: limit - 1]
    return cut.rstrip(" ,.;:") + "…"


def reply_subject(subject: str) -> str:
    """``Re: `` once (RFC 5322 §3.6.5), however many the answered subject already had."""
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


def _no_line_breaks(value: str | None, field: str) -> None:
    # RFC 5322 §2.2: a header field is one line; CR or LF in a value would start another one.
    if value is not None and ("\r" in value or "\n" in value):
        raise InvalidInputError(field, "must not contain line breaks (CR or LF)")


def check_channels(channels: Sequence[str]) -> None:
    """At least one channel, each "sms" or "email", none twice (messages and rules alike)."""
    if not channels:
        raise InvalidInputError("channels", "name at least one channel")
    for i, ch in enumerate(channels):
        if ch not in (Channel.SMS, Channel.EMAIL):
            raise InvalidInputError(f"channels[{i}]", f"unknown channel {ch!r}; use 'sms' or 'email'")
    if len(set(channels)) != len(channels):
        raise InvalidInputError("channels", "a channel is named twice")


def check_category(category: str) -> None:
    if category not in ("transactional", "marketing"):
        raise InvalidInputError("category", "must be 'transactional' or 'marketing'")


def _check_shape(req: SendRequest) -> None:
    check_channels(req.channels)
    if req.contact_id is None and req.to_phone is None and req.to_email is None:
        raise InvalidInputError("contact_id", "give contact_id or to")
    if req.contact_id is not None and (req.to_phone or req.to_email):
        raise InvalidInputError("to", "give either contact_id or to, not both")
    if not req.text.strip():
        raise InvalidInputError("text", "must not be empty")
    check_category(req.category)
    _no_line_breaks(req.subject, "subject")
    _no_line_breaks(req.to_email, "to.email")


@dataclass(frozen=True, slots=True)
class _SmsItem:
    """One request waiting to be accepted with others (OutboundService._accept_sms)."""

    tenant_id: str
    req: SendRequest
    encoding: sms_text.Encoding
    parts: int
    request_hash: str


def _stored_answer(item: _SmsItem, outcome: tuple[int, dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The idempotency_keys row for an accepted request's answer."""
    return {
        "tenant_id": item.tenant_id,
        "key": item.req.idempotency_key,
        "request_hash": item.request_hash,
        "status_code": outcome[0],
        "response": outcome[1],
        "created_at": now,
    }


def _replayed(stored: dict[str, Any], request_hash: str) -> tuple[int, dict[str, Any]] | ConflictError:
    try:
        return _replay(stored, request_hash)
    except ConflictError as exc:
        return exc


class _DecideAlone(Exception):
    """A batch that cannot decide its requests as if one after another (a twin of a refused
    request; credits spent by another daemon since we read them): raised, it undoes the unit and
    Database.write_batched decides the requests one by one."""


def _batchable(req: SendRequest) -> bool:
    """An SMS to a contact without the options that need the one-request path (dedupe, a named
    thread)."""
    return (
        tuple(req.channels) == (Channel.SMS,)
        and req.contact_id is not None
        and not req.to_phone
        and not req.to_email
        and not req.dedupe_key
        and req.thread_id is None
    )


def _no_sender() -> ChannelsRefusedError:
    return ChannelsRefusedError(
        {"sms": ("no_sender_available", "every pool number is in use with this customer")}
    )


def _insufficient(parts: int, available: int) -> ChannelsRefusedError:
    return ChannelsRefusedError(
        {"sms": ("insufficient_credits", f"{parts} credits needed, {available} available")}
    )


def _check_sms_sender(tenant: dict[str, Any], wanted: str | None) -> Deny | None:
    """A per-message alphanumeric header must be one the tenant set up (validated there, so it is
    a valid header: 3GPP TS 23.040 §9.1.2.5); pool tenants cannot choose (the number is assigned,
    and the sticky rule is what routes replies)."""
    if wanted is None:
        return None
    if tenant["sms_sender_mode"] != SenderMode.ALPHANUMERIC:
        return Deny("sender_not_allowed", "sms_sender: a pool tenant sends from its assigned pool number")
    allowed = [tenant["sms_alphanumeric"], *(tenant["sms_alphanumeric_allowed"] or ())]
    if wanted not in allowed:
        return Deny("sender_not_allowed", f"sms_sender {wanted!r} is not one of {allowed}")
    return None


def _replay(stored: dict[str, Any], request_hash: str) -> tuple[int, dict[str, Any]]:
    if stored["request_hash"] != request_hash:
        raise ConflictError(
            "idempotency_key_reused", "idempotency_key", "was used before with a different request body"
        )
    return int(stored["status_code"]), dict(stored["response"])


class MessageQueries:
    """Reading and cancelling messages (tenant-scoped)."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    async def get(self, tenant_id: str, message_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async def unit(conn: AsyncConnection) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            message = await repo.get_message(conn, message_id, tenant_id)
            if message is None:
                return None
            parts = await repo.get_parts(conn, message_id) if message["channel"] == "sms" else []
            return message, parts

        found = await self.db.read(unit)
        if found is None:
            raise NotFoundError("message", message_id)
        return found

    async def cancel(self, tenant_id: str, message_id: str) -> dict[str, Any]:
        """Cancel a queued or scheduled message; its reserved credits come back."""
        now = self.clock()

        async def unit(conn: AsyncConnection) -> dict[str, Any]:
            message = await repo.get_message(conn, message_id, tenant_id)
            if message is None:
                raise NotFoundError("message", message_id)
            if not await repo.set_message_status(
                conn,
                message_id,
                "cancelled",
                now,
                reason="cancelled by the tenant",
                only_from=("queued", "scheduled"),
            ):
                raise ConflictError(
                    "not_cancellable", "status", f"a message that is {message['status']} cannot be cancelled"
                )
            await jobs.cancel_for_message(conn, message_id, now=now)
            if message["channel"] == "sms" and message["sms_parts"]:
                await tenants_repo.change_credits(
                    conn, tenant_id, int(message["sms_parts"]), "sms_refund", now, message_id
                )
            await repo.add_event(
                conn,
                tenant_id,
                "message.status",
                {
                    "message_id": message_id,
                    "channel": message["channel"],
                    "status": "cancelled",
                    "thread_id": message["thread_id"],
                },
                now,
            )
            updated = await repo.get_message(conn, message_id, tenant_id)
            assert updated is not None
            return updated

        return await self.db.write(unit)
