"""SMS delivery results: receipts and late ``submit_sm_resp`` s -> part and message status.

(Submitting is :mod:`gateway.services.sms_submit`; mobile-originated messages go on to
:mod:`gateway.services.inbound`.)

Message status from its parts (:func:`settle_many`): any part ``failed`` -> failed (credits for parts
the SMSC never accepted come back); every part ``delivered`` -> delivered; nothing left
``pending`` -> sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ports import InboundSms
from gateway.domain.receipts import Receipt, ReceiptError, ReceiptState, is_receipt, parse_receipt
from gateway.services.inbound import InboundSmsService
from gateway.storage import messages as repo
from gateway.storage import tenants as tenants_repo
from gateway.storage.db import fetch, insert, lock_names, run
from gateway.storage.tables import drops, parked_receipts, sms_parts

log = logging.getLogger(__name__)

#: How a connector's message ids become the key receipts are matched on: (connector, raw id, where
#: the id came from: "resp" or "dlr") -> key.
IdKey = Callable[[str, str, str], str]


def default_id_key(connector: str, raw: str, source: str) -> str:
    return raw.strip().lower()


class RetryLaterError(Exception):
    """Some parts could not be handed to any SMSC now; the job is retried with backoff."""


class SmsDelivery:
    """Everything an SMSC sends us (deliver_sm, late responses), for the SMPP adapter to call."""

    def __init__(
        self,
        db: Any,
        clock: Callable[[], datetime],
        *,
        id_key: IdKey = default_id_key,
        inbound: InboundSmsService | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.id_key = id_key
        self.inbound = inbound  # mobile-originated messages (not receipts) go there
        self.receipts_matched = 0
        self.receipts_parked = 0

    async def on_late_response(self, connector: str, ref: Any, smsc_id: str | None, status: int) -> None:
        """A submit_sm_resp that came after we gave up waiting: the part was not lost after all."""
        if not (isinstance(ref, tuple) and len(ref) == 2):
            return
        message_id, part_no = ref
        now = self.clock()

        async def unit(conn: AsyncConnection) -> None:
            parts = {p["part_no"]: p for p in await repo.get_parts(conn, message_id)}
            part = parts.get(part_no)
            if part is None or part["status"] != "unknown":
                return
            touched: set[str] = set()
            if status == 0 and smsc_id:
                key = self.id_key(connector, smsc_id, "resp")
                await repo.update_part(
                    conn,
                    message_id,
                    part_no,
                    now,
                    status="submitted",
                    connector=connector,
                    smsc_message_id=smsc_id,
                    smsc_message_key=key,
                    status_reason=None,
                )
                touched = await apply_parked_for(conn, [(connector, key)], now)
                self.receipts_matched += len(touched)
            else:
                await repo.update_part(
                    conn,
                    message_id,
                    part_no,
                    now,
                    status="failed",
                    status_reason=f"late response 0x{status:08X}",
                )
            await settle_many(conn, touched | {message_id}, now)

        await self.db.write(unit)

    # --- receipts and MO ---------------------------------------------------------------------

    async def on_inbound(self, sms: InboundSms) -> None:
        """Called before the deliver_sm_resp: returning means "committed", raising means "resend"."""
        if not is_receipt(sms.esm_class):
            await self._unhandled_mo(sms)
            return
        try:
            receipt = parse_receipt(sms.short_message, sms.tlvs, esm_class=sms.esm_class)
        except ReceiptError as exc:
            # Acknowledge it anyway: an unreadable receipt would only be redelivered forever.
            log.warning("unreadable delivery receipt", extra={"connector": sms.connector, "error": str(exc)})
            return
        # receipted_message_id (TLV) is in the submit_sm_resp's format; the text's id may not be.
        key = self.id_key(sms.connector, receipt.message_id, "resp" if receipt.id_source == "tlv" else "dlr")
        # The receipts that arrive together are recorded together (one statement per table).
        if await self.db.write_batched(self._record_receipts, (sms.connector, key, receipt)):
            self.receipts_matched += 1
        else:
            self.receipts_parked += 1

    async def _record_receipts(
        self, conn: AsyncConnection, receipts: list[tuple[str, str, Receipt]]
    ) -> list[Any]:
        """Apply the receipts whose parts are known; park the others. True for each one applied."""
        now = self.clock()
        # Same locks as apply_parked_for: either we see the part's id, or it sees our parked row.
        await lock_names(conn, [f"receipt:{key}" for _, key, _ in receipts])
        found = await apply_receipts(conn, receipts, now)
        await settle_many(conn, {m for m in found if m is not None}, now)
        parked = [
            {
                "connector": connector,
                "smsc_message_key": key,
                "receipt": _receipt_json(receipt),
                "received_at": now,
            }
            for (connector, key, receipt), message_id in zip(receipts, found, strict=True)
            if message_id is None
        ]
        if parked:
            await insert(conn, parked_receipts, parked)
        return [m is not None for m in found]

    async def _unhandled_mo(self, sms: InboundSms) -> None:
        # Mobile-originated messages are routed by the inbound SMS service (it commits before it
        # returns). Without one, an MO is acknowledged and recorded as a drop so nothing vanishes.
        if self.inbound is not None:
            await self.inbound.receive(sms)
            return
        now = self.clock()

        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(
                sa.insert(drops).values(
                    tenant_id=None,
                    channel="sms",
                    reason="unsolicited",
                    sender="+" + sms.source_addr.lstrip("+"),
                    recipient="+" + sms.destination_addr.lstrip("+"),
                    size_bytes=len(sms.short_message),
                    detail=f"MO on connector {sms.connector}",
                    created_at=now,
                )
            )

        await self.db.write(unit)


_PARKED_FOR_KEYS = sa.select(
    parked_receipts.c.id,
    parked_receipts.c.connector,
    parked_receipts.c.smsc_message_key,
    parked_receipts.c.receipt,
).where(parked_receipts.c.smsc_message_key.in_(sa.bindparam("keys", expanding=True)))


_DELETE_PARKED = sa.delete(parked_receipts).where(
    parked_receipts.c.id.in_(sa.bindparam("ids", expanding=True))
)
_PARTS_BY_KEYS = sa.select(
    sms_parts.c.message_id, sms_parts.c.part_no, sms_parts.c.connector, sms_parts.c.smsc_message_key
).where(sms_parts.c.smsc_message_key.in_(sa.bindparam("keys", expanding=True)))


async def apply_parked_for(conn: AsyncConnection, keys: list[tuple[str, str]], now: datetime) -> set[str]:
    """Apply the parked receipts for these (connector, key) pairs; the ids of the messages whose
    parts they reported on, for the caller to :func:`settle_many`.

    Takes the receipt lock of every key first (PostgreSQL): a receipt being parked concurrently
    either committed before (and is seen here) or sees the part's id after we commit.
    """
    await lock_names(conn, [f"receipt:{key}" for _, key in keys])
    wanted = set(keys)
    found = await fetch(conn, _PARKED_FOR_KEYS, {"keys": sorted({k for _, k in keys})})
    rows = [r for r in found if (r["connector"], r["smsc_message_key"]) in wanted]
    rows.sort(key=lambda r: r["id"])  # in the order they arrived
    matched = await apply_receipts(
        conn, [(r["connector"], r["smsc_message_key"], _receipt_from_json(r["receipt"])) for r in rows], now
    )
    # Parked rows that found their part are deleted together.
    applied = [r["id"] for r, message_id in zip(rows, matched, strict=True) if message_id is not None]
    if applied:
        await run(conn, _DELETE_PARKED, {"ids": applied})
    return {m for m in matched if m is not None}


async def apply_receipts(
    conn: AsyncConnection, receipts: Sequence[tuple[str, str, Receipt]], now: datetime
) -> list[str | None]:
    """Apply (connector, key, receipt)s, in order, to the parts they report on: for each, its
    message's id, or None when no part has that id (yet). The caller settles the messages."""
    if not receipts:
        return []
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in await fetch(conn, _PARTS_BY_KEYS, {"keys": sorted({key for _, key, _ in receipts})}):
        by_key.setdefault(r["smsc_message_key"], []).append(r)
    found: list[str | None] = []
    changes: list[dict[str, Any]] = []
    for connector, key, receipt in receipts:
        rows = by_key.get(key, [])
        same = [r for r in rows if r["connector"] == connector]
        match = same or (rows if len(rows) == 1 else [])  # another bind of the same SMSC account
        if not match:
            found.append(None)
            continue
        message_id, part_no = match[0]["message_id"], match[0]["part_no"]
        found.append(str(message_id))
        if receipt.state is ReceiptState.DELIVERED:
            status, reason = "delivered", None
        elif receipt.state is ReceiptState.FAILED:
            status = "failed"
            reason = f"{receipt.stat or receipt.reason}" + (f" err:{receipt.err}" if receipt.err else "")
        else:
            continue  # an intermediate notification: nothing final to record
        changes.append(
            {
                "b_message_id": message_id,
                "b_part_no": part_no,
                "updated_at": now,
                "status": status,
                "status_reason": reason,
            }
        )
    await repo.update_parts(conn, changes)  # in order: a later receipt for a part wins
    return found


