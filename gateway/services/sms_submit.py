"""The ``sms.submit`` job, batched: the jobs the runner hands over together share two transactions.

The job runner calls :meth:`SmsSubmitter.handle_batch` (a ``BatchHandler``) once with the jobs of
a claim. The batch does its database work once for all of its messages (ISSUE 3: "batch database
work per window rather than per message"):

1. one transaction: mark the messages ``sending``, read them and their parts;
2. submit every pending part through the transport (the SMPP window keeps them in flight together);
3. one transaction: record every part's outcome, apply receipts that overtook their
   ``submit_sm_resp``, move the messages whose parts are all out to ``sent``.

Idempotent like the job queue needs: only parts still ``pending`` are submitted, so a retried job
(some parts had no route) sends only what is missing. ``unknown`` parts (written, no response) are
resubmitted only with ``[sms] resubmit_unknown`` (duplicate risk, docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ports import SmsTransport, SubmitPart, SubmitResult
from gateway.domain.sms_text import Encoding
from gateway.domain.udh import concat_parts
from gateway.services.delivery import IdKey, RetryLaterError, apply_parked_for, settle_many, sms_status_event
from gateway.services.shutdown import finish_or_cancel
from gateway.storage.db import Database, fetch, run
from gateway.storage.jobs import Job
from gateway.storage.messages import add_event_rows, get_parts_of, update_parts
from gateway.storage.tables import messages

log = logging.getLogger(__name__)

MAX_BATCH = 500

# What submitting needs of a message (returned by the UPDATE that marks it, or read for a message
# a retried job finds already "sending").
_NEEDED = (
    messages.c.id,
    messages.c.tenant_id,
    messages.c.thread_id,
    messages.c.sender,
    messages.c.recipient,
    messages.c.text,
    messages.c.sms_encoding,
)
_MARK_SENDING = (
    sa.update(messages)
    .where(
        messages.c.id.in_(sa.bindparam("ids", expanding=True)),
        messages.c.status.in_(("queued", "scheduled")),
    )
    .values(status="sending", updated_at=sa.bindparam("now"))
    .returning(*_NEEDED)
)
_SENDING = sa.select(*_NEEDED).where(
    messages.c.id.in_(sa.bindparam("ids", expanding=True)), messages.c.status == "sending"
)
_MARK_SENT = (
    sa.update(messages)
    .where(messages.c.id.in_(sa.bindparam("ids", expanding=True)), messages.c.status == "sending")
    .values(status="sent", updated_at=sa.bindparam("now"))
)


class SmsSubmitter:
    def __init__(
        self,
        db: Database,
        transport: SmsTransport,
        clock: Callable[[], datetime],
        *,
        submit_timeout: float,
        id_key: IdKey,
        resubmit_unknown: bool = False,
    ) -> None:
        self.db = db
        self.transport = transport
        self.clock = clock
        self.submit_timeout = submit_timeout
        self.id_key = id_key
        self.resubmit_unknown = resubmit_unknown
        self._tasks: set[asyncio.Task[list[Exception | None]]] = set()
        self.batches = 0

    async def handle_batch(self, jobs: list[Job]) -> list[Exception | None]:
        """The job handler for the claimed ``sms.submit`` jobs: one outcome per job, once its
        message is settled for now (:class:`RetryLaterError`: parts left for a later attempt)."""
        chunks = [jobs[i : i + MAX_BATCH] for i in range(0, len(jobs), MAX_BATCH)]
        tasks = [asyncio.create_task(self._process(chunk), name="sms-submit-batch") for chunk in chunks]
        for task in tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Cancelled (shutdown): the batches go on and record what they did (drain waits for them);
        # the jobs' leases lapse anyway.
        outcomes = await asyncio.shield(asyncio.gather(*tasks))
        return [outcome for chunk in outcomes for outcome in chunk]

    async def drain(self, timeout: float) -> None:
        """At shutdown, after the job runner stopped: let running batches record what they sent."""
        await finish_or_cancel(self._tasks, timeout, "sms submit batches")

    async def _process(self, batch: list[Job]) -> list[Exception | None]:
        try:
            retry = await self._run(batch)
        except Exception as exc:
            log.exception("sms submit batch failed", extra={"jobs": len(batch)})
            return [exc] * len(batch)
        outcomes: list[Exception | None] = []
        for job in batch:
            message_id = job.payload["message_id"]
            if message_id in retry:
                outcomes.append(RetryLaterError(f"message {message_id}: parts left for later"))
            else:
                outcomes.append(None)
        return outcomes

    async def _run(self, batch: list[Job]) -> set[str]:
        self.batches += 1
        jobs = {job.payload["message_id"]: job for job in batch}
        ids = list(jobs)
        now = self.clock()

        async def begin(
            conn: AsyncConnection,
        ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
            rows = await fetch(conn, _MARK_SENDING, {"ids": ids, "now": now})
            if rows:
                await add_event_rows(
                    conn,
                    [sms_status_event(c, "sending", now) for c in rows],
                )
            if len(rows) < len(ids):
                # Messages a retried job finds "sending" already (their earlier attempt marked them).
                marked = {r["id"] for r in rows}
                rest = [m for m in ids if m not in marked]
                rows += await fetch(conn, _SENDING, {"ids": rest})
            position = {m: i for i, m in enumerate(ids)}
            rows.sort(key=lambda r: position[r["id"]])  # the claim's order (RETURNING has none)
            return rows, await get_parts_of(conn, [m["id"] for m in rows])

        rows, parts = await self.db.write(begin) if ids else ([], {})
        wanted = {"pending", "unknown"} if self.resubmit_unknown else {"pending"}
        todo: list[tuple[dict[str, Any], dict[str, Any], SubmitPart]] = []
        for message in rows:
            submits = _build(message, int(jobs[message["id"]].payload.get("ref", 0)))
            for part in parts.get(message["id"], []):
                if part["status"] in wanted:
                    todo.append((message, part, submits[part["part_no"] - 1]))
        results = await self.transport.submit_many([sp for _, _, sp in todo], timeout=self.submit_timeout)
        now = self.clock()
        retry: set[str] = set()
        by_message: dict[str, list[tuple[dict[str, Any], SubmitResult]]] = defaultdict(list)
        for (message, part, _), result in zip(todo, results, strict=True):
            by_message[message["id"]].append((part, result))

        async def record(conn: AsyncConnection) -> None:
            accepted: list[dict[str, Any]] = []
            other: list[dict[str, Any]] = []
            keys: list[tuple[str, str]] = []
            needs_settle: set[str] = set()
            for message_id, outcomes in by_message.items():
                job = jobs[message_id]
                for part, result in outcomes:
                    where = {"b_message_id": message_id, "b_part_no": part["part_no"], "updated_at": now}
                    if result.outcome == "ok" and result.message_id is not None:
                        key = self.id_key(result.connector or "", result.message_id, "resp")
                        keys.append((result.connector or "", key))
                        accepted.append(
                            {
                                **where,
                                "status": "submitted",
                                "connector": result.connector,
                                "smsc_message_id": result.message_id,
                                "smsc_message_key": key,
                                "submitted_at": now,
                                "status_reason": None,
                            }
                        )
                        continue
                    if result.outcome == "failed":
                        status, reason = "failed", result.status_name or "rejected"
                    elif result.outcome == "unknown":
                        status, reason = "unknown", "no submit_sm_resp (outcome unknown)"
                    elif job.attempts >= job.max_attempts:
                        status = "failed"
                        reason = f"{result.outcome}: no SMSC accepted it after {job.attempts} attempts"
                    else:
                        retry.add(message_id)
                        continue
                    if status == "failed":
                        needs_settle.add(message_id)
                    other.append(
                        {**where, "status": status, "connector": result.connector, "status_reason": reason}
                    )
            await update_parts(conn, accepted)
            await update_parts(conn, other)
            if keys:
                # Receipts that arrived before we stored these ids were parked; take them now.
                needs_settle |= await apply_parked_for(conn, keys, now)
            sent: list[dict[str, Any]] = []
            for message in rows:
                if message["id"] in needs_settle:
                    continue
                outcomes = by_message.get(message["id"], [])
                touched = {part["part_no"] for part, _ in outcomes}
                statuses = {p["status"] for p in parts.get(message["id"], []) if p["part_no"] not in touched}
                statuses |= {_new_status(r) for _, r in outcomes}
                if "pending" not in statuses and "retry" not in statuses:
                    sent.append(message)
            await settle_many(conn, needs_settle, now)
            if sent:
                await run(conn, _MARK_SENT, {"ids": [m["id"] for m in sent], "now": now})
                await add_event_rows(conn, [sms_status_event(m, "sent", now) for m in sent])

        if by_message or rows:
            await self.db.write_outcome(record)  # these parts went out: a failed write would resend them
        return retry


def _new_status(result: SubmitResult) -> str:
    if result.outcome == "ok":
        return "submitted"
    if result.outcome in ("failed", "unknown"):
        return result.outcome
    return "retry"


def _build(message: dict[str, Any], ref: int) -> list[SubmitPart]:
    encoding = Encoding(message["sms_encoding"])
    _, payloads = concat_parts(message["text"], ref=ref, encoding=encoding)
    sender: str = message["sender"]
    if sender.startswith("+"):
        # SPEC 2.5: numbers travel as international digits without '+', TON 1 / NPI 1 (E.164).
        source, ton, npi = sender[1:], 1, 1
    else:
        source, ton, npi = sender, 5, 0  # alphanumeric (SMPP 3.4 §5.2.5 TON 5)
    multipart = len(payloads) > 1
    return [
        SubmitPart(
            source_addr=source,
            source_ton=ton,
            source_npi=npi,
            destination_addr=message["recipient"].lstrip("+"),
            esm_class=0x40 if multipart else 0x00,  # UDHI: short_message starts with the UDH
            data_coding=0x00 if encoding is Encoding.GSM7 else 0x08,
            short_message=payload,
            registered_delivery=1,
            ref=(message["id"], n),
        )
        for n, payload in enumerate(payloads, start=1)
    ]
