"""Webhook wiring (issue 7): the event feed's wake-ups, the conversation reads, webhook URL checks
(SSRF) and the webhook dispatcher."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from gateway.domain.webhooks import Resolver, RetrySchedule
from gateway.http.webhook_client import AiohttpWebhookSender, system_resolver
from gateway.runtime.base import Wiring
from gateway.services.conversations import ConversationService
from gateway.services.events import EventHub
from gateway.services.webhooks import WebhookDispatcher, WebhookSettings, check_webhook_url
from gateway.storage import webhooks as webhooks_repo

__all__ = ["start_webhooks"]


async def start_webhooks(w: Wiring, *, resolver: Resolver | None, owner: str) -> WebhookDispatcher:
    """Issue 7: the event feed's wake-ups, the conversation reads, webhook URL checks (SSRF) and
    the webhook dispatcher. Started before HTTP, so it stops after HTTP stopped accepting.
    ``resolver``: DNS for webhook URLs (None: getaddrinfo); ``owner``: this daemon's lease name."""
    cfg = w.config.webhooks
    ctx = w.ctx
    hub = EventHub()
    ctx.db.on_commit = hub.notify  # commits that wrote events wake long-polls and the dispatcher
    ctx.conversations = ConversationService(
        ctx.db,
        w.clock,
        hub,
        data_dir=Path(w.config.storage.data_dir),
        poll_interval=cfg.poll_interval_seconds,
    )
    resolve = resolver or system_resolver
    ctx.tenants.webhook_url_check = functools.partial(
        check_webhook_url, resolver=resolve, allow_private=cfg.allow_private
    )
    sender = await w.stack.enter_async_context(
        AiohttpWebhookSender(resolve, allow_private=cfg.allow_private, max_connections=cfg.concurrency)
    )
    dispatcher = WebhookDispatcher(
        ctx.db,
        w.clock,
        sender,
        WebhookSettings(
            timeout=cfg.timeout_seconds,
            schedule=RetrySchedule(
                base=timedelta(seconds=cfg.retry_base_seconds),
                cap=timedelta(seconds=cfg.retry_max_seconds),
                window=timedelta(hours=cfg.retry_hours),
            ),
            concurrency=cfg.concurrency,
            poll_interval=cfg.poll_interval_seconds,
            lease=timedelta(seconds=cfg.lease_seconds),
        ),
        owner=owner,
    )
    hub.listen(dispatcher.wake)
    task = w.background("webhooks", dispatcher.run)

    async def ready() -> tuple[bool, dict[str, Any]]:
        return not task.done(), {"delivering_to": dispatcher.in_flight}

    ctx.ready_checks["webhooks"] = ready
    deliveries = Gauge(
        "gateway_webhook_deliveries",
        "Webhook POSTs since start: delivered (2xx), retried (failed, tried again), failed (given up)",
        ["result"],
        registry=ctx.registry,
    )
    failed_events = Gauge(
        "gateway_webhook_failed_events",
        "Events whose webhook delivery was given up after the retry window (all daemons)",
        registry=ctx.registry,
    )
    failing = Gauge(
        "gateway_webhook_tenants_failing", "Tenants whose endpoint is failing now", registry=ctx.registry
    )
    waiting = Gauge("gateway_events_long_polls", "GET /v1/events requests waiting", registry=ctx.registry)

    async def refresh() -> None:
        deliveries.labels("delivered").set(dispatcher.delivered)
        deliveries.labels("retried").set(dispatcher.retried)
        deliveries.labels("failed").set(dispatcher.failed)
        waiting.set(hub.waiting)
        given_up, failing_now = await ctx.db.read(webhooks_repo.counts)
        failed_events.set(given_up)
        failing.set(failing_now)

    ctx.metrics_refreshers.append(refresh)
    return dispatcher
