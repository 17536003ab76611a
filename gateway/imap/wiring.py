"""From ``[[imap.pollers]]`` to running pollers, their readiness and metrics (used by gateway/runtime/)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from gateway.config import Config, ImapPollerConfig
from gateway.domain.inbound_mail import InboundMailSink
from gateway.imap.client import ImapSettings, TlsMode, tls_context
from gateway.imap.poller import ImapPoller, PollerSettings, PollerState, TenantAddress

__all__ = ["imap_metrics", "imap_ready", "pollers_from_config"]


def _settings(cfg: Config, pc: ImapPollerConfig) -> PollerSettings:
    tls: TlsMode = "tls" if pc.tls == "tls" else "starttls" if pc.tls == "starttls" else "none"
    return PollerSettings(
        name=pc.name,
        connection=ImapSettings(
            host=pc.host,
            port=pc.port,
            tls=tls,
            username=pc.username,
            password=pc.password,
            timeout=pc.timeout_seconds,
        ),
        mail_domain=cfg.smtp.mail_domain,
        mailbox=pc.mailbox,
        tenant=pc.tenant or None,
        move_to=pc.on_success.removeprefix("move:") if pc.on_success.startswith("move:") else None,
        interval=pc.interval_seconds,
        idle_timeout=pc.idle_timeout_seconds,
        retry_base=pc.retry_base_seconds,
        retry_max=pc.retry_max_seconds,
        # The SMTP listener's limit: a message too big for SMTP is too big through IMAP too.
        max_message_bytes=cfg.smtp.max_message_bytes,
    )


def pollers_from_config(
    cfg: Config,
    sink: InboundMailSink,
    *,
    tenant_address: TenantAddress,
    clock: Callable[[], datetime],
) -> list[ImapPoller]:
    """One poller per entry. Raises ``OSError``/``ssl.SSLError`` when a ``ca_file`` is unusable
    (start-up: the caller turns it into a StartupError)."""
    pollers = []
    for pc in cfg.imap.pollers:
        context: ssl.SSLContext | None = tls_context(pc.ca_file) if pc.tls != "none" else None
        pollers.append(
            ImapPoller(
                _settings(cfg, pc), sink, ssl_context=context, tenant_address=tenant_address, clock=clock
            )
        )
    return pollers


def imap_ready(
    pollers: list[ImapPoller], running: Callable[[], bool]
) -> Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]:
    """Ready while every poller's task runs. A mailbox that cannot be reached does not make the
    daemon unready (it is listed with its state and last error): the API and the other channels
    still work, and every instance would be taken out of the balancer at once."""

    async def ready() -> tuple[bool, dict[str, Any]]:
        return running(), {"pollers": [p.snapshot() for p in pollers]}

    return ready


def imap_metrics(registry: CollectorRegistry, pollers: list[ImapPoller]) -> Callable[[], Awaitable[None]]:
    """Gauges per poller (labels: poller), refreshed on each scrape."""
    labels = ["poller"]
    connected = Gauge("gateway_imap_connected", "1 while the poller is logged in", labels, registry=registry)
    state = Gauge(
        "gateway_imap_state", "1 for the poller's current state", [*labels, "state"], registry=registry
    )
    messages = Gauge(
        "gateway_imap_messages",
        "Messages since start: handled (committed and marked; duplicate: re-reads among them), "
        "failed (hand-over raised, retried), rejected (left in the mailbox for a person)",
        [*labels, "result"],
        registry=registry,
    )
    errors = Gauge("gateway_imap_errors", "Connection/protocol errors since start", labels, registry=registry)
    last = Gauge(
        "gateway_imap_last_success_timestamp_seconds",
        "When the last error-free round ended (0: none yet)",
        labels,
        registry=registry,
    )

    async def refresh() -> None:
        for p in pollers:
            name = p.settings.name
            connected.labels(name).set(1 if p.connected else 0)
            for s in PollerState:
                state.labels(name, str(s)).set(1 if p.state == s else 0)
            messages.labels(name, "handled").set(p.handled)
            messages.labels(name, "duplicate").set(p.duplicates)
            messages.labels(name, "failed").set(p.failed)
            messages.labels(name, "rejected").set(p.rejected)
            errors.labels(name).set(p.errors)
            last.labels(name).set(p.last_success.timestamp() if p.last_success else 0)

    return refresh
