"""The ``email.send`` job: mark the message ``sending``, relay it, record ``sent`` or ``failed``.

Per message, in this order (each step its own transaction, the relay call outside any):

1. ``sending`` is committed before the relay hears of the message (so before DATA);
2. the relay transaction (MAIL, RCPT, DATA: gateway.smtp.relay);
3. right after the relay's reply, ``sent`` (2xx) or ``failed`` (5xx, the relay's reply as reason) is
   committed with its ``message.status`` event. A 4xx, a lost connection or a timeout raise
   :class:`RetryLaterError`: the job queue retries with backoff, and the last attempt fails the
   message with the last reply.

At least once, and the duplicate window as small as SMTP allows: a job that finds its message
``sent`` (or ``failed``, ``cancelled``) does nothing; one that finds it ``sending`` sends it (again).
A message is therefore relayed twice only when the daemon stops between the relay's 250 and our
commit of ``sent`` (milliseconds), or the connection drops after the data went out but before the
250 came back (RFC 5321 §4.1.1.4 / RFC 1047). A resend carries the same Message-ID and Date, so the
recipient's mail system can tell (docs/decisions.md "Outbound email").

Jobs claimed together share step 1 (one transaction for the batch); step 3's writes are coalesced:
whatever outcomes arrived while the previous write was committing go into the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.email_ids import make_verp
from gateway.domain.ports import EmailTransport, OutgoingEmail, RelayResult
from gateway.services.delivery import RetryLaterError
from gateway.services.shutdown import finish_or_cancel
from gateway.storage import email as email_repo
from gateway.storage.db import Database
from gateway.storage.jobs import Job
from gateway.storage.tables import contacts, events, messages, tenants

log = logging.getLogger(__name__)

#: References kept: the first message of the thread and the newest ones (RFC 5322 §3.6.4 lets a
#: client trim; keeping the root lets every client find the thread's start).
MAX_REFERENCES = 10
MAX_BATCH = 500

_MARK_SENDING = (
    sa.update(messages)
    .where(
        messages.c.id.in_(sa.bindparam("ids", expanding=True)),
        messages.c.channel == "email",
        messages.c.status.in_(("queued", "scheduled")),
    )
    .values(status="sending", updated_at=sa.bindparam("now"))
    .returning(messages.c.id, messages.c.tenant_id, messages.c.thread_id)
)
_SENDING = (
    sa.select(messages, contacts.c.name.label("contact_name"), tenants.c.name.label("tenant_name"))
    .select_from(messages)
    .join(tenants, tenants.c.id == messages.c.tenant_id)
    .outerjoin(contacts, contacts.c.pk == messages.c.contact_pk)
    .where(
        messages.c.id.in_(sa.bindparam("ids", expanding=True)),
        messages.c.channel == "email",
        messages.c.status == "sending",
    )
)
_MARK_SENT = (
    sa.update(messages)
    .where(messages.c.id.in_(sa.bindparam("ids", expanding=True)), messages.c.status == "sending")
    .values(status="sent", status_reason=None, updated_at=sa.bindparam("now"))
    .returning(messages.c.id)
)
_SETTLE_ONE = (
    sa.update(messages)
    .where(messages.c.id == sa.bindparam("b_id"), messages.c.status == "sending")
    .values(
        status=sa.bindparam("b_status"),
        status_reason=sa.bindparam("b_reason"),
        updated_at=sa.bindparam("b_now"),
    )
    .returning(messages.c.id)
)
_INSERT_EVENTS = sa.insert(events)


@dataclass
class _Waiting:
    job: Job
    future: asyncio.Future[dict[str, Any] | None]


@dataclass
class _Outcome:
    message: dict[str, Any]
    status: str  # sent | failed | sending (deferred: the reason is recorded, the status stays)
    reason: str | None
    future: asyncio.Future[None]


class EmailSender:
    def __init__(
        self,
        db: Database,
        transport: EmailTransport,
        clock: Callable[[], datetime],
        *,
        verp_key: bytes,
        mail_domain: str,
    ) -> None:
        self.db = db
        self.transport = transport
        self.clock = clock
        self.verp_key = verp_key
        self.mail_domain = mail_domain
        self._waiting: list[_Waiting] = []
        self._begin_scheduled = False
        self._outcomes: list[_Outcome] = []
        self._recording = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, job: Job) -> None:
        """The job handler: returns once the outcome is committed; raises to be retried later."""
        message = await self._begin(job)
        if message is None:
            return  # sent, failed or cancelled already (a repeated job): nothing to do
        mail = self._outgoing(message)
        result: RelayResult = await self.transport.send(mail)
        if result.outcome == "sent":
            await self._record(message, "sent", None)
            return
        reply = result.reply or "no reply"
        if result.outcome == "failed":
            await self._record(message, "failed", reply)
            return
        if job.attempts >= job.max_attempts:
            await self._record(message, "failed", f"{reply} (given up after {job.attempts} attempts)")
            return
        await self._record(message, "sending", f"deferred: {reply}")
        raise RetryLaterError(f"message {message['id']}: {reply}")

    # --- step 1, batched ----------------------------------------------------------------------------

    async def _begin(self, job: Job) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(job, loop.create_future())
        self._waiting.append(waiting)
        if not self._begin_scheduled:
            self._begin_scheduled = True
            # Let the other handlers of the claimed batch join before the transaction starts.
            loop.call_soon(self._start_begin)
        return await asyncio.shield(waiting.future)

    def _start_begin(self) -> None:
        self._begin_scheduled = False
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._spawn(self._begin_batch(batch), "email-send-begin")

    async def _begin_batch(self, batch: list[_Waiting]) -> None:
        ids = [w.job.payload["message_id"] for w in batch]
        now = self.clock()

        async def unit(conn: AsyncConnection) -> dict[str, dict[str, Any]]:
            changed = (await conn.execute(_MARK_SENDING, {"ids": ids, "now": now})).all()
            if changed:
                await conn.execute(
                    _INSERT_EVENTS,
                    [
                        _event(tenant_id, mid, thread_id, "sending", None, now)
                        for mid, tenant_id, thread_id in changed
                    ],
                )
            rows = {r["id"]: dict(r) for r in (await conn.execute(_SENDING, {"ids": ids})).mappings()}
            answering = [r for r in rows.values() if r["in_reply_to"]]
            if answering:
                chains = await email_repo.thread_message_ids(
                    conn, sorted({r["thread_id"] for r in answering}), max(r["created_at"] for r in answering)
                )
                for r in answering:
                    r["references"] = _references(chains.get(r["thread_id"], []), r)
            return rows

        try:
            rows = await self.db.write(unit)
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        for w in batch:
            if not w.future.done():
                w.future.set_result(rows.get(w.job.payload["message_id"]))

    def _outgoing(self, m: dict[str, Any]) -> OutgoingEmail:
        recipient: str = m["recipient"]
        return OutgoingEmail(
            ref=m["id"],
            envelope_from=make_verp(self.verp_key, self.mail_domain, m["id"]),
            recipient=recipient,
            from_address=m["sender"],
            from_name=m["tenant_name"],
            to_name=m["contact_name"] or "",
            subject=m["subject"] or "",
            text=m["text"],
            html=m["html"],
            message_id=m["email_message_id"],
            date=m["send_at"] or m["created_at"],
            in_reply_to=m["in_reply_to"],
            references=tuple(m.get("references") or ()),
            needs_smtputf8=not recipient.split("@", 1)[0].isascii(),
        )

    # --- step 3, coalesced --------------------------------------------------------------------------

    async def _record(self, message: dict[str, Any], status: str, reason: str | None) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append(_Outcome(message, status, _trim(reason), future))
        if not self._recording:
            self._recording = True
            self._spawn(self._record_loop(), "email-send-record")
        await asyncio.shield(future)

    async def _record_loop(self) -> None:
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                now = self.clock()

                async def unit(
                    conn: AsyncConnection, batch: list[_Outcome] = batch, now: datetime = now
                ) -> None:
                    # Only from ``sending``: a bounce (or anything else) that settled the message
                    # first wins, and then no event is written for a change that did not happen.
                    sent = [o.message["id"] for o in batch if o.status == "sent"]
                    changed: set[str] = set()
                    if sent:
                        result = await conn.execute(_MARK_SENT, {"ids": sent, "now": now})
                        changed |= {row[0] for row in result}
                    for o in batch:
                        if o.status == "sent":
                            continue
                        params = {
                            "b_id": o.message["id"],
                            "b_status": o.status,
                            "b_reason": o.reason,
                            "b_now": now,
                        }
                        if (await conn.execute(_SETTLE_ONE, params)).first() is not None:
                            changed.add(o.message["id"])
                    settled = [o for o in batch if o.status != "sending" and o.message["id"] in changed]
                    if settled:
                        await conn.execute(
                            _INSERT_EVENTS,
                            [
                                _event(
                                    o.message["tenant_id"],
                                    o.message["id"],
                                    o.message["thread_id"],
                                    o.status,
                                    o.reason,
                                    now,
                                )
                                for o in settled
                            ],
                        )

                try:
                    await self.db.write_outcome(unit)  # the relay took these: not "failed, resend"
                except Exception as exc:
                    log.exception("recording email outcomes failed", extra={"messages": len(batch)})
                    for o in batch:
                        if not o.future.done():
                            o.future.set_exception(exc)
                    continue
                for o in batch:
                    if not o.future.done():
                        o.future.set_result(None)
                    if o.status == "failed":
                        log.info("email failed", extra={"message_id": o.message["id"], "reason": o.reason})
        finally:
            self._recording = False

    async def drain(self, timeout: float) -> None:
        """At shutdown, after the job runner stopped and before the database closes: let the
        outcomes of mail the relay already took be recorded, or a restart would send it again."""
        await finish_or_cancel(self._tasks, timeout, "email outcome writers")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _references(chain: list[str], message: dict[str, Any]) -> list[str]:
    """RFC 5322 §3.6.4: the parent's references then the parent. We know the thread's Message-IDs in
    order, so: the ones before this message, with the answered one (``In-Reply-To``) last."""
    own, parent = message["email_message_id"], message["in_reply_to"]
    before = chain[: chain.index(own)] if own in chain else list(chain)
    ids = [i for i in dict.fromkeys(before) if i != parent] + [parent]
    if len(ids) > MAX_REFERENCES:
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    return ids


def _trim(reason: str | None) -> str | None:
    if reason is None or len(reason) <= 200:  # messages.status_reason is VARCHAR(200)
        return reason
    return reason[:199] + "…"


def _event(
    tenant_id: str, message_id: str, thread_id: str, status: str, reason: str | None, now: datetime
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "message_id": message_id,
        "channel": "email",
        "status": status,
        "thread_id": thread_id,
    }
    if reason:
        payload["reason"] = reason
    return {"tenant_id": tenant_id, "type": "message.status", "payload": payload, "created_at": now}
