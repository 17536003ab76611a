"""Receiving SMS (mobile-originated, SPEC 2.5, issue 4): join parts, route, store or drop, keywords.

One deliver_sm is one unit of work (one transaction): its fingerprint, its part (or the whole
message), the routing decision, the stored reply or the drop record, the consent change and every
event. ``receive`` returns only after that commit, and the SMPP session answers deliver_sm_resp only
after ``receive`` returns (SMPP 3.4 §4.6.2): a crash in between makes the SMSC resend, and the resend
is recognised by its fingerprint. Raising makes the session answer ESME_RX_T_APPN (resend later).

Concatenated parts (3GPP TS 23.040 §9.2.3.24.1/.8, SMPP 3.4 §5.3.2.22-24) wait in ``sms_mo_parts``
until the last one arrives, in any order, keyed by (connector, source, destination, reference,
total); nothing else happens before they are joined. ``flush_incomplete`` stores what arrived of a
concatenation whose first part is older than ``concat_timeout``, with a note, instead of losing it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ids import new_id
from gateway.domain.mo import (
    Decoded,
    MoPart,
    decode_payload,
    decode_segments,
    fingerprint,
    is_resend,
    keywords_from_json,
    match_keyword,
    msisdn_to_e164,
    split_mo,
)
from gateway.domain.policy import Deny
from gateway.domain.ports import InboundSms
from gateway.domain.threading import SmsAssignment, route_sms_reply
from gateway.services.errors import InvalidInputError
from gateway.services.normalize import parse_phone
from gateway.storage import drops as drops_repo
from gateway.storage import inbound as store
from gateway.storage import messages as repo
from gateway.storage.db import Database, lock_name

log = logging.getLogger(__name__)

#: Drops that belong to the tenant whose assignment it is (listed to the tenant, with an event);
#: the others belong to nobody (listed to the admin token, SPEC 2.3).
_TENANT_DROPS = frozenset({"reply_too_old", "contact_blocked"})


@dataclass(frozen=True, slots=True)
class InboundSettings:
    reply_window: timedelta = timedelta(days=15)  # [sms] reply_window_days; a tenant may override
    concat_timeout: timedelta = timedelta(minutes=30)  # [sms] concat_timeout_minutes
    duplicate_window: timedelta = timedelta(hours=24)  # [sms] mo_duplicate_window_minutes
    default_region: str = "PL"  # for national numbers (SMPP 3.4 §5.2.5 TON 2)


@dataclass(frozen=True, slots=True)
class _Mo:
    """A whole MO message (single, joined, or what arrived of an incomplete concatenation)."""

    connector: str
    source: str  # E.164 when it is a number, else the address as given
    destination: str
    source_e164: str | None
    destination_e164: str | None
    decoded: Decoded
    parts: int
    size: int
    sent_at: datetime  # when its first part arrived
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Outcome:
    label: str  # stored | part | duplicate | dropped:<reason> (for /metrics)
    tenant_id: str | None = None
    message_id: str | None = None
    also: tuple[str, ...] = ()  # labels of what else the unit stored (an incomplete predecessor)


#: Answered marks are written with the next unit of work once this many wait (else by the
#: housekeeping round): one statement per batch instead of one per message.
_MARKS_BATCH = 64


class InboundSmsService:
    def __init__(self, db: Database, clock: Callable[[], datetime], settings: InboundSettings) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        #: Outcomes since start, for /metrics: stored, part, duplicate, dropped:<reason>, flushed.
        self.outcomes: Counter[str] = Counter()
        # Fingerprints of deliver_sm answered ESME_ROK and not yet marked so in the database. They
        # count as answered at once (this set is consulted); the database learns in batches. A crash
        # loses the unwritten marks: an identical message within the window after the restart is
        # then taken for a resend (stored once, with a drop record), never a resend for a new one.
        self._answered: set[str] = set()
        # Marks taken out of ``_answered`` whose write has not committed yet: still answered. Without
        # this, a deliver_sm whose unit ran between the take and that commit would see the mark in
        # neither place and take a new message with the same words for a resend.
        self._writing: set[str] = set()

    # --- one deliver_sm ---------------------------------------------------------------------------

    async def receive(self, sms: InboundSms) -> None:
        """Store the MO (or its part) and return once committed; raise to have the SMSC resend it."""
        now = self.clock()
        source_e164 = self._e164(sms.source_addr, sms.source_ton)
        destination_e164 = self._e164(sms.destination_addr, sms.dest_ton)
        source = source_e164 or sms.source_addr
        destination = destination_e164 or sms.destination_addr
        part = split_mo(sms.short_message, sms.esm_class, sms.tlvs)
        fp = fingerprint(source, destination, sms.esm_class, sms.data_coding, sms.short_message, sms.tlvs)
        marks: list[str] = []
        if len(self._answered) >= _MARKS_BATCH:
            marks, self._answered = list(self._answered), set()
            self._writing.update(marks)
        renewed = False  # fp was answered (in memory) and this is a new message with the same words

        async def unit(conn: AsyncConnection) -> tuple[str, ...]:
            nonlocal renewed
            await store.mark_answered(conn, marks)
            before = await store.seen(conn, fp)
            if before is not None and is_resend(
                seen_at=before.received_at,
                answered=before.answered or fp in self._answered or fp in self._writing,
                now=now,
                window=self.settings.duplicate_window,
            ):
                what = f"message {before.message_id}" if before.message_id else "an identical deliver_sm"
                await self._drop(
                    conn,
                    before.tenant_id,
                    "duplicate",
                    source,
                    destination,
                    len(sms.short_message),
                    f"a resend of {what} received at {before.received_at.isoformat()}, never acknowledged "
                    f"(this one on {sms.connector}); stored once",
                    now,
                )
                return ("duplicate",)
            if fp in self._answered:
                self._answered.discard(fp)  # the new one is unanswered until we return
                renewed = True
            outcome = await self._receive_new(
                conn, sms, part, source, destination, source_e164, destination_e164, now
            )
            await store.record_fingerprint(
                conn,
                fp,
                known=before is not None,
                now=now,
                tenant_id=outcome.tenant_id,
                message_id=outcome.message_id,
            )
            return (outcome.label, *outcome.also)

        try:
            labels = await self.db.write(unit)
        except BaseException:
            self._answered.update(marks)  # not written (or written twice, which is harmless)
            if renewed:
                self._answered.add(fp)  # rolled back: the earlier one stays answered
            raise
        finally:
            self._writing.difference_update(marks)
        self.outcomes.update(labels)
        # Returning makes the session answer ESME_ROK at once (SMPP 3.4 §4.6.2, no await between):
        # from now on, an identical deliver_sm is not a resend of this one.
        self._answered.add(fp)

    async def _receive_new(
        self,
        conn: AsyncConnection,
        sms: InboundSms,
        part: MoPart,
        source: str,
        destination: str,
        source_e164: str | None,
        destination_e164: str | None,
        now: datetime,
    ) -> _Outcome:
        if part.concat is None:
            mo = _Mo(
                sms.connector,
                source,
                destination,
                source_e164,
                destination_e164,
                decode_payload(part.payload, sms.data_coding),
                1,
                len(part.payload),
                now,
                (part.note,) if part.note else (),
            )
            return await self._deliver(conn, mo, now)
        c = part.concat
        key = store.ConcatKey(sms.connector, source, destination, c.ref, c.total)
        await lock_name(conn, key.lock_name())  # parts arriving on two connections at once (PostgreSQL)
        stored = await store.parts(conn, key)
        same = next((p for p in stored if p.part_no == c.seq), None)
        also: tuple[str, ...] = ()
        if same is not None:
            if same.payload == part.payload and same.data_coding == sms.data_coding:
                return _Outcome("duplicate")  # already waiting for its siblings: nothing to add
            # Another message with the same reference (8-bit references wrap after 256 long
            # messages): store what the earlier one has as incomplete, then start this one.
            await store.delete_parts(conn, key)
            why = f"a different part {c.seq} with the same reference came first"
            also = ((await self._deliver(conn, self._assemble(key, stored, why), now)).label,)
            stored = []
        if len(stored) + 1 < c.total:
            await store.add_part(conn, key, c.seq, sms.data_coding, part.payload, now)
            return _Outcome("part", also=also)
        await store.delete_parts(conn, key)
        complete = [*stored, store.StoredPart(c.seq, sms.data_coding, part.payload, now)]
        complete.sort(key=lambda p: p.part_no)
        return await self._deliver(conn, self._assemble(key, complete, None), now)

    # --- incomplete concatenations ----------------------------------------------------------------

    async def flush_incomplete(self) -> int:
        """Store (or drop, by the usual routing) each concatenation whose first part arrived more than
        ``concat_timeout`` ago, with what arrived and a note; one transaction each. Returns how many."""
        now = self.clock()
        cutoff = now - self.settings.concat_timeout
        keys = await self.db.read(lambda conn: store.stale_keys(conn, cutoff))
        flushed = 0
        minutes = int(self.settings.concat_timeout.total_seconds() // 60)
        for key in keys:

            async def unit(conn: AsyncConnection, key: store.ConcatKey = key) -> bool:
                await lock_name(conn, key.lock_name())
                stored = await store.parts(conn, key)
                if not stored or min(p.received_at for p in stored) >= cutoff:
                    return False  # completed (or restarted) meanwhile
                await store.delete_parts(conn, key)
                why = f"the rest did not arrive within {minutes} minutes"
                await self._deliver(conn, self._assemble(key, stored, why), now)
                return True

            if await self.db.write(unit):
                flushed += 1
        if flushed:
            self.outcomes["flushed"] += flushed
            log.info("incomplete concatenated SMS stored", extra={"count": flushed})
        return flushed

    async def flush_answered(self) -> None:
        """Write the pending "answered" marks (each housekeeping round; at shutdown)."""
        marks, self._answered = list(self._answered), set()
        if not marks:
            return
        self._writing.update(marks)
        try:
            await self.db.write(lambda conn: store.mark_answered(conn, marks))
        except BaseException:
            self._answered.update(marks)
            raise
        finally:
            self._writing.difference_update(marks)

    async def purge_fingerprints(self) -> int:
        """Forget fingerprints older than the duplicate window (they no longer count anyway)."""
        before = self.clock() - self.settings.duplicate_window
        return await self.db.write(lambda conn: store.purge_fingerprints(conn, before))

    # --- shared -------------------------------------------------------------------------------------

    def _e164(self, address: str, ton: int) -> str | None:
        e164 = msisdn_to_e164(address, ton)
        if e164 is None and ton == 2 and address.strip():
            try:
                e164 = parse_phone(address, self.settings.default_region).e164
            except InvalidInputError:
                return None
        return e164

    def _assemble(
        self,
        key: store.ConcatKey,
        stored: Sequence[store.StoredPart],
        incomplete: str | None,
    ) -> _Mo:
        """One message from stored parts (sorted by part number). Runs of consecutive parts are
        decoded as one octet string each; a gap (a missing part) separates runs."""
        runs: list[list[bytes]] = []
        previous = 0
        for p in stored:
            if not runs or p.part_no != previous + 1:
                runs.append([])
            runs[-1].append(p.payload)
            previous = p.part_no
        codings = {p.data_coding for p in stored}
        notes: list[str] = []
        if incomplete is not None:
            have = ", ".join(str(p.part_no) for p in stored)
            notes.append(f"incomplete concatenated message: parts {have} of {key.total} ({incomplete})")
        if len(codings) > 1:
            notes.append(f"parts with different data_coding {sorted(codings)}: decoded as the first part's")
        return _Mo(
            key.connector,
            key.source,
            key.destination,
            self._e164_of(key.source),
            self._e164_of(key.destination),
            decode_segments(runs, stored[0].data_coding),
            len(stored),
            sum(len(p.payload) for p in stored),
            min(p.received_at for p in stored),
            tuple(notes),
        )

    @staticmethod
    def _e164_of(stored_address: str) -> str | None:
        # Parts are keyed by the normalised address: E.164 when it was a number.
        digits = stored_address[1:]
        return stored_address if stored_address.startswith("+") and digits.isdigit() else None

    async def _deliver(self, conn: AsyncConnection, mo: _Mo, now: datetime) -> _Outcome:
        """Route a whole message; store it as a reply or record the drop. Returns the outcome label."""
        if mo.destination_e164 is None:
            row = store.RouteRow(is_pool=False)
        else:
            row = await store.route(conn, mo.destination_e164, mo.source_e164 or mo.source)
        contact_pk, contact_id, blocked, consent = row.contact_pk, row.contact_id, row.contact_blocked, True
        if row.tenant_id is not None and contact_pk is None and mo.source_e164 is not None:
            # The assignment names no contact (sent to a bare number, or the contact was deleted):
            # the tenant's oldest contact with this number. With a contact on the assignment, that one
            # wins even when several contacts share the number (docs/decisions.md).
            found = await store.oldest_contact_with_phone(conn, row.tenant_id, mo.source_e164)
            if found is not None:
                contact_pk, contact_id, blocked, consent = (
                    found.pk,
                    found.contact_id,
                    found.blocked,
                    found.consent_sms,
                )
        elif contact_pk is not None:
            consent = row.contact_consent_sms
        assignment = None
        if row.tenant_id is not None and row.last_used_at is not None:
            assignment = SmsAssignment(
                tenant_id=row.tenant_id,
                last_used_at=row.last_used_at,
                last_thread_id=row.last_thread_id,
                tenant_reply_window_days=row.tenant_reply_window_days,
                contact_pk=contact_pk,
                contact_blocked=blocked,
            )
        decision = route_sms_reply(
            destination_is_pool=row.is_pool,
            assignment=assignment,
            sent_at=mo.sent_at,
            reply_window=self.settings.reply_window,
        )
        keyword = None
        if assignment is not None and contact_pk is not None and mo.decoded.encoding != "binary":
            keyword = match_keyword(mo.decoded.text, keywords_from_json(row.tenant_keywords))
        if isinstance(decision, Deny):
            tenant_id = assignment.tenant_id if assignment and decision.reason in _TENANT_DROPS else None
            detail = f"{decision.detail}; on connector {mo.connector}"
            await self._drop(
                conn, tenant_id, decision.reason, mo.source, mo.destination, mo.size, detail, now, mo.parts
            )
            if keyword and tenant_id and contact_pk is not None and contact_id is not None:
                # An opt-out is honoured even when its message is dropped (too old, blocked contact):
                # otherwise the next message would go to someone who said STOP.
                await self._consent(conn, tenant_id, contact_pk, contact_id, keyword, consent, None, mo, now)
            return _Outcome(f"dropped:{decision.reason}", tenant_id)
        thread_id = decision.thread_id
        if thread_id is None:
            thread_id, _ = await repo.find_or_create_thread(
                conn, tenant_id=decision.tenant_id, contact_pk=decision.contact_pk, context=None, now=now
            )
        message_id = new_id("msg")
        note = "; ".join(dict.fromkeys((*mo.notes, *((mo.decoded.note,) if mo.decoded.note else ())))) or None
        await repo.insert_message(
            conn,
            {
                "id": message_id,
                "tenant_id": decision.tenant_id,
                "thread_id": thread_id,
                "contact_pk": decision.contact_pk,
                "direction": "inbound",
                "channel": "sms",
                "status": "received",
                "status_reason": None,
                "category": "transactional",
                "sender": mo.source,
                "recipient": mo.destination,
                "subject": None,
                "text": mo.decoded.text,
                "html": None,
                "sms_encoding": mo.decoded.encoding,
                "sms_parts": mo.parts,
                "email_message_id": None,
                "in_reply_to": None,
                "size_bytes": mo.size,
                "note": note,
                "send_at": None,
                "created_at": now,
                "updated_at": now,
            },
        )
        await repo.touch_thread(conn, thread_id, now)
        await repo.add_event(
            conn,
            decision.tenant_id,
            "message.received",
            {
                "message_id": message_id,
                "thread_id": thread_id,
                "contact_id": contact_id,
                "channel": "sms",
                "text": mo.decoded.text,
                "sender": mo.source,
                "recipient": mo.destination,
            },
            now,
        )
        if keyword and contact_pk is not None and contact_id is not None:
            await self._consent(
                conn, decision.tenant_id, contact_pk, contact_id, keyword, consent, message_id, mo, now
            )
        log.debug(
            "sms received",
            extra={"tenant_id": decision.tenant_id, "message_id": message_id, "connector": mo.connector},
        )
        return _Outcome("stored", decision.tenant_id, message_id)

    async def _consent(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        contact_pk: int,
        contact_id: str,
        keyword: str,
        current: bool,
        message_id: str | None,
        mo: _Mo,
        now: datetime,
    ) -> None:
        wanted = keyword == "start"
        if current == wanted or not await store.set_consent_sms(conn, contact_pk, wanted, now):
            return  # already so: a second STOP changes nothing and announces nothing
        await repo.add_event(
            conn,
            tenant_id,
            # Issue 7's names: what an application acts on is "may we text them or not".
            "contact.opted_in" if wanted else "contact.opted_out",
            {
                "contact_id": contact_id,
                "channel": "sms",
                "consent": wanted,
                "keyword": mo.decoded.text.strip(),
                "message_id": message_id,
                "source": "sms_keyword",
            },
            now,
        )
        log.info(
            "sms consent changed by keyword",
            extra={
                "tenant_id": tenant_id,
                "contact_id": contact_id,
                "consent": wanted,
                "message_id": message_id,
            },
        )

    async def _drop(
        self,
        conn: AsyncConnection,
        tenant_id: str | None,
        reason: str,
        sender: str,
        recipient: str,
        size: int,
        detail: str,
        now: datetime,
        parts: int = 1,
    ) -> None:
        await drops_repo.record_drop(
            conn,
            announce=True,  # an SMS drop with a tenant is one of its customers' replies
            channel="sms",
            tenant_id=tenant_id,
            reason=reason,
            sender=sender,
            recipient=recipient,
            size_bytes=size,
            detail=detail if parts == 1 else f"{detail}; {parts} parts",
            now=now,
        )
        log.info(
            "sms dropped",
            extra={"tenant_id": tenant_id, "reason": reason, "sender": sender, "recipient": recipient},
        )
