"""Reading conversations (issue 7): threads, a thread's messages, the operators' message list, drop
records, the event feed (with long-polling) and webhook delivery state. Reads only; each call is one
read on one connection, scoped to the caller's tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain import cursors
from gateway.services.errors import ConflictError, InvalidInputError, NotFoundError
from gateway.services.events import EventHub, event_cursor, event_json, parse_event_cursor, wait_for
from gateway.storage import contacts as contacts_repo
from gateway.storage import conversations as repo
from gateway.storage import events as events_repo
from gateway.storage import webhooks as webhooks_repo
from gateway.storage.db import Database
from gateway.storage.messages import event_topic

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _key_ts(kind: str, cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        ts, ident = cursors.decode(kind, cursor, (str, str))
        return datetime.fromisoformat(str(ts)), str(ident)
    except (cursors.CursorError, ValueError):
        raise InvalidInputError("cursor", "is not a cursor this list returned") from None


def _key_ts_int(kind: str, cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    try:
        ts, ident = cursors.decode(kind, cursor, (str, int))
        return datetime.fromisoformat(str(ts)), int(ident)
    except (cursors.CursorError, ValueError):
        raise InvalidInputError("cursor", "is not a cursor this list returned") from None


def _page(kind: str, rows: list[dict[str, Any]], limit: int, ts_field: str) -> Page:
    """``rows`` were fetched with ``limit + 1``: one more means there is a next page."""
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = cursors.encode(kind, [rows[-1][ts_field].isoformat(), rows[-1]["id"]]) if more and rows else None
    return Page(rows, nxt)


class ConversationService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        hub: EventHub,
        *,
        data_dir: Path,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.hub = hub
        self.data_dir = data_dir
        #: How often a long-poll re-reads the table although nobody woke it: events written by another
        #: daemon, or hidden for a moment behind a transaction still running (storage/events.py).
        self.poll_interval = poll_interval

    # --- threads ---------------------------------------------------------------------------------

    async def threads(
        self,
        tenant_id: str,
        *,
        contact_id: str | None = None,
        context_type: str | None = None,
        context_id: str | None = None,
        limit: int,
        cursor: str | None = None,
        contact_must_exist: bool = False,
    ) -> Page:
        after = _key_ts("threads", cursor)

        async def unit(conn: AsyncConnection) -> list[dict[str, Any]] | None:
            pk = None
            if contact_id is not None:
                pk = await contacts_repo.contact_pk(conn, tenant_id, contact_id)
                if pk is None:
                    return None
            rows = await repo.list_threads(
                conn,
                tenant_id,
                contact_pk=pk,
                context_type=context_type,
                context_id=context_id,
                after=after,
                limit=limit + 1,
            )
            last = await repo.messages_by_id(
                conn, [r["last_message_id"] for r in rows if r["last_message_id"]]
            )
            for r in rows:
                r["last_message"] = last.get(r["last_message_id"] or "")
            return rows

        rows = await self.db.read(unit)
        if rows is None:
            if contact_must_exist:
                raise NotFoundError("contact", contact_id or "")
            rows = []  # a filter on a contact the tenant does not have matches nothing
        return _page("threads", rows, limit, "last_message_at")

    async def thread(
        self, tenant_id: str, thread_id: str, *, limit: int, cursor: str | None = None
    ) -> tuple[dict[str, Any], Page]:
        """The thread and a page of its messages, oldest first, each with its attachments."""
        after = _key_ts("messages", cursor)

        async def unit(conn: AsyncConnection) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            thread = await repo.get_thread(conn, tenant_id, thread_id)
            if thread is None:
                return None
            last_id = thread["last_message_id"] or ""
            thread["last_message"] = (await repo.messages_by_id(conn, [last_id])).get(last_id)
            rows = await repo.thread_messages(conn, thread_id, after=after, limit=limit + 1)
            files = await repo.attachments_of(conn, [m["id"] for m in rows[:limit]])
            for m in rows:
                m["attachments"] = files.get(m["id"], [])
            return thread, rows

        found = await self.db.read(unit)
        if found is None:
            raise NotFoundError("thread", thread_id)
        thread, rows = found
        return thread, _page("messages", rows, limit, "created_at")

    async def attachment(self, tenant_id: str, attachment_id: str) -> tuple[dict[str, Any], Path]:
        """A stored attachment's row and file (relative paths are under ``[storage] data_dir``)."""
        row = await self.db.read(lambda conn: repo.get_attachment(conn, tenant_id, attachment_id))
        if row is None:
            raise NotFoundError("attachment", attachment_id)
        if not row["stored"] or not row["storage_path"]:
            raise ConflictError(
                "attachment_not_stored",
                "attachment_id",
                f"only listed, not stored ({row['not_stored_reason'] or 'not saved'})",
                {"reason": row["not_stored_reason"]},
            )
        root = self.data_dir.resolve()
        path = (root / row["storage_path"]).resolve()
        # A stored path never leaves the data directory; refuse rather than serve another file.
        if root not in path.parents or not path.is_file():
            log.warning(
                "stored attachment file missing",
                extra={"tenant_id": tenant_id, "attachment_id": attachment_id},
            )
            raise NotFoundError("attachment", attachment_id)
        return row, path

    # --- messages and drops ------------------------------------------------------------------------

    async def messages(
        self,
        tenant_id: str,
        *,
        status: str | None,
        since: datetime | None,
        limit: int,
        cursor: str | None = None,
    ) -> Page:
        after = _key_ts("tenant-messages", cursor)
        rows = await self.db.read(
            lambda conn: repo.list_messages(
                conn, tenant_id, status=status, since=since, after=after, limit=limit + 1
            )
        )
        return _page("tenant-messages", rows, limit, "created_at")

    async def drops(
        self, tenant_id: str | None, *, since: datetime | None, limit: int, cursor: str | None = None
    ) -> Page:
        """``tenant_id`` None: the drops that belong to no tenant (the admin's list)."""
        after = _key_ts_int("drops", cursor)
        rows = await self.db.read(
            lambda conn: repo.list_drops(conn, tenant_id, since=since, after=after, limit=limit + 1)
        )
        return _page("drops", rows, limit, "created_at")

    # --- the event feed ----------------------------------------------------------------------------

    async def events(
        self, tenant_id: str, *, after: str | None, limit: int, wait: float
    ) -> tuple[list[dict[str, Any]], str]:
        """Events after the cursor ``after`` in feed order, and the cursor to continue from. With
        ``wait`` > 0 and none yet, wait up to that many seconds for one: woken in-process when a
        commit wrote the tenant's events, re-reading every ``poll_interval`` for other daemons'."""
        position = parse_event_cursor(after)
        wait = min(max(wait, 0.0), MAX_WAIT_SECONDS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        topic = event_topic(tenant_id)
        retry = 0.0  # after a wake-up that found nothing yet (storage/events.py: the horizon)
        while True:
            with self.hub.subscribe(topic) as woken:
                rows = await self.db.read(
                    lambda conn: events_repo.events_after(conn, tenant_id, position, limit)
                )
                if rows:
                    out = [event_json(r.id, r.type, r.payload, r.created_at, r.position) for r in rows]
                    return out, out[-1]["cursor"]
                remaining = deadline - loop.time()
                if remaining <= 0 or self.hub.closed:
                    return [], event_cursor(position)
                # Woken but nothing visible: the event's transaction committed, yet an older one
                # still runs somewhere; look again shortly rather than after a whole poll interval.
                pause = min(remaining, retry or self.poll_interval)
                if await wait_for(woken, pause) or retry:
                    retry = min(max(retry * 2, 0.02), self.poll_interval)

    # --- webhooks --------------------------------------------------------------------------------

    async def webhook_status(self, tenant_id: str) -> dict[str, Any] | None:
        async def unit(conn: AsyncConnection) -> dict[str, Any] | None:
            state = await webhooks_repo.status(conn, tenant_id)
            if state is None:
                return None
            position = (state["last_xid"], state["last_event_id"])
            state["pending"] = await events_repo.count_after(conn, tenant_id, position, 10_000)
            return state

        return await self.db.read(unit)

    async def webhook_failures(
        self, tenant_id: str, *, since: datetime | None, limit: int, cursor: str | None = None
    ) -> Page:
        after = _key_ts_int("webhook-failures", cursor)
        rows = await self.db.read(
            lambda conn: webhooks_repo.failures(conn, tenant_id, since=since, after=after, limit=limit + 1)
        )
        return _page("webhook-failures", rows, limit, "failed_at")
