"""Webhook delivery (issue 7): every event POSTed, signed, to its tenant's ``webhook_url``, at least once
and in order per tenant, retried with backoff for ``[webhooks] retry_hours``, then recorded as failed.

How it works:

- ``webhook_cursors`` holds, per tenant, the id up to which events are delivered (or given up).
- :class:`WebhookDispatcher` (one per daemon) claims due tenants with a lease and runs one task per
  claimed tenant, at most ``concurrency`` at once. A tenant's task POSTs its events one at a time,
  in id order, and moves the cursor after each 2xx; so a slow or dead endpoint holds up only its own
  tenant. Several daemons on one database deliver different tenants; the lease (renewed while
  working, fenced on every cursor change) keeps two daemons from delivering one tenant at once.
- A failed POST (non-2xx, timeout, refused address, connection error) makes the tenant back off
  (exponential, jittered) and releases the lease; the same event is tried again when due, so order
  holds. Once an event's window (counted from the event's own time) has passed, it is recorded in
  ``webhook_failures`` (``GET /v1/webhooks/failed``, the ``gateway_webhook_failed_events`` metric)
  and delivery goes on with the next event: a failed event does not stop the later ones, which are
  then tried immediately and (if the endpoint is still down) fail in turn once their own window is
  over. Every event stays in the feed (``GET /v1/events``), so a receiver can fetch what it missed.
- At least once: a POST that succeeded but whose cursor update was lost (crash, lease lost) is sent
  again. Receivers dedupe on the event ``id`` (also in the ``Gateway-Event-Id`` header).

Time comes from the injected clock (timestamps, backoff, the window); the HTTP client and DNS are
behind :class:`WebhookSender` (gateway/http/webhook_client.py), so tests drive all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Resolver,
    RetrySchedule,
    address_problem,
    ip_literal,
    sign,
    url_problem,
)
from gateway.services.events import event_json
from gateway.storage import events as events_repo
from gateway.storage import webhooks as repo
from gateway.storage.db import Database
from gateway.storage.events import EventRow

log = logging.getLogger(__name__)

#: DNS answers slower than this make a tenant-setting request proceed without the check.
RESOLVE_TIMEOUT_SECONDS = 5.0
#: Events read per round trip for one tenant.
BATCH = 100
#: Seconds between two looks for due tenants when commits keep waking the dispatcher.
ROUND_GAP = 0.05


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """``ok``: the receiver answered 2xx. Otherwise ``error`` says what happened (for the tenant)."""

    ok: bool
    status: int | None = None
    error: str | None = None


class WebhookSender(Protocol):
    """POSTs one body (gateway.http.webhook_client.AiohttpWebhookSender implements it)."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> DeliveryResult: ...


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout: float = 10.0
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    concurrency: int = 50
    poll_interval: float = 1.0
    lease: timedelta = timedelta(seconds=60)


async def check_webhook_url(url: str, resolver: Resolver | None, allow_private: bool) -> str | None:
    """Why ``url`` may not be a webhook (for a 422 naming ``webhook_url``), or None.

    A host that does not resolve now is accepted (DNS may not be set up yet when the URL is
    configured); every delivery resolves and checks again, so it can never reach a refused address
    later either (DNS rebinding included: the connection uses the addresses that were checked).
    """
    problem = url_problem(url)
    if problem is not None:
        return problem
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    elif resolver is None:
        return None
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                addresses = await resolver(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, TimeoutError):
            return None
    if allow_private:
        return None
    for address in addresses:
        reason = address_problem(address)
        if reason is not None:
            kind = reason.replace("_", "-")
            return f"resolves to a {kind} address ({address}); a webhook must be reachable on the internet"
    return None


