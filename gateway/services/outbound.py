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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import sms_text
from gateway.domain.model import Channel, Contact, Phone, SenderMode
from gateway.domain.policy import Deny, SmsTarget, check_sms, choose_sms_phone
from gateway.domain.senders import allocate
from gateway.domain.udh import ReferenceCounter
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
    messages as repo,
)
from gateway.storage import (
    tenants as tenants_repo,
)
from gateway.storage.db import Database

log = logging.getLogger(__name__)

SMS_JOB = "sms.submit"


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


class OutboundService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        settings: SmsSettings,
        *,
        references: ReferenceCounter | None = None,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
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
        encoding = sms_text.choose_encoding(req.text)
        parts = sms_text.preview(req.text).parts

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
            contact, contact_pk = await self._recipient(conn, tenant_id, req)
            refusals: dict[str, Deny] = {}
            sms_target: SmsTarget | None = None
            if Channel.SMS in req.channels:
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
                    refusals["sms"] = decided
                else:
                    sms_target = decided
            if Channel.EMAIL in req.channels:
                # Outbound email arrives with its own issue; until then refuse it explicitly.
                refusals["email"] = Deny(
                    "channel_not_available", "email sending is not enabled on this gateway"
                )
            if refusals:
                raise ChannelsRefusedError({c: (d.reason, d.detail) for c, d in refusals.items()})

            thread_id, thread_created = await self._thread(conn, tenant_id, contact_pk, req, now)
            status = "scheduled" if req.send_at and req.send_at > now else "queued"
            out: list[dict[str, Any]] = []
            if sms_target is not None:
                out.append(
                    await self._persist_sms(
                        conn, tenant, contact_pk, sms_target, req, thread_id, status, encoding, parts, now
                    )
                )
            if not thread_created:
                await repo.touch_thread(conn, thread_id, now)
            body = {"messages": out}
            if req.idempotency_key:
                await repo.update_idempotent(conn, tenant_id, req.idempotency_key, 202, body)
            return 202, body

        try:
            result = await self.db.write(unit)
        except IntegrityError:
            if not req.idempotency_key:
                raise
            # Our twin committed first: answer what it answered (and we wrote nothing).
            stored = await self.db.read(
                lambda conn: repo.get_idempotent(conn, tenant_id, req.idempotency_key or "")
            )
            if stored is None:
                raise
            return _replay(stored, request_hash)
        self.on_enqueued()
        return result

    async def _recipient(
        self, conn: AsyncConnection, tenant_id: str, req: SendRequest
    ) -> tuple[Contact | None, int | None]:
        if req.contact_id is None:
            if req.to_phone:
                # A bare number that belongs to contacts of ours obeys their consent and block flags.
                e164 = parse_phone(req.to_phone, self.settings.default_region, field="to.phone").e164
                pks = await contacts_repo.pks_by_phone(conn, tenant_id, e164)
                if pks:
                    found = await contacts_repo.load_contacts(conn, tenant_id, pks[:1])
                    return found[0], pks[0]
            return None, None
        if Channel.EMAIL not in req.channels:
            for_sms = await contacts_repo.load_for_sms(conn, tenant_id, req.contact_id)
            if for_sms is None:
                raise NotFoundError("contact", req.contact_id)
            return for_sms
        pk = await contacts_repo.contact_pk(conn, tenant_id, req.contact_id)
        if pk is None:
            raise NotFoundError("contact", req.contact_id)
        (contact,) = await contacts_repo.load_contacts(conn, tenant_id, [pk])
        return contact, pk

    async def _thread(
        self, conn: AsyncConnection, tenant_id: str, contact_pk: int | None, req: SendRequest, now: datetime
    ) -> tuple[str, bool]:
        if req.thread_id is not None:
            if not await repo.thread_exists(conn, tenant_id, req.thread_id):
                raise NotFoundError("thread", req.thread_id)
            return req.thread_id, False
        return await repo.find_or_create_thread(
            conn, tenant_id=tenant_id, contact_pk=contact_pk, context=req.context, now=now
        )

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
        if tenant["sms_sender_mode"] == SenderMode.ALPHANUMERIC:
            sender = tenant["sms_alphanumeric"] or ""
        else:
            pool = (
                list(self.settings.pool)
                if self.settings.pool is not None
                else await assignments.active_pool(conn)
            )
            holdings = await assignments.holdings_for_customer(conn, customer)
            allocation = allocate(
                tenant_id=tenant_id,
                pool=pool,
                holdings=holdings,
                customer=customer,
                now=now,
                reply_window=self.settings.reply_window,
            )
            if allocation is None:
                self.no_sender_available += 1
                raise ChannelsRefusedError(
                    {"sms": ("no_sender_available", "every pool number is in use with this customer")}
                )
            await assignments.record_use(
                conn,
                tenant_id=tenant_id,
                customer_e164=customer,
                allocation=allocation,
                contact_pk=contact_pk,
                thread_id=thread_id,
                now=now,
            )
            sender = allocation.sender
        if await tenants_repo.change_credits(conn, tenant_id, -parts, "sms_reserved", now, None) is None:
            raise ChannelsRefusedError(
                {
                    "sms": (
                        "insufficient_credits",
                        f"{parts} credits needed, {tenant['sms_credits']} available",
                    )
                }
            )
        message_id = repo.new_id("msg")
        await repo.insert_message(
            conn,
            {
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
        )
        await repo.insert_sms_parts(conn, message_id, parts, now)
        ref = self.references.next(customer) if parts > 1 else 0
        await jobs.enqueue(
            conn,
            SMS_JOB,
            {"message_id": message_id, "ref": ref},
            now=now,
            run_at=req.send_at,
            message_id=message_id,
            tenant_id=tenant_id,
            max_attempts=self.settings.max_attempts,
        )
        await repo.add_event(
            conn,
            tenant_id,
            "message.status",
            {"message_id": message_id, "channel": "sms", "status": status, "thread_id": thread_id},
            now,
        )
        return {
            "id": message_id,
            "channel": "sms",
            "status": status,
            "thread_id": thread_id,
            "sms": {"encoding": encoding.value, "parts": parts, "sender": sender},
        }


def request_hash(body: dict[str, Any]) -> str:
    """Hash of the request as sent (key order does not matter), to tell a repeat from a reuse."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_shape(req: SendRequest) -> None:
    if not req.channels:
        raise InvalidInputError("channels", "name at least one channel")
    for i, ch in enumerate(req.channels):
        if ch not in (Channel.SMS, Channel.EMAIL):
            raise InvalidInputError(f"channels[{i}]", f"unknown channel {ch!r}; use 'sms' or 'email'")
    if len(set(req.channels)) != len(req.channels):
        raise InvalidInputError("channels", "a channel is named twice")
    if req.contact_id is None and req.to_phone is None and req.to_email is None:
        raise InvalidInputError("contact_id", "give contact_id or to")
    if req.contact_id is not None and (req.to_phone or req.to_email):
        raise InvalidInputError("to", "give either contact_id or to, not both")
    if not req.text.strip():
        raise InvalidInputError("text", "must not be empty")
    if req.category not in ("transactional", "marketing"):
        raise InvalidInputError("category", "must be 'transactional' or 'marketing'")


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
                {"message_id": message_id, "channel": message["channel"], "status": "cancelled"},
                now,
            )
            updated = await repo.get_message(conn, message_id, tenant_id)
            assert updated is not None
            return updated

        return await self.db.write(unit)
