"""IMAP wiring (issue 6): a poller per [[imap.pollers]] (gateway/imap), handing mail to the
inbound-email sink."""

from __future__ import annotations

import ssl

from gateway.domain.inbound_mail import InboundMailSink
from gateway.imap.poller import ImapPoller
from gateway.imap.wiring import imap_metrics, imap_ready, pollers_from_config
from gateway.runtime.base import StartupError, Wiring

__all__ = ["start_imap"]


async def start_imap(w: Wiring, sink: InboundMailSink | None) -> list[ImapPoller]:
    """Issue 6: a poller per [[imap.pollers]] (gateway/imap), handing mail to ``sink``
    (``Runtime.inbound_mail``: None when email is off). Returns the running pollers."""
    cfg = w.config
    ctx = w.ctx
    if not cfg.imap.pollers:
        return []
    if sink is None:  # start_email builds it when email is on
        raise StartupError("smtp.message_id_secret must be set for [[imap.pollers]] (email is off)")
    tenants = ctx.tenants

    async def tenant_address(tenant_id: str) -> str:
        return tenants.mailbox_address((await tenants.get(tenant_id)).mailbox_prefix)

    try:
        pollers = pollers_from_config(cfg, sink, tenant_address=tenant_address, clock=w.clock)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"imap: cannot load a poller's ca_file: {exc}") from None
    tasks = [w.background(f"imap-{p.settings.name}", p.run) for p in pollers]
    ctx.ready_checks["imap"] = imap_ready(pollers, lambda: not any(t.done() for t in tasks))
    ctx.metrics_refreshers.append(imap_metrics(ctx.registry, pollers))
    return pollers
