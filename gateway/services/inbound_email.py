"""Receiving email (issue 6, SPEC 1 "Policy", SPEC 2.4): decide and store every inbound message.

The SMTP listener and the IMAP poller hand over the raw message with its envelope
(:class:`gateway.domain.inbound_mail.InboundMailSink`); each recipient gets its own decision and
record. One message is one unit of work: every recipient's stored message, thread, attachment rows,
quota charge, event and drop record are committed in ONE transaction before :meth:`receive` returns,
so the adapter answers ``250`` (or marks the IMAP message) only for what is on disk (SPEC 1).

Per message, once: parse (gateway.domain.mail_parse; a header cap exceeded or two From fields is
``malformed``); verify the sender (DKIM/SPF/DMARC, the injected ``SenderVerifier``) only when some
recipient's tenant would take mail from that address at all; write attachment files (content
addressed, before the transaction: a file never depends on a transaction that may roll back).

Per recipient, in this order: the tenant (its current or an earlier prefix); the same message
already stored (Message-ID + sender, per tenant: ``duplicate``, accepted); the allowlist
(``sender_not_allowed``); the sender verdict (``dmarc_fail`` / ``sender_unverified``); threading and
the reply window (``reply_too_old``, ``contact_blocked``); then store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.email_ids import parse_message_id
from gateway.domain.ids import new_id
from gateway.domain.inbound_mail import MailEnvelope, RecipientOutcome
from gateway.domain.mail_parse import MailFormatError, MimeLimits, ParsedAttachment, ParsedMail, parse_mail
from gateway.domain.mailauth import AuthVerdict, authentication_results, sender_decision
from gateway.domain.mailbox import split_recipient
from gateway.domain.policy import Deny, EmailSenderAllowed, auto_reply_marker, check_email_sender
from gateway.domain.ports import SenderVerifier
from gateway.domain.threading import EmailCandidate, EmailRoute, Via, reference_order, route_email
from gateway.storage import drops as drops_repo
from gateway.storage import inbound_email as store
from gateway.storage import messages as repo
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.db import Database, lock_name

log = logging.getLogger(__name__)

__all__ = ["InboundEmailService", "InboundEmailSettings", "MailRecipient"]

#: The event an accepted message writes: the same type inbound SMS uses (``channel`` tells them
#: apart), so an application handles "a customer answered" in one place (docs/decisions.md).
RECEIVED_EVENT = "message.received"
#: Drops announced with ``message.dropped``: mail from a sender the tenant knows (a contact, a trusted
#: domain) that was refused. Refusals of unknown or forged senders (spam-shaped, volume chosen by
#: whoever sends it) are listed in GET /v1/drops but not pushed.
_ANNOUNCED_DROPS = frozenset({"reply_too_old", "contact_blocked", "sender_unverified"})


@dataclass(frozen=True, slots=True)
class InboundEmailSettings:
    mail_domain: str
    message_id_key: bytes  # [smtp] message_id_secret: verifies our Message-IDs in references
    reply_window: timedelta = timedelta(days=15)  # [sms] reply_window_days; a tenant may override
    authserv_id: str | None = None  # RFC 8601 §2.5; default: mail_domain
    data_dir: Path | None = None  # [storage] data_dir: attachment paths are stored relative to it
    limits: MimeLimits = field(default_factory=MimeLimits)
    recipient_cache_seconds: float = 30.0  # a prefix never changes owner (docs/decisions.md)
    unknown_cache_seconds: float = 5.0  # a new tenant's mailbox works within this
    #: How long "this tenant takes mail from this sender" is remembered before the transaction (which
    #: always decides again, docs/decisions.md); 0: read every time. Refusals are never remembered.
    sender_cache_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class MailRecipient:
    """A recipient that names a tenant mailbox: ``PREFIX[+token]@mail_domain``."""

    address: str
    tenant_id: str
    prefix: str
    token: str | None


@dataclass(slots=True)
class _Message:
    """What is known of the message before the transaction."""

    raw_size: int
    mail: ParsedMail | None
    malformed: Deny | None
    author: str  # the From address, lower-cased ("" when none or unusable): what policy looks at
    sender: str  # for records: the author, else the envelope sender
    inbound_key: str
    verdict: AuthVerdict | None = None
    files: set[str] = field(default_factory=set)  # sha256 of attachment files written


CACHE_SIZE = 10_000


class InboundEmailService:
    """Implements :class:`gateway.domain.inbound_mail.InboundMailSink`, plus the RCPT-time check."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        settings: InboundEmailSettings,
        *,
        verifier: SenderVerifier,
        files: AttachmentFiles | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.mail_domain = settings.mail_domain.lower().rstrip(".")
        self.authserv_id = settings.authserv_id or self.mail_domain
        self.verifier = verifier
        self.files = files
        self.monotonic = monotonic
        #: Outcomes since start, for /metrics: stored, duplicate, dropped:<reason>.
        self.outcomes: Counter[str] = Counter()
        self._prefixes: dict[str, tuple[str | None, float]] = {}
        self._senders: dict[tuple[str, str], float] = {}  # (tenant, From address) allowed -> until

    # --- RCPT TO ----------------------------------------------------------------------------------

    async def resolve_recipient(self, address: str) -> MailRecipient | None:
        """The tenant mailbox ``address`` names (current or earlier prefix, ``+token`` allowed, any
        case), or None. Answers come from a short cache so RCPT does not cost a query each time:
        a prefix belongs to its tenant forever once used, so a cached owner never goes stale; an
        unknown prefix is remembered only briefly, so a new tenant receives mail within seconds."""
        local, at, domain = address.strip().rpartition("@")
        if not at or not local or domain.lower().rstrip(".") != self.mail_domain:
            return None
        prefix, token = split_recipient(local)
        tenant_id = await self._tenant_of(prefix)
        if tenant_id is None:
            return None
        return MailRecipient(address, tenant_id, prefix, token.lower() if token else None)

    async def _tenant_of(self, prefix: str) -> str | None:
        now = self.monotonic()
        cached = self._prefixes.get(prefix)
        if cached is not None and cached[1] > now:
            return cached[0]
        tenant_id = await self.db.read(lambda conn: store.prefix_tenant(conn, prefix))
        if len(self._prefixes) >= CACHE_SIZE:
            self._prefixes.clear()
        ttl = self.settings.recipient_cache_seconds if tenant_id else self.settings.unknown_cache_seconds
        self._prefixes[prefix] = (tenant_id, now + ttl)
        return tenant_id

    # --- DATA ---------------------------------------------------------------------------------------

    async def receive(self, raw: bytes, envelope: MailEnvelope) -> list[RecipientOutcome]:
        """Decide and store ``raw`` for each envelope recipient; returns after the commit. Raises on
        a temporary failure (database, DNS trouble the verifier does not absorb): nothing is stored
        then, and the adapter answers 451 / leaves the IMAP message for the next round."""
        now = self.clock()
        recipients = [(a, await self.resolve_recipient(a)) for a in envelope.rcpt_tos]
        msg = self._parse(raw, envelope)
        tenants = list(dict.fromkeys(r.tenant_id for _, r in recipients if r is not None))
        if msg.mail is not None and msg.malformed is None and tenants:
            mail = msg.mail
            files = self.files is not None and any(a.problem is None and a.sha256 for a in mail.attachments)
            allowed = [] if files else self._allowed_before(tenants, msg.author)
            profiles: dict[str, tuple[store.MailProfile | None, EmailSenderAllowed | Deny]] = {}
            if not allowed:
                profiles = await self.db.read(lambda conn: self._profiles(conn, tenants, msg.author, files))
                allowed = [t for t, (_, ok) in profiles.items() if isinstance(ok, EmailSenderAllowed)]
                self._remember_allowed(allowed, msg.author)
            if allowed:
                msg.verdict = await self.verifier.verify(
                    raw,
                    mail_from=envelope.mail_from,
                    helo=envelope.helo,
                    client_ip=envelope.client_ip,
                    from_domain=msg.author.rpartition("@")[2] or None,
                )
                if files:
                    await self._write_files(msg, [p for t in allowed if (p := profiles[t][0]) is not None])

        async def unit(conn: AsyncConnection) -> list[RecipientOutcome]:
            return [await self._one(conn, address, r, msg, envelope, now) for address, r in recipients]

        outcomes = await self.db.write(unit)
        for o in outcomes:
            self.outcomes[
                "duplicate" if o.duplicate else "stored" if o.accepted else f"dropped:{o.reason}"
            ] += 1
        log.info(
            "inbound email",
            extra={
                "via": envelope.received_via,
                "sender": msg.sender,
                "email_message_id": msg.mail.message_id if msg.mail else None,
                "outcomes": [
                    (o.address, o.reason or ("duplicate" if o.duplicate else "stored")) for o in outcomes
                ],
            },
        )
        return outcomes

    def _allowed_before(self, tenants: list[str], sender: str) -> list[str]:
        """``tenants`` when each took mail from ``sender`` moments ago, else []. Only a hint for the
        work before the transaction (whether to verify the sender at all): the transaction reads
        the contacts and trusted domains again and decides (a contact deleted or blocked since is
        refused there). It saves a database read per message from a correspondent who writes
        often (tests/perf/smtp_in.py)."""
        now = self.monotonic()
        if all(self._senders.get((t, sender), 0.0) > now for t in tenants):
            return tenants
        return []

    def _remember_allowed(self, tenants: list[str], sender: str) -> None:
        ttl = self.settings.sender_cache_seconds
        if ttl <= 0 or not sender:
            return
        if len(self._senders) >= CACHE_SIZE:
            self._senders.clear()
        until = self.monotonic() + ttl
        for t in tenants:
            self._senders[(t, sender)] = until

    def _parse(self, raw: bytes, envelope: MailEnvelope) -> _Message:
        mail: ParsedMail | None = None
        malformed: Deny | None = None
        try:
            mail = parse_mail(raw, self.settings.limits)
        except MailFormatError as exc:
            malformed = Deny("malformed", f"{exc.reason}: {exc.detail}")
        if mail is not None and mail.from_header_count > 1:
            # RFC 5322 §3.6 allows one From field; two is the classic way to show a reader one author
            # and a verifier another (DMARC, RFC 7489 §6.6.1 says to refuse such mail).
            malformed = Deny("malformed", f"{mail.from_header_count} From header fields")
        sender = ((mail.from_address if mail else None) or "").lower()
        message_id = mail.message_id if mail else None
        # The same mail again (an IMAP re-read, an SMTP client resending after a lost 250) is the same
        # Message-ID from the same sender; without a Message-ID, the same bytes.
        basis = (
            f"mid\0{sender}\0{message_id.strip().lower()}"
            if message_id
            else "raw\0" + hashlib.sha256(raw).hexdigest()
        )
        return _Message(
            raw_size=len(raw),
            mail=mail,
            malformed=malformed,
            author=sender,
            sender=sender or envelope.mail_from.lower(),
            inbound_key=hashlib.sha256(basis.encode()).hexdigest(),
        )

    async def _profiles(
        self, conn: AsyncConnection, tenant_ids: list[str], sender: str, files: bool
    ) -> dict[str, tuple[store.MailProfile | None, EmailSenderAllowed | Deny]]:
        """Would each tenant take mail from ``sender`` (before the transaction, which decides again)?
        The tenant's profile (two more queries) is read only when the answer needs it: the sender is
        no contact (its trusted domains decide) or the mail has attachment files to write (its
        saving flag and quota); a reply from a contact without attachments costs one query."""
        out: dict[str, tuple[store.MailProfile | None, EmailSenderAllowed | Deny]] = {}
        for tenant_id in tenant_ids:
            contacts, _ = await store.contacts_with_email(conn, tenant_id, sender)
            profile: store.MailProfile | None = None
            if files or not contacts:
                profile = await store.mail_profile(conn, tenant_id)
                if profile is None:  # deleted since RCPT
                    continue
            trusted = profile.trusted_domains if profile is not None else ()
            out[tenant_id] = (profile, check_email_sender(sender, contacts=contacts, trusted_domains=trusted))
        return out

    async def _write_files(self, msg: _Message, profiles: Iterable[store.MailProfile]) -> None:
        """Write the attachment files that some tenant saves and that fit its quota as it stood when
        read (the transaction charges exactly; a file it then refuses stays as an orphan, see
        docs/decisions.md). Content addressed: writing the same bytes again writes nothing."""
        assert msg.mail is not None
        if self.files is None:
            return
        for profile in profiles:
            if not profile.attachments_save:
                continue
            room = profile.quota_bytes - profile.used_bytes
            for att in msg.mail.attachments:
                if att.problem is not None or not att.sha256 or att.sha256 in msg.files:
                    continue
                if att.size <= room:
                    room -= att.size
                    msg.files.add(await self.files.put(att.data))

    # --- one recipient (inside the transaction) ----------------------------------------------------

    async def _one(
        self,
        conn: AsyncConnection,
        address: str,
        rcpt: MailRecipient | None,
        msg: _Message,
        envelope: MailEnvelope,
        now: datetime,
    ) -> RecipientOutcome:
        mail = msg.mail
        if rcpt is None:
            return await self._drop(
                conn, None, address, msg, Deny("unknown_recipient", "no such mailbox"), now
            )
        profile = await store.mail_profile(conn, rcpt.tenant_id)
        if profile is None:  # the tenant was deleted after RCPT
            return await self._drop(
                conn, None, address, msg, Deny("unknown_recipient", "no such tenant"), now
            )
        if msg.malformed is not None or mail is None:
            deny = msg.malformed or Deny("malformed", "unreadable")
            return await self._drop(conn, rcpt.tenant_id, address, msg, deny, now)
        await lock_name(conn, f"inmail:{rcpt.tenant_id}:{msg.inbound_key}")  # PostgreSQL: one of two racers
        existing = await store.stored_with_key(conn, rcpt.tenant_id, msg.inbound_key)
        if existing is not None:
            return RecipientOutcome(address, True, message_id=existing, duplicate=True)
        refused = await drops_repo.dropped_with_key(conn, rcpt.tenant_id, msg.inbound_key)
        if refused is not None:  # refused before (an IMAP re-read, an SMTP resend): same answer, once
            return RecipientOutcome(address, False, reason=refused[0], detail=refused[1], duplicate=True)
        # Policy looks at the From address only: the envelope sender is not what the reader sees, and
        # DMARC (RFC 7489 §3.1) protects the From domain. A mail without a usable From is nobody's.
        contacts, contact_ids = await store.contacts_with_email(conn, rcpt.tenant_id, msg.author)
        allowed = check_email_sender(msg.author, contacts=contacts, trusted_domains=profile.trusted_domains)
        if isinstance(allowed, Deny):
            return await self._drop(conn, rcpt.tenant_id, address, msg, allowed, now)
        if msg.verdict is None:  # the allowlist changed between our read and this transaction
            deny = Deny("sender_not_allowed", "the sender became allowed while the message was received")
            return await self._drop(conn, rcpt.tenant_id, address, msg, deny, now)
        decision = sender_decision(msg.verdict, require_verified=profile.require_verified_sender)
        if isinstance(decision, Deny):
            return await self._drop(conn, rcpt.tenant_id, address, msg, decision, now)
        window = self.settings.reply_window
        if profile.reply_window_days is not None:
            window = timedelta(days=profile.reply_window_days)
        candidates = await self._candidates(conn, rcpt, mail)
        route = route_email(
            tenant_id=rcpt.tenant_id,
            sender=allowed,
            candidates=candidates,
            received_at=now,
            reply_window=window,
        )
        if isinstance(route, Deny):
            return await self._drop(conn, rcpt.tenant_id, address, msg, route, now)
        contact_id = contact_ids.get(route.contact_pk) if route.contact_pk is not None else None
        return await self._store(
            conn, rcpt, profile, msg, envelope, route, decision.verified, contact_id, now
        )

    async def _candidates(
        self, conn: AsyncConnection, rcpt: MailRecipient, mail: ParsedMail
    ) -> list[EmailCandidate]:
        """The messages of ours the mail may answer, in threading order (SPEC 2.4). A Message-ID
        counts only when its MAC verifies and it names this tenant; a forged one names nothing."""
        ids: list[tuple[Via, str]] = []
        irt = {m.strip().lower() for m in mail.in_reply_to}
        for mid in reference_order(mail.in_reply_to, mail.references):
            ref = parse_message_id(self.settings.message_id_key, mid)
            if ref is not None and ref.tenant_id == rcpt.tenant_id:
                ids.append(("in_reply_to" if mid.strip().lower() in irt else "references", ref.message_id))
        found = await store.outbound_emails(conn, rcpt.tenant_id, ids)
        if rcpt.token:
            by_token = await store.token_candidate(conn, rcpt.tenant_id, rcpt.token)
            if by_token is not None:
                found.append(by_token)
        return found

    async def _store(
        self,
        conn: AsyncConnection,
        rcpt: MailRecipient,
        profile: store.MailProfile,
        msg: _Message,
        envelope: MailEnvelope,
        route: EmailRoute,
        verified: bool,
        contact_id: str | None,
        now: datetime,
    ) -> RecipientOutcome:
        mail = msg.mail
        assert mail is not None and msg.verdict is not None
        thread_id = route.thread_id or await repo.create_thread(
            conn, rcpt.tenant_id, route.contact_pk, None, now
        )
        message_id = new_id("msg")
        rows, notes = await self._attachments(conn, profile, message_id, mail, msg.files, now)
        auto = auto_reply_marker(mail.header)
        if auto is not None:
            notes.insert(0, f"automatic reply ({auto}): not announced")
        note = "; ".join(dict.fromkeys((*mail.problems, *notes))) or None
        headers = {
            "from_name": mail.from_name,
            "to": list(mail.to),
            "cc": list(mail.cc),
            "in_reply_to": list(mail.in_reply_to),
            "references": list(mail.references),
            # Ours only (RFC 8601 §5: a receiver must not trust Authentication-Results it did not add,
            # so whatever arrived with the message is not kept).
            "authentication_results": authentication_results(self.authserv_id, msg.verdict),
            "received_via": envelope.received_via,
            "mail_from": envelope.mail_from,
            "answers": route.matched.message_id if route.matched else None,
            "threaded_by": route.matched.via if route.matched else None,
        }
        await repo.insert_message(
            conn,
            {
                "id": message_id,
                "tenant_id": rcpt.tenant_id,
                "thread_id": thread_id,
                "contact_pk": route.contact_pk,
                "direction": "inbound",
                "channel": "email",
                "status": "received",
                "status_reason": None,
                "category": "transactional",
                "sender": msg.sender[:320],
                "recipient": rcpt.address.lower()[:320],
                "subject": mail.subject[:998],
                "text": mail.text,
                "html": mail.html,
                "sms_encoding": None,
                "sms_parts": None,
                "email_message_id": mail.message_id[:998] if mail.message_id else None,
                "in_reply_to": mail.in_reply_to[0][:998] if mail.in_reply_to else None,
                "size_bytes": msg.raw_size,
                "note": note,
                "send_at": None,
                "created_at": now,
                "updated_at": now,
                "sender_verified": verified,
                "email_date": mail.date,
                "email_headers": headers,
                "inbound_key": msg.inbound_key,
            },
        )
        await store.insert_attachments(conn, rows)
        await repo.touch_thread(conn, thread_id, now)
        if auto is not None:  # kept in the thread, visible, never alerting (RFC 3834 §1)
            return RecipientOutcome(rcpt.address, True, message_id=message_id)
        await repo.add_event(
            conn,
            rcpt.tenant_id,
            RECEIVED_EVENT,
            {
                "message_id": message_id,
                "thread_id": thread_id,
                "contact_id": contact_id,
                "channel": "email",
                "text": mail.text,
                "sender": msg.sender,
                "recipient": rcpt.address.lower(),
                "subject": mail.subject,
                "sender_verified": verified,
                "email_message_id": mail.message_id,
                "attachments": [
                    {
                        "id": r["id"],
                        "filename": r["filename"],
                        "content_type": r["content_type"],
                        "size_bytes": r["size_bytes"],
                        "stored": r["stored"],
                    }
                    for r in rows
                ],
                "note": note,
            },
            now,
        )
        return RecipientOutcome(rcpt.address, True, message_id=message_id)

    async def _attachments(
        self,
        conn: AsyncConnection,
        profile: store.MailProfile,
        message_id: str,
        mail: ParsedMail,
        written: set[str],
        now: datetime,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Attachment rows, and notices for the ones not saved. Saved files are deduplicated per
        tenant: bytes the tenant already holds cost no quota again (a reply quoting the attachment
        it answers is common); a new file is charged its exact size in this transaction."""
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        charged: set[str] = set()
        # One random stem per message and the position after it: ids sort in the message's order,
        # which is the order lists show them in (created_at, id).
        stem = new_id("att")
        for position, att in enumerate(mail.attachments):
            stored, reason = False, None
            if att.problem is not None:
                reason = att.problem
                notes.append(f"attachment {att.filename!r} ({att.size} bytes) not kept: {att.problem}")
            elif not profile.attachments_save:
                reason = "saving_disabled"
            else:
                stored, reason = await self._charge(conn, profile.tenant_id, att, written, charged, notes)
            rows.append(
                {
                    "id": f"{stem}{position:04x}",
                    "tenant_id": profile.tenant_id,
                    "message_id": message_id,
                    "filename": att.filename[:255],
                    "content_type": att.content_type[:255],
                    "size_bytes": att.size,
                    "sha256": att.sha256 or "",
                    "stored": stored,
                    "storage_path": self._storage_path(att.sha256) if stored else None,
                    "not_stored_reason": reason,
                    "created_at": now,
                }
            )
        return rows, notes

    async def _charge(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        att: ParsedAttachment,
        written: set[str],
        charged: set[str],
        notes: list[str],
    ) -> tuple[bool, str | None]:
        """Save ``att`` for the tenant if it holds these bytes already (no charge) or its quota has
        room (charged exactly); ``written``: the files on disk, ``charged``: new in this message."""
        await lock_name(conn, f"attachment:{tenant_id}:{att.sha256}")  # dedupe check vs a racer (PostgreSQL)
        if att.sha256 in charged or await store.tenant_has_file(conn, tenant_id, att.sha256):
            return True, None
        if att.sha256 in written and await store.charge_quota(conn, tenant_id, att.size):
            charged.add(att.sha256)
            return True, None
        used, limit = await store.quota_usage(conn, tenant_id)
        notes.append(
            f"attachment {att.filename!r} ({att.size} bytes) not saved: attachment quota exceeded "
            f"({used} of {limit} bytes used)"
        )
        return False, "quota_exceeded"

    def _storage_path(self, sha256: str) -> str | None:
        if self.files is None:
            return None
        root = self.settings.data_dir
        return self.files.storage_path(sha256, root) if root is not None else str(self.files.path_for(sha256))

    async def _drop(
        self,
        conn: AsyncConnection,
        tenant_id: str | None,
        address: str,
        msg: _Message,
        deny: Deny,
        now: datetime,
    ) -> RecipientOutcome:
        mail = msg.mail
        subject = mail.subject if mail else None
        email_message_id = mail.message_id if mail else None
        await drops_repo.record_drop(
            conn,
            announce=deny.reason in _ANNOUNCED_DROPS,
            channel="email",
            tenant_id=tenant_id,
            reason=deny.reason,
            sender=msg.sender,
            recipient=address.lower(),
            size_bytes=msg.raw_size,
            detail=deny.detail,
            email_message_id=email_message_id,
            subject=subject,
            # After the dedupe check (tenant drops of a readable mail): a second read finds this one.
            inbound_key=msg.inbound_key if tenant_id is not None and msg.mail is not None else None,
            now=now,
        )
        return RecipientOutcome(address, False, reason=deny.reason, detail=deny.detail)