class WebhookDispatcher:
    """Delivers every tenant's events; :meth:`run` until stopped (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        sender: WebhookSender,
        settings: WebhookSettings,
        *,
        owner: str,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.clock = clock
        self.sender = sender
        self.settings = settings
        self.owner = owner
        self.rand = rand
        self.delivered = 0  # POSTs answered 2xx, since start (for /metrics)
        self.retried = 0  # POSTs that failed and will be tried again
        self.failed = 0  # events given up
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Tenants claimed for nothing (their next event is not visible yet: storage/events.py) and
        #: left alone until this loop time, so such a tenant is not claimed again in a tight loop.
        self._quiet: dict[str, float] = {}
        self._signal = asyncio.Event()
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def wake(self, topics: Iterable[str] = ()) -> None:
        """A commit wrote events (EventHub listener): look for due tenants now."""
        if any(t.startswith("events:") for t in topics):
            self._signal.set()

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._watch(stop))
        try:
            while not stop.is_set():
                self._signal.clear()
                try:
                    await self.round()
                except Exception:  # a database hiccup: the next round tries again
                    log.exception("webhook round failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_interval):
                        await self._signal.wait()
                if not stop.is_set():
                    # Under load every group commit announces events; one look per gap serves them
                    # all instead of a database read per commit.
                    await asyncio.sleep(ROUND_GAP)
            # Stopping: each tenant finishes the POST it is in (bounded by the timeout), records it
            # and lets its lease go; the runtime cancels us if that outlasts the shutdown deadline.
            self._stopping = True
            if self._tasks:
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        except asyncio.CancelledError:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            raise
        finally:
            watcher.cancel()

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping = True
        self._signal.set()

    async def round(self) -> int:
        """Claim due tenants (as many as there is room for) and start their delivery tasks."""
        room = self.settings.concurrency - len(self._tasks)
        if room <= 0 or self._stopping:
            return 0
        now = self.clock()
        loop_now = asyncio.get_running_loop().time()
        self._quiet = {t: until for t, until in self._quiet.items() if until > loop_now}
        running = set(self._tasks) | set(self._quiet)

        # Look first (a read), claim only what is due (a write): most wake-ups find nothing to do,
        # and on SQLite a write unit would queue behind the group writer for nothing.
        due = await self.db.read(lambda conn: repo.due_tenants(conn, now, running, room))
        if not due:
            return 0

        async def unit(conn: AsyncConnection) -> list[str]:
            # Another daemon may have claimed some meanwhile: the conditional UPDATE tells.
            return [t for t in due if await repo.claim(conn, t, self.owner, now, now + self.settings.lease)]

        claimed = await self.db.write(unit)
        for tenant_id in claimed:
            task = asyncio.create_task(self._deliver_tenant(tenant_id), name=f"webhook-{tenant_id}")
            self._tasks[tenant_id] = task
            task.add_done_callback(functools.partial(self._done, tenant_id))
        return len(claimed)

    def _done(self, tenant_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(tenant_id, None)
        self._signal.set()  # room for another tenant

    async def settle(self) -> None:
        """Wait until every delivery task started so far has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def _deliver_tenant(self, tenant_id: str) -> None:
        holding = True
        try:
            holding = await self._deliver(tenant_id)
        except Exception:
            log.exception("webhook delivery failed", extra={"tenant_id": tenant_id})
        finally:
            if holding:
                with contextlib.suppress(Exception):
                    await self.db.write(lambda conn: repo.release(conn, tenant_id, self.owner))

    async def _deliver(self, tenant_id: str) -> bool:
        """POST the tenant's pending events in order; False once the lease is no longer held."""
        lease_until = self.clock() + self.settings.lease
        first = True
        while not self._stopping:
            target = await self.db.read(lambda conn: repo.target(conn, tenant_id))
            if target is None or target.lease_owner != self.owner:
                return False
            if target.url is None:
                return True
            pending = await self.db.read(
                functools.partial(
                    events_repo.events_after, tenant_id=tenant_id, after=target.position, limit=BATCH
                )
            )
            if not pending:
                if first:
                    self._quiet[tenant_id] = asyncio.get_running_loop().time() + self.settings.poll_interval
                return True
            first = False
            state = _HeadState(target.attempts, target.failing_since)
            for event in pending:
                if self._stopping:
                    return True
                now = self.clock()
                if lease_until - now < self.settings.lease / 2:
                    lease_until = now + self.settings.lease
                    if not await self.db.write(
                        functools.partial(
                            repo.extend, tenant_id=tenant_id, owner=self.owner, until=lease_until
                        )
                    ):
                        return False
                result = await self._post(target.url, target.secret, event, now)
                outcome = await self._record(tenant_id, target.url, event, result, state)
                if outcome == "stop":
                    return False  # backing off (the lease was let go) or the lease was lost
        return True

    async def _post(self, url: str, secret: str, event: EventRow, now: datetime) -> DeliveryResult:
        body = json.dumps(
            event_json(event.id, event.type, event.payload, event.created_at, event.position),
            separators=(",", ":"),
        ).encode()
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            EVENT_ID_HEADER: str(event.id),
        }
        return await self.sender.post(url, body, headers, self.settings.timeout)

    async def _record(
        self, tenant_id: str, url: str, event: EventRow, result: DeliveryResult, state: _HeadState
    ) -> Literal["next", "stop"]:
        """Write what one POST achieved. ``next``: go on with the next event; ``stop``: backing off
        (the lease is released with the back-off) or the lease was lost."""
        now = self.clock()
        if result.ok:
            if not await self.db.write(
                lambda conn: repo.delivered(conn, tenant_id, self.owner, event.position, now)
            ):
                return "stop"
            self.delivered += 1
            state.attempts, state.failing_since = 0, None
            return "next"
        state.attempts += 1
        first_failed = state.failing_since = state.failing_since or now
        error = result.error or f"HTTP {result.status}"
        retry_at = self.settings.schedule.next_attempt(state.attempts, event.created_at, now, self.rand())
        if retry_at is None:

            async def give_up(conn: AsyncConnection) -> bool:
                return await repo.give_up(
                    conn,
                    tenant_id,
                    self.owner,
                    position=event.position,
                    event_type=event.type,
                    url=url,
                    attempts=state.attempts,
                    first_failed_at=first_failed,
                    error=error,
                    now=now,
                )

            if not await self.db.write(give_up):
                return "stop"
            self.failed += 1
            log.warning(
                "webhook event failed for good",
                extra={
                    "tenant_id": tenant_id,
                    "event_id": event.id,
                    "attempts": state.attempts,
                    "error": error,
                },
            )
            state.attempts = 0  # the next event starts afresh (still failing_since: the endpoint is down)
            return "next"

        async def back_off(conn: AsyncConnection) -> bool:
            return await repo.attempt_failed(
                conn,
                tenant_id,
                self.owner,
                attempts=state.attempts,
                next_attempt_at=retry_at,
                failing_since=first_failed,
                error=error,
                now=now,
            )

        await self.db.write(back_off)
        self.retried += 1
        log.info(
            "webhook attempt failed; will retry",
            extra={
                "tenant_id": tenant_id,
                "event_id": event.id,
                "attempts": state.attempts,
                "retry_at": retry_at.isoformat(),
                "error": error,
            },
        )
        return "stop"  # attempt_failed let the lease go


@dataclass(slots=True)
class _HeadState:
    """Failed attempts at the event now at the head of the tenant's queue."""

    attempts: int
    failing_since: datetime | None
