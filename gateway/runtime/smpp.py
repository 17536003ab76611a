"""SMPP wiring: the connector pool (the ``sms.submit`` job handler sends through it), inbound SMS
(MO and receipts), its housekeeping, and the ``[[smpp.listeners]]`` carriers bind to (issue 9)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from prometheus_client import Gauge

from gateway.config import SmppConnectorConfig
from gateway.domain.receipts import MessageIdType, normalize_message_id
from gateway.http.context import ApiContext
from gateway.runtime.base import StartupError, Wiring, log
from gateway.services.delivery import SmsDelivery
from gateway.services.inbound import InboundSettings, InboundSmsService
from gateway.services.jobrunner import BatchHandler
from gateway.services.sms_submit import SmsSubmitter
from gateway.smpp.listener import SmppListener
from gateway.smpp.pool import ConnectorPool
from gateway.smpp.session import SmppSession
from gateway.smpp.types import DeliverSm, to_inbound
from gateway.tls import server_context

__all__ = ["SmppStarted", "start_smpp"]


@dataclass
class SmppStarted:
    """What the runtime keeps: the pool, the ``sms.submit`` handler, the listeners (maybe none)."""

    pool: ConnectorPool
    submit: BatchHandler
    listeners: list[SmppListener] = field(default_factory=list)


async def start_smpp(w: Wiring) -> SmppStarted | None:
    """One session per [[smpp.connectors]]; the sms.submit job handler sends through them.
    None: neither connectors nor listeners are configured."""
    cfg = w.config
    ctx = w.ctx
    if not cfg.smpp.connectors:
        log.warning("no [[smpp.connectors]] configured: SMS messages stay queued until one is")
        if not cfg.smpp.listeners:  # carriers binding to us still bring MO and receipts
            return None
    id_types = {c.name: MessageIdType(c.message_id_type) for c in cfg.smpp.connectors}

    def id_key(connector: str, raw: str, source: str) -> str:
        where: Literal["resp", "dlr"] = "resp" if source == "resp" else "dlr"
        return normalize_message_id(raw, id_types.get(connector, MessageIdType.AS_IS), source=where)

    sessions: list[SmppSession] = []
    delivery_ref: list[SmsDelivery] = []

    def make_session(c: SmppConnectorConfig) -> SmppSession:
        async def on_deliver(name: str, pdu: DeliverSm) -> None:
            await delivery_ref[0].on_inbound(to_inbound(name, pdu))

        async def on_late(seq: int, ref: Any, message_id: str | None, status: int) -> None:
            await delivery_ref[0].on_late_response(c.name, ref, message_id, status)

        return SmppSession(c, on_deliver=on_deliver, on_late_response=on_late)

    sessions = [make_session(c) for c in cfg.smpp.connectors]
    pool = ConnectorPool(sessions)
    inbound = InboundSmsService(
        ctx.db,
        w.clock,
        InboundSettings(
            reply_window=timedelta(days=cfg.sms.reply_window_days),
            concat_timeout=timedelta(minutes=cfg.sms.concat_timeout_minutes),
            duplicate_window=timedelta(minutes=cfg.sms.mo_duplicate_window_minutes),
            default_region=cfg.sms.default_region,
        ),
    )
    delivery = SmsDelivery(ctx.db, w.clock, id_key=id_key, inbound=inbound)
    delivery_ref.append(delivery)
    submitter = SmsSubmitter(
        ctx.db,
        pool,
        w.clock,
        # Bounded by the lease: a job must not outlive its claim while it waits for a bind.
        submit_timeout=max(1.0, cfg.queue.lease_seconds / 2),
        resubmit_unknown=cfg.sms.resubmit_unknown,
        id_key=id_key,
    )
    started = SmppStarted(pool=pool, submit=BatchHandler(submitter.handle_batch))
    # Sessions stop sending at shutdown, wait briefly for responses, unbind.
    task = w.background("smpp-pool", pool.run)
    # Registered after the pool, so it runs before the pool stops: a batch whose parts are out
    # records their outcomes before the binds go and the database closes (a batch cut off here
    # would leave parts "pending" that the SMSC has, and a restart would send them again).
    w.stack.push_async_callback(submitter.drain, cfg.daemon.shutdown_timeout_seconds)

    async def ready() -> tuple[bool, dict[str, Any]]:
        binds = pool.snapshot()
        up = not cfg.smpp.connectors or (not task.done() and any(b["state"] == "bound" for b in binds))
        return up, {"binds": binds}

    ctx.ready_checks["smpp"] = ready
    _smpp_metrics(ctx, pool, delivery)

    async def final_marks() -> None:
        # Runs after the pool stopped (the stack unwinds in reverse): the last MOs' answered
        # marks. Lost marks only make an identical message within the window count as a resend.
        try:
            await inbound.flush_answered()
        except Exception:
            log.exception("inbound sms: answered marks not written at shutdown")

    w.stack.push_async_callback(final_marks)

    # Inbound SMS housekeeping: incomplete concatenations past their timeout are stored with a
    # note, expired duplicate fingerprints forgotten. Registered after the pool, so it stops first.
    async def housekeeping(stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.sms.housekeeping_seconds)
            if stop.is_set():
                return
            try:
                await inbound.flush_answered()
                await inbound.flush_incomplete()
                await inbound.purge_fingerprints()
            except Exception:  # a database hiccup: log it, try again next round
                log.exception("inbound sms housekeeping failed")

    w.background("sms-inbound-housekeeping", housekeeping)
    mo_gauge = Gauge(
        "gateway_sms_inbound", "MO deliver_sm since start by outcome", ["outcome"], registry=ctx.registry
    )

    async def mo_metrics() -> None:
        for outcome, n in inbound.outcomes.items():
            mo_gauge.labels(outcome).set(n)

    ctx.metrics_refreshers.append(mo_metrics)
    if cfg.smpp.listeners:

        async def listener_deliver(name: str, pdu: DeliverSm) -> None:
            await delivery.on_inbound(to_inbound(name, pdu))

        started.listeners = await _start_listeners(w, pool, listener_deliver)
    return started


async def _start_listeners(
    w: Wiring, pool: ConnectorPool, on_deliver: Callable[[str, DeliverSm], Awaitable[None]]
) -> list[SmppListener]:
    """Issue 9: [[smpp.listeners]], where carriers outbind or bind to us (gateway/smpp/listener.py).
    Registered after the pool, so they unbind before it stops."""
    cfg = w.config
    ctx = w.ctx
    connectors = {c.name: c for c in cfg.smpp.connectors}
    listeners: list[SmppListener] = []
    for lc in cfg.smpp.listeners:
        try:
            context = server_context(lc.tls_cert_file, lc.tls_key_file) if lc.tls_cert_file else None
        except (OSError, ssl.SSLError) as exc:
            why = f"smpp listener {lc.name}: cannot load its TLS certificate: {exc}"
            raise StartupError(why) from None
        listener = SmppListener(
            lc, on_deliver=on_deliver, connectors=connectors, pool=pool, ssl_context=context
        )
        try:
            await listener.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on smpp {lc.host}:{lc.port}: {exc.strerror}") from None
        # Leave the stack's deadline a margin: what is still running then is cancelled anyway.
        timeout = max(1.0, cfg.daemon.shutdown_timeout_seconds - 1.0)
        run = functools.partial(listener.run, timeout=timeout)
        w.background(f"smpp-listener-{lc.name}", run)
        listeners.append(listener)

    async def ready() -> tuple[bool, dict[str, Any]]:
        snaps = [listener.snapshot() for listener in listeners]
        return all(snap["serving"] for snap in snaps), {"listeners": snaps}

    ctx.ready_checks["smpp_listeners"] = ready
    bound = Gauge(
        "gateway_smpp_listener_sessions",
        "Carrier sessions bound to our SMPP listeners",
        ["listener", "carrier"],
        registry=ctx.registry,
    )
    events = Gauge(
        "gateway_smpp_listener_connections",
        "Listener connections since start by outcome (bind, outbind, bind_failed, rejected_network...)",
        ["listener", "outcome"],
        registry=ctx.registry,
    )
    carrier_events = Gauge(
        "gateway_smpp_listener_carrier_events",
        "Per carrier: binds, outbinds, failed credentials, over the connection limit, since start",
        ["listener", "carrier", "outcome"],
        registry=ctx.registry,
    )

    async def refresh() -> None:
        for listener in listeners:
            snap = listener.snapshot()
            for outcome, n in snap["counters"].items():
                events.labels(snap["name"], outcome).set(n)
            for carrier in snap["carriers"]:
                bound.labels(snap["name"], carrier["system_id"]).set(carrier["bound"])
                for outcome, n in carrier["counters"].items():
                    carrier_events.labels(snap["name"], carrier["system_id"], outcome).set(n)

    ctx.metrics_refreshers.append(refresh)
    return listeners


def _smpp_metrics(ctx: ApiContext, pool: ConnectorPool, delivery: SmsDelivery) -> None:
    labels = ["connector"]
    gauges = {
        key: Gauge(f"gateway_smpp_{key}", help_, labels, registry=ctx.registry)
        for key, help_ in {
            "bound": "1 when the connector's bind is up",
            "window_in_use": "submit_sm waiting for their response",
            "window": "configured window",
            "queued": "parts waiting for a window slot or a token",
            "submitted": "submit_sm written since start",
            "acked": "submit_sm accepted by the SMSC since start",
            "throttled": "ESME_RTHROTTLED answers since start",
            "failed": "parts rejected permanently since start",
            "unknown": "parts without a response (outcome unknown) since start",
            "reconnects": "reconnections since start",
            "submit_rate": "submit_sm per second over the last 10 s",
        }.items()
    }
    receipts = Gauge(
        "gateway_sms_receipts", "Delivery receipts since start", ["result"], registry=ctx.registry
    )
    no_sender = Gauge(
        "gateway_sms_no_sender_available", "Requests refused: no pool number free", registry=ctx.registry
    )

    async def refresh() -> None:
        for snap in pool.snapshot():
            name = snap["name"]
            gauges["bound"].labels(name).set(1 if snap["state"] == "bound" else 0)
            for key, gauge in gauges.items():
                if key != "bound":
                    gauge.labels(name).set(float(snap.get(key) or 0))
        receipts.labels("matched").set(delivery.receipts_matched)
        receipts.labels("parked").set(delivery.receipts_parked)
        no_sender.set(ctx.outbound.no_sender_available)

    ctx.metrics_refreshers.append(refresh)
