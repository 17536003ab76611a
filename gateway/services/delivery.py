"""SMS delivery results: receipts and late ``submit_sm_resp`` s -> part and message status.

(Submitting is :mod:`gateway.services.sms_submit`; mobile-originated messages go on to
:mod:`gateway.services.inbound`.)

Message status from its parts (:func:`settle`): any part ``failed`` -> failed (credits for parts
the SMSC never accepted come back); every part ``delivered`` -> delivered; nothing left
``pending`` -> sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ports import InboundSms
from gateway.domain.receipts import Receipt, ReceiptError, ReceiptState, is_receipt, parse_receipt
from gateway.services.inbound import InboundSmsService
from gateway.storage import messages as repo
from gateway.storage import tenants as tenants_repo
from gateway.storage.db import fetch, insert, lock_name, lock_names, run
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
                self.receipts_matched += len(await apply_parked_for(conn, [(connector, key)], now))
            else:
                await repo.update_part(
                    conn,
                    message_id,
                    part_no,
                    now,
                    status="failed",
                    status_reason=f"late response 0x{status:08X}",
                )
            await settle(conn, message_id, now)

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
        now = self.clock()

        async def unit(conn: AsyncConnection) -> bool:
            # Same lock as apply_parked_for: either we see the part's id, or it sees our parked row.
            await lock_name(conn, f"receipt:{key}")
            if await apply_receipt(conn, sms.connector, key, receipt, now):
                return True
            await insert(
                conn,
                parked_receipts,
                {
                    "connector": sms.connector,
                    "smsc_message_key": key,
                    "receipt": _receipt_json(receipt),
                    "received_at": now,
                },
            )
            return False

        if await self.db.write(unit):
            self.receipts_matched += 1
        else:
            self.receipts_parked += 1

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
_PARTS_BY_KEY = sa.select(sms_parts.c.message_id, sms_parts.c.part_no, sms_parts.c.connector).where(
    sms_parts.c.smsc_message_key == sa.bindparam("key")
)


async def apply_parked_for(conn: AsyncConnection, keys: list[tuple[str, str]], now: datetime) -> set[str]:
    """Apply the parked receipts for these (connector, key) pairs; the ids of the messages touched.

    Takes the receipt lock of every key first (PostgreSQL): a receipt being parked concurrently
    either committed before (and is seen here) or sees the part's id after we commit.
    """
    await lock_names(conn, [f"receipt:{key}" for _, key in keys])
    wanted = set(keys)
    found = await fetch(conn, _PARKED_FOR_KEYS, {"keys": sorted({k for _, k in keys})})
    rows = [(r["id"], r["connector"], r["smsc_message_key"], r["receipt"]) for r in found]
    touched: set[str] = set()
    applied: list[int] = []  # parked rows that found their part: deleted together
    for row_id, connector, key, data in rows:
        if (connector, key) not in wanted:
            continue
        message_id = await apply_receipt(conn, connector, key, _receipt_from_json(data), now)
        if message_id:
            touched.add(message_id)
            applied.append(row_id)
    if applied:
        await run(conn, _DELETE_PARKED, {"ids": applied})
    return touched


async def apply_receipt(
    conn: AsyncConnection, connector: str, key: str, receipt: Receipt, now: datetime
) -> str | None:
    """Apply a receipt to the part it reports on; its message's id, or None when no part has that
    id (yet)."""
    rows = await fetch(conn, _PARTS_BY_KEY, {"key": key})
    same = [r for r in rows if r["connector"] == connector]
    match = same or (rows if len(rows) == 1 else [])  # another bind of the same SMSC account
    if not match:
        return None
    message_id, part_no = match[0]["message_id"], match[0]["part_no"]
    if receipt.state is ReceiptState.DELIVERED:
        await repo.update_part(conn, message_id, part_no, now, status="delivered", status_reason=None)
    elif receipt.state is ReceiptState.FAILED:
        reason = f"{receipt.stat or receipt.reason}" + (f" err:{receipt.err}" if receipt.err else "")
        await repo.update_part(conn, message_id, part_no, now, status="failed", status_reason=reason)
    else:
        return str(message_id)  # an intermediate notification: nothing final to record
    await settle(conn, message_id, now)
    return str(message_id)


async def settle(conn: AsyncConnection, message_id: str, now: datetime) -> None:
    """Derive the message status from its parts; an event for each change, refunds on failure.

    PostgreSQL: receipts for two parts of one message commit in concurrent transactions, and under
    READ COMMITTED each would see the other's part still "submitted" and neither would set
    "delivered". The message lock makes the second one read after the first commits.
    """
    await lock_name(conn, f"message:{message_id}")
    message = await repo.get_message(conn, message_id)
    if message is None or message["status"] in ("cancelled",):
        return
    parts = await repo.get_parts(conn, message_id)
    statuses = [p["status"] for p in parts]
    current = message["status"]
    if "failed" in statuses:
        reason = next(p["status_reason"] for p in parts if p["status"] == "failed")
        if current != "failed" and await repo.set_message_status(
            conn, message_id, "failed", now, reason=reason
        ):
            # Only parts the SMSC never took are refunded; an undelivered part was still carried,
            # and an "unknown" one may have been.
            refundable = sum(
                1 for p in parts if p["status"] in ("failed", "pending") and p["smsc_message_id"] is None
            )
            if refundable:
                await tenants_repo.change_credits(
                    conn, message["tenant_id"], refundable, "sms_refund", now, message_id
                )
            await _status_event(conn, message, "failed", reason, now)
        return
    if statuses and all(s == "delivered" for s in statuses):
        if current != "delivered":
            await repo.set_message_status(conn, message_id, "delivered", now)
            await _status_event(conn, message, "delivered", None, now)
        return
    if "pending" not in statuses and current in ("queued", "scheduled", "sending"):
        await repo.set_message_status(conn, message_id, "sent", now)
        await _status_event(conn, message, "sent", None, now)


async def _status_event(
    conn: AsyncConnection, message: dict[str, Any], status: str, reason: str | None, now: datetime
) -> None:
    payload = {
        "message_id": message["id"],
        "channel": message["channel"],
        "status": status,
        "thread_id": message["thread_id"],
    }
    if reason:
        payload["reason"] = reason
    await repo.add_event(conn, message["tenant_id"], "message.status", payload, now)


def _receipt_json(r: Receipt) -> dict[str, Any]:
    data = dataclasses.asdict(r)
    data["state"] = r.state.value
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
