"""What the HTTP adapter needs from the rest of the daemon, handed over by gateway/runtime/."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.http.routing import Api
from gateway.services.contacts import ContactService
from gateway.services.conversations import ConversationService
from gateway.services.notify import NotifyService
from gateway.services.outbound import MessageQueries, OutboundService
from gateway.services.tenants import TenantService
from gateway.storage.db import Database

#: A readiness check returns (ok, details); it must be quick (it runs on every /readyz).
ReadyCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
#: Called before /metrics renders, to refresh gauges that need a database query.
MetricsRefresher = Callable[[], Awaitable[None]]

API = Api(title="Messaging gateway", version=__version__)


@dataclass
class ApiContext:
    db: Database
    tenants: TenantService
    contacts: ContactService
    admin_token: str
    outbound: OutboundService
    messages: MessageQueries
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    metrics_refreshers: list[MetricsRefresher] = field(default_factory=list)
    #: Threads, lists, the event feed and webhook state (issue 7); the daemon always sets it.
    conversations: ConversationService | None = None
    #: Templates, timing, dedupe, rules (issue 8); None: built on first use from ``outbound``.
    notify: NotifyService | None = None


CTX = web.AppKey("ctx", ApiContext)