async def settle_many(conn: AsyncConnection, message_ids: Collection[str], now: datetime) -> None:
    """Derive each message's status from its parts; an event for each change, refunds on failure.

    PostgreSQL: receipts for two parts of one message commit in concurrent transactions, and under
    READ COMMITTED each would see the other's part still "submitted" and neither would set
    "delivered". The message lock makes the second one read after the first commits.
    """
    if not message_ids:
        return
    ids = sorted(message_ids)
    await lock_names(conn, [f"message:{m}" for m in ids])
    found = await repo.get_messages(conn, ids)
    all_parts = await repo.get_parts_of(conn, ids)
    changes: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    refunds: list[tuple[str, str, int]] = []  # (tenant, message, credits)
    for message_id in ids:
        message = found.get(message_id)
        if message is None or message["status"] == "cancelled":
            continue
        parts = all_parts.get(message_id, [])
        statuses = [p["status"] for p in parts]
        current = message["status"]
        status: str | None = None
        reason: str | None = None
        if "failed" in statuses:
            if current != "failed":
                status = "failed"
                reason = next(p["status_reason"] for p in parts if p["status"] == "failed")
                # Only parts the SMSC never took are refunded; an undelivered part was still
                # carried, and an "unknown" one may have been.
                refundable = sum(
                    1 for p in parts if p["status"] in ("failed", "pending") and p["smsc_message_id"] is None
                )
                if refundable:
                    refunds.append((message["tenant_id"], message_id, refundable))
        elif statuses and all(s == "delivered" for s in statuses):
            if current != "delivered":
                status = "delivered"
        elif "pending" not in statuses and current in ("queued", "scheduled", "sending"):
            status = "sent"
        if status is not None:
            changes.append({"b_id": message_id, "status": status, "status_reason": reason, "updated_at": now})
            events.append(sms_status_event(message, status, now, reason))
    await repo.set_statuses(conn, changes)
    await repo.add_event_rows(conn, events)
    # Tenants in a fixed order: two concurrent transactions refunding the same two tenants must
    # not wait on each other's tenant row (PostgreSQL).
    for tenant_id, message_id, credits in sorted(refunds):
        await tenants_repo.change_credits(conn, tenant_id, credits, "sms_refund", now, message_id)


def sms_status_event(
    message: dict[str, Any], status: str, now: datetime, reason: str | None = None
) -> dict[str, Any]:
    """The ``message.status`` event row for an SMS message (a row with its id, tenant and thread)."""
    payload = {
        "message_id": message["id"],
        "channel": "sms",
        "status": status,
        "thread_id": message["thread_id"],
    }
    if reason:
        payload["reason"] = reason
    return {
        "tenant_id": message["tenant_id"],
        "type": "message.status",
        "payload": payload,
        "created_at": now,
    }


_RECEIPT_FIELDS = tuple(f.name for f in dataclasses.fields(Receipt))


def _receipt_json(r: Receipt) -> dict[str, Any]:
    # Flat fields: a plain read instead of dataclasses.asdict's deep copy of each value.
    data = {name: getattr(r, name) for name in _RECEIPT_FIELDS}
    data["state"] = r.state.value
    if r.network_error is not None:
        data["network_error"] = list(r.network_error)
    return data


def _receipt_from_json(d: dict[str, Any]) -> Receipt:
    network_error = d.get("network_error")
    return Receipt(
        **{
            **d,
            "state": ReceiptState(d["state"]),
            "network_error": tuple(network_error) if network_error else None,
        }
    )
