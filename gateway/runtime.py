"""The one place that builds everything and runs the daemon (``gateway run``).

Start-up order: database (checked to be at the migration head), services, then the components
(HTTP now; SMTP, SMPP and IMAP plug in the same way), each registered on an AsyncExitStack right
after it started, so teardown runs if and only if its set-up finished. Signals only set flags
(SIGTERM/SIGINT: stop, SIGHUP: reload); shutdown is ordinary code: tell systemd STOPPING, stop
accepting, let in-flight work finish within ``[daemon] shutdown_timeout_seconds``, cancel the rest
(a cancelled job is not lost: its lease expires and it is claimed again), close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import Gauge

from gateway import __version__
from gateway import config as config_mod
from gateway.config import Config, ConfigError, SmppConnectorConfig
from gateway.domain.inbound_mail import InboundMailSink
from gateway.domain.receipts import MessageIdType, normalize_message_id
from gateway.domain.webhooks import Resolver, RetrySchedule
from gateway.http.app import build_app
from gateway.http.context import ApiContext
from gateway.http.webhook_client import AiohttpWebhookSender, system_resolver
from gateway.imap.poller import ImapPoller
from gateway.imap.wiring import imap_metrics, imap_ready, pollers_from_config
from gateway.logs import setup_logging
from gateway.mailauth import authserv_id, build_verifier
from gateway.sdnotify import Notifier
from gateway.services.bounces import BounceService
from gateway.services.contacts import ContactService
from gateway.services.conversations import ConversationService
from gateway.services.delivery import SmsDelivery
from gateway.services.email_send import EmailSender
from gateway.services.events import EventHub
from gateway.services.inbound import InboundSettings, InboundSmsService
from gateway.services.inbound_email import InboundEmailService, InboundEmailSettings
from gateway.services.jobrunner import JobRunner
from gateway.services.maintenance import Maintenance, Retention
from gateway.services.outbound import (
    EMAIL_JOB,
    SMS_JOB,
    EmailSettings,
    MessageQueries,
    OutboundService,
    SmsSettings,
)
from gateway.services.sms_submit import SmsSubmitter
from gateway.services.tenants import TenantService
from gateway.services.webhooks import WebhookDispatcher, WebhookSettings, check_webhook_url
from gateway.smpp.listener import SmppListener, server_ssl_context
from gateway.smpp.pool import ConnectorPool
from gateway.smpp.session import SmppSession
from gateway.smpp.types import DeliverSm, to_inbound
from gateway.smtp.addresses import check_deliverability
from gateway.smtp.dkim import load_signer
from gateway.smtp.errors import DkimKeyError, SmtpTlsError
from gateway.smtp.handler import InboundHandler
from gateway.smtp.relay import RelaySettings, SmtpRelay
from gateway.smtp.server import SmtpLimits, SmtpListener
from gateway.storage import senders
from gateway.storage import webhooks as webhooks_repo
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.db import Database
from gateway.storage.jobs import JobQueue, RetryPolicy
from gateway.storage.migrate import current_revision, head_revision

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do (exit code 1)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


#: The restart-only keys: a SIGHUP that changes them is logged, and the old value stays in force.
RESTART_ONLY = (
    "database",
    "http.host",
    "http.port",
    "smtp",
    "relay",
    "dkim",
    "smpp",
    "imap",
    "storage.data_dir",
    "webhooks",
)


@dataclass
class Runtime:
    """A running daemon. ``stop`` may be set by anyone (signals, tests) to begin the shutdown."""

    config: Config
    config_path: str | None
    environ: Mapping[str, str]
    notifier: Notifier = field(default_factory=Notifier)
    clock: Callable[[], datetime] = utc_now
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int | None = None
    db: Database | None = None
    api_context: ApiContext | None = None
    job_handlers: dict[str, Callable[..., Awaitable[None]]] = field(default_factory=dict)
    smpp_pool: ConnectorPool | None = None
    #: DNS for webhook URLs (tests inject one); None: getaddrinfo.
    resolver: Resolver | None = None
    webhooks: WebhookDispatcher | None = None
    smtp_port: int | None = None
    email_relay: SmtpRelay | None = None
    #: What inbound email (SMTP and IMAP) is handed to: _start_email builds the inbound-email
    #: service (issue 6) unless a test injected one. None: email is off (no IMAP pollers).
    inbound_mail: InboundMailSink | None = None
    imap_pollers: list[ImapPoller] = field(default_factory=list)
    smpp_listeners: list[SmppListener] = field(default_factory=list)
    _reload: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start(stack)
                self.notifier.ready()
                self.notifier.status("serving")
                self.started.set()
                log.info("gateway started", extra={"version": __version__, "http_port": self.http_port})
                await self._serve()
                log.info("shutting down", extra={"timeout_s": self.config.daemon.shutdown_timeout_seconds})
                self.notifier.stopping()
            log.info("gateway stopped")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        watchdog = self.notifier.watchdog_interval()
        while not self.stop.is_set():
            waiters = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self._reload.wait())]
            try:
                await asyncio.wait(waiters, timeout=watchdog, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if watchdog:
                # The event loop got here, so it is not stuck; systemd restarts us if this stops.
                self.notifier.watchdog()
            if self._reload.is_set():
                self._reload.clear()
                await self.reload()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        # Start-up, before any traffic: a blocking mkdir is harmless here.
        Path(cfg.storage.data_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        db = await Database.open(
            cfg.database.url,
            pool_size=cfg.database.pool_size,
            busy_timeout_ms=cfg.database.busy_timeout_ms,
            pg_schema=cfg.database.schema or None,
        )
        stack.push_async_callback(db.close)
        self.db = db
        await self._check_schema()
        added, retired = await db.write(lambda conn: senders.sync_pool(conn, cfg.sms.pool, self.clock()))
        log.info(
            "sender pool synchronised", extra={"pool": len(cfg.sms.pool), "added": added, "retired": retired}
        )

        queue = JobQueue(
            db,
            clock=self.clock,
            policy=RetryPolicy(
                base_seconds=cfg.queue.retry_base_seconds,
                max_seconds=cfg.queue.retry_max_seconds,
                max_attempts=cfg.queue.max_attempts,
            ),
            lease_seconds=cfg.queue.lease_seconds,
        )
        runner = JobRunner(
            queue,
            {},
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
            batch_size=cfg.queue.batch_size,
            concurrency=cfg.queue.batch_size,
            poll_interval=cfg.queue.poll_interval_seconds,
        )
        ctx = ApiContext(
            db=db,
            tenants=TenantService(
                db,
                self.clock,
                mail_domain=cfg.smtp.mail_domain,
                default_quota_bytes=cfg.storage.attachments_quota_bytes_default,
            ),
            contacts=ContactService(db, self.clock, default_region=cfg.sms.default_region),
            admin_token=cfg.http.admin_token,
            outbound=OutboundService(
                db,
                self.clock,
                SmsSettings(
                    allowed_regions=cfg.sms.allowed_regions,
                    default_region=cfg.sms.default_region,
                    max_parts=cfg.sms.max_parts,
                    reply_window=timedelta(days=cfg.sms.reply_window_days),
                    max_attempts=cfg.queue.max_attempts,
                    pool=cfg.sms.pool,
                ),
                on_enqueued=runner.wake,
                email=self._email_settings(),
            ),
            messages=MessageQueries(db, self.clock),
        )
        self.api_context = ctx
        self._metrics(ctx, queue)
        # Stopped in reverse order: HTTP stops accepting first, then jobs finish, then SMPP unbinds.
        await self._start_smpp(stack, ctx)
        await self._start_email(stack, ctx)
        await self._start_imap(stack, ctx)
        await self._start_jobs(stack, ctx, runner)
        self._start_maintenance(stack, ctx, queue)
        await self._start_webhooks(stack, ctx)
        await self._start_http(stack, ctx)

    async def _start_smpp(self, stack: contextlib.AsyncExitStack, ctx: ApiContext) -> None:
        """One session per [[smpp.connectors]]; the sms.submit job handler sends through them."""
        cfg = self.config
        if not cfg.smpp.connectors:
            log.warning("no [[smpp.connectors]] configured: SMS messages stay queued until one is")
            if not cfg.smpp.listeners:  # carriers binding to us still bring MO and receipts
                return
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
            self.clock,
            InboundSettings(
                reply_window=timedelta(days=cfg.sms.reply_window_days),
                concat_timeout=timedelta(minutes=cfg.sms.concat_timeout_minutes),
                duplicate_window=timedelta(minutes=cfg.sms.mo_duplicate_window_minutes),
                default_region=cfg.sms.default_region,
            ),
        )
        delivery = SmsDelivery(ctx.db, self.clock, id_key=id_key, inbound=inbound)
        delivery_ref.append(delivery)
        submitter = SmsSubmitter(
            ctx.db,
            pool,
            self.clock,
            # Bounded by the lease: a job must not outlive its claim while it waits for a bind.
            submit_timeout=max(1.0, cfg.queue.lease_seconds / 2),
            resubmit_unknown=cfg.sms.resubmit_unknown,
            id_key=id_key,
        )
        self.job_handlers[SMS_JOB] = submitter.handle
        self.smpp_pool = pool
        # Sessions stop sending at shutdown, wait briefly for responses, unbind.
        task = self._background(stack, "smpp-pool", pool.run)
        # Registered after the pool, so it runs before the pool stops: a batch whose parts are out
        # records their outcomes before the binds go and the database closes (a batch cut off here
        # would leave parts "pending" that the SMSC has, and a restart would send them again).
        stack.push_async_callback(submitter.drain, self.config.daemon.shutdown_timeout_seconds)

        async def ready() -> tuple[bool, dict[str, Any]]:
            binds = pool.snapshot()
            up = not cfg.smpp.connectors or (not task.done() and any(b["state"] == "bound" for b in binds))
            return up, {"binds": binds}

        ctx.ready_checks["smpp"] = ready
        self._smpp_metrics(ctx, pool, delivery)

        async def final_marks() -> None:
            # Runs after the pool stopped (the stack unwinds in reverse): the last MOs' answered
            # marks. Lost marks only make an identical message within the window count as a resend.
            try:
                await inbound.flush_answered()
            except Exception:
                log.exception("inbound sms: answered marks not written at shutdown")

        stack.push_async_callback(final_marks)

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

        self._background(stack, "sms-inbound-housekeeping", housekeeping)
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

            await self._start_smpp_listeners(stack, ctx, pool, listener_deliver)

    async def _start_smpp_listeners(
        self,
        stack: contextlib.AsyncExitStack,
        ctx: ApiContext,
        pool: ConnectorPool,
        on_deliver: Callable[[str, DeliverSm], Awaitable[None]],
    ) -> None:
        """Issue 9: [[smpp.listeners]], where carriers outbind or bind to us (gateway/smpp/listener.py).
        Registered after the pool, so they unbind before it stops."""
        cfg = self.config
        connectors = {c.name: c for c in cfg.smpp.connectors}
        listeners: list[SmppListener] = []
        for lc in cfg.smpp.listeners:
            try:
                context = server_ssl_context(lc.tls_cert_file, lc.tls_key_file) if lc.tls_cert_file else None
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
            self._background(stack, f"smpp-listener-{lc.name}", run)
            listeners.append(listener)
        self.smpp_listeners = listeners

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

    async def _start_imap(self, stack: contextlib.AsyncExitStack, ctx: ApiContext) -> None:
        """Issue 6: a poller per [[imap.pollers]] (gateway/imap), handing mail to ``inbound_mail``."""
        cfg = self.config
        if not cfg.imap.pollers:
            return
        sink = self.inbound_mail
        if sink is None:  # _start_email builds it when email is on
            raise StartupError("smtp.message_id_secret must be set for [[imap.pollers]] (email is off)")
        tenants = ctx.tenants

        async def tenant_address(tenant_id: str) -> str:
            return tenants.mailbox_address((await tenants.get(tenant_id)).mailbox_prefix)

        try:
            pollers = pollers_from_config(cfg, sink, tenant_address=tenant_address, clock=self.clock)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"imap: cannot load a poller's ca_file: {exc}") from None
        tasks = [self._background(stack, f"imap-{p.settings.name}", p.run) for p in pollers]
        self.imap_pollers = pollers
        ctx.ready_checks["imap"] = imap_ready(pollers, lambda: not any(t.done() for t in tasks))
        ctx.metrics_refreshers.append(imap_metrics(ctx.registry, pollers))

    def _email_settings(self) -> EmailSettings | None:
        """What accepting email needs; None (the email channel refused) without a Message-ID key."""
        cfg = self.config
        if not cfg.smtp.message_id_secret:
            return None
        return EmailSettings(
            mail_domain=cfg.smtp.mail_domain,
            message_id_key=cfg.smtp.message_id_secret.encode(),
            max_attempts=cfg.queue.max_attempts,
            deliverability=check_deliverability if cfg.smtp.check_deliverability else None,
        )

    async def _start_email(self, stack: contextlib.AsyncExitStack, ctx: ApiContext) -> None:
        """The relay (the email.send job handler sends through it) and the SMTP listener (bounces)."""
        cfg = self.config
        if not cfg.smtp.message_id_secret:
            if cfg.relay.host or cfg.smtp.enabled:
                raise StartupError("smtp.message_id_secret must be set for outbound email and bounces")
            log.warning("email is off: [smtp] message_id_secret is empty (the email channel is refused)")
            return
        key = cfg.smtp.message_id_secret.encode()
        try:
            signer = load_signer(
                domain=cfg.smtp.mail_domain,
                selector=cfg.dkim.selector,
                private_key_file=cfg.dkim.private_key_file,
                ed25519_selector=cfg.dkim.ed25519_selector,
                ed25519_private_key_file=cfg.dkim.ed25519_private_key_file,
            )
        except DkimKeyError as exc:
            raise StartupError(str(exc)) from None
        if signer is None:
            log.warning("[dkim] private_key_file is empty: outbound email goes out unsigned")
        relay: SmtpRelay | None = None
        if cfg.relay.host:
            r = cfg.relay
            relay = SmtpRelay(
                RelaySettings(
                    host=r.host,
                    port=r.port,
                    username=r.username,
                    password=r.password,
                    starttls=r.starttls,
                    implicit_tls=r.implicit_tls,
                    connections=r.connections,
                    timeout=r.timeout_seconds,
                    ca_file=r.ca_file,
                    helo_name=cfg.smtp.mail_domain,
                    max_messages_per_connection=r.max_messages_per_connection,
                    idle_seconds=r.idle_seconds,
                ),
                signer,
            )
            sender = EmailSender(ctx.db, relay, self.clock, verp_key=key, mail_domain=cfg.smtp.mail_domain)
            self.job_handlers[EMAIL_JOB] = sender.handle
            self.email_relay = relay
            stack.push_async_callback(relay.close)  # after the job runner stopped (reverse order)

            async def relay_ready() -> tuple[bool, dict[str, Any]]:
                snap = relay.snapshot()
                return snap["state"] == "ok", snap

            ctx.ready_checks["relay"] = relay_ready
        else:
            log.warning("no [relay] host configured: email messages stay queued until one is")
        bounces = BounceService(ctx.db, self.clock)
        if self.inbound_mail is None:  # tests may inject their own sink
            data_dir = Path(cfg.storage.data_dir)
            self.inbound_mail = InboundEmailService(
                ctx.db,
                self.clock,
                InboundEmailSettings(
                    mail_domain=cfg.smtp.mail_domain,
                    message_id_key=key,
                    reply_window=timedelta(days=cfg.sms.reply_window_days),
                    authserv_id=authserv_id(cfg),
                    data_dir=data_dir,
                ),
                verifier=build_verifier(cfg),
                files=AttachmentFiles(data_dir / "attachments"),
            )
        handler: InboundHandler | None = None
        if cfg.smtp.enabled:
            inbound = self.inbound_mail if isinstance(self.inbound_mail, InboundEmailService) else None
            handler = InboundHandler(
                mail_domain=cfg.smtp.mail_domain, verp_key=key, bounces=bounces, inbound=inbound
            )
            listener = SmtpListener(
                handler,
                host=cfg.smtp.host,
                port=cfg.smtp.port,
                hostname=cfg.smtp.mail_domain,
                max_message_bytes=cfg.smtp.max_message_bytes,
                limits=SmtpLimits(
                    max_recipients=cfg.smtp.max_recipients,
                    max_connections=cfg.smtp.max_connections,
                    max_connections_per_ip=cfg.smtp.max_connections_per_ip,
                    connection_rate_per_ip=cfg.smtp.connection_rate_per_ip,
                    exempt_networks=cfg.smtp.limit_exempt_networks,
                    idle_timeout=cfg.smtp.idle_timeout_seconds,
                    max_session_seconds=cfg.smtp.max_session_seconds,
                    max_commands=cfg.smtp.max_commands,
                    max_errors=cfg.smtp.max_errors,
                ),
                tls_cert=cfg.smtp.tls_cert,
                tls_key=cfg.smtp.tls_key,
            )
            try:
                self.smtp_port = await listener.start()
            except SmtpTlsError as exc:
                raise StartupError(str(exc)) from None
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on smtp {cfg.smtp.host}:{cfg.smtp.port}: {exc.strerror}"
                ) from None
            stack.push_async_callback(listener.stop, cfg.daemon.shutdown_timeout_seconds)
            ctx.metrics_refreshers.append(listener.metrics(ctx.registry))

            async def smtp_ready() -> tuple[bool, dict[str, Any]]:
                return listener.serving, {"port": listener.port, "sessions": len(listener.sessions)}

            ctx.ready_checks["smtp"] = smtp_ready
        self._email_metrics(ctx, relay, handler, bounces)

    def _email_metrics(
        self,
        ctx: ApiContext,
        relay: SmtpRelay | None,
        handler: InboundHandler | None,
        bounces: BounceService,
    ) -> None:
        relayed = Gauge(
            "gateway_email_relay", "Relay outcomes since start", ["result"], registry=ctx.registry
        )
        conns = Gauge(
            "gateway_email_relay_connections", "Relay connections", ["state"], registry=ctx.registry
        )
        up = Gauge("gateway_email_relay_up", "0 while the relay cannot be reached", registry=ctx.registry)
        inbound = Gauge(
            "gateway_smtp_inbound", "SMTP listener outcomes since start", ["outcome"], registry=ctx.registry
        )
        bounced = Gauge(
            "gateway_email_bounces", "Mail to bounce addresses by outcome", ["outcome"], registry=ctx.registry
        )

        async def refresh() -> None:
            if relay is not None:
                relayed.labels("sent").set(relay.sent)
                relayed.labels("failed").set(relay.failed)
                relayed.labels("deferred").set(relay.deferred)
                snap = relay.snapshot()
                conns.labels("open").set(snap["open_connections"])
                conns.labels("idle").set(snap["idle_connections"])
                up.set(0 if relay.failing else 1)
            if handler is not None:
                for outcome, n in handler.outcomes.items():
                    inbound.labels(outcome).set(n)
            for outcome, n in bounces.outcomes.items():
                bounced.labels(outcome).set(n)

        ctx.metrics_refreshers.append(refresh)

    def _smpp_metrics(self, ctx: ApiContext, pool: ConnectorPool, delivery: SmsDelivery) -> None:
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

    async def _check_schema(self) -> None:
        cfg = self.config.database
        current = await current_revision(cfg.url, pg_schema=cfg.schema or None)
        head = head_revision()
        if current != head:
            raise StartupError(
                f"database schema is at {current or 'nothing'}, this version needs {head}: "
                "run `gateway migrate`"
            )

    def _metrics(self, ctx: ApiContext, queue: JobQueue) -> None:
        info = Gauge("gateway_info", "Gateway version", ["version"], registry=ctx.registry)
        info.labels(__version__).set(1)
        jobs = Gauge("gateway_jobs", "Jobs in the outbox by status", ["status"], registry=ctx.registry)
        commits = Gauge(
            "gateway_db_group_commits",
            "Transactions committed by the SQLite group writer",
            registry=ctx.registry,
        )

        async def refresh() -> None:
            counts = await queue.counts()
            for status in ("queued", "running", "done", "failed", "cancelled"):
                jobs.labels(status).set(counts.get(status, 0))
            commits.set(ctx.db.batches)

        ctx.metrics_refreshers.append(refresh)

    def _background(
        self,
        stack: contextlib.AsyncExitStack,
        name: str,
        run: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        *,
        on_deadline: Callable[[], None] | None = None,
    ) -> asyncio.Task[None]:
        """Start ``run(stop)`` as a task; at shutdown set ``stop``, give it until the deadline to
        finish (``[daemon] shutdown_timeout_seconds``), then cancel it. Registered on ``stack``, so it
        is stopped before whatever was started earlier."""
        stop = asyncio.Event()
        task = asyncio.create_task(run(stop), name=name)

        async def shutdown() -> None:
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.daemon.shutdown_timeout_seconds)
            except TimeoutError:
                if on_deadline is not None:
                    on_deadline()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        stack.push_async_callback(shutdown)
        return task

    def _start_maintenance(self, stack: contextlib.AsyncExitStack, ctx: ApiContext, queue: JobQueue) -> None:
        cfg = self.config.queue
        maintenance = Maintenance(
            ctx.db,
            queue,
            self.clock,
            Retention(
                done_jobs=timedelta(days=cfg.keep_done_days),
                idempotency_keys=timedelta(days=cfg.keep_idempotency_days),
                # Receipts whose part never appeared: an SMSC's stray, or for a message we never sent.
                parked_receipts=timedelta(days=7),
            ),
        )

        async def loop(stop: asyncio.Event) -> None:
            while not stop.is_set():
                try:
                    await maintenance.run_once()
                except Exception:  # a database hiccup: log it, try again next round
                    log.exception("housekeeping failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), cfg.maintenance_seconds)

        self._background(stack, "maintenance", loop)
        purged = Gauge(
            "gateway_purged_rows", "Rows deleted by housekeeping since start", ["kind"], registry=ctx.registry
        )

        async def refresh() -> None:
            for kind, n in maintenance.purged.items():
                purged.labels(kind).set(n)

        ctx.metrics_refreshers.append(refresh)

    async def _start_jobs(self, stack: contextlib.AsyncExitStack, ctx: ApiContext, runner: JobRunner) -> None:
        for kind, handler in self.job_handlers.items():
            runner.register(kind, handler)

        def late() -> None:
            log.warning(
                "jobs still running at the shutdown deadline; cancelled, they will be re-claimed",
                extra={"in_flight": runner.in_flight},
            )

        task = self._background(stack, "jobrunner", runner.run, on_deadline=late)

        async def ready() -> tuple[bool, dict[str, Any]]:
            return not task.done(), {"in_flight": runner.in_flight, "kinds": sorted(self.job_handlers)}

        ctx.ready_checks["jobs"] = ready

    async def _start_webhooks(self, stack: contextlib.AsyncExitStack, ctx: ApiContext) -> None:
        """Issue 7: the event feed's wake-ups, the conversation reads, webhook URL checks (SSRF) and
        the webhook dispatcher. Started before HTTP, so it stops after HTTP stopped accepting."""
        cfg = self.config.webhooks
        hub = EventHub()
        ctx.db.on_commit = hub.notify  # commits that wrote events wake long-polls and the dispatcher
        ctx.conversations = ConversationService(
            ctx.db,
            self.clock,
            hub,
            data_dir=Path(self.config.storage.data_dir),
            poll_interval=cfg.poll_interval_seconds,
        )
        resolver = self.resolver or system_resolver
        ctx.tenants.webhook_url_check = functools.partial(
            check_webhook_url, resolver=resolver, allow_private=cfg.allow_private
        )
        sender = await stack.enter_async_context(
            AiohttpWebhookSender(resolver, allow_private=cfg.allow_private, max_connections=cfg.concurrency)
        )
        dispatcher = WebhookDispatcher(
            ctx.db,
            self.clock,
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
            owner=f"{socket.gethostname()}:{os.getpid()}:{id(self):x}",
        )
        hub.listen(dispatcher.wake)
        self.webhooks = dispatcher
        task = self._background(stack, "webhooks", dispatcher.run)

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

    async def _start_http(self, stack: contextlib.AsyncExitStack, ctx: ApiContext) -> None:
        cfg = self.config.http
        app = build_app(ctx, max_body_bytes=cfg.max_body_bytes)
        # shutdown_timeout: how long in-flight requests may finish after we stop accepting.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.config.daemon.shutdown_timeout_seconds,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on http {cfg.host}:{cfg.port}: {exc.strerror}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.port
        log.info("http listening", extra={"host": cfg.host, "port": self.http_port})

    async def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can change live, keep the rest, never crash."""
        self.notifier.reloading()
        try:
            new = config_mod.load(self.config_path, self.environ)
        except ConfigError as exc:
            log.error(
                "reload rejected: config invalid; keeping the running config", extra={"error": str(exc)}
            )
            self.notifier.ready()
            return
        old = self.config
        old_d, new_d = config_mod.to_masked_dict(old), config_mod.to_masked_dict(new)
        ignored = [k for k in RESTART_ONLY if _get(old_d, k) != _get(new_d, k)]
        if ignored:
            log.warning("reload: these settings need a restart and were not applied", extra={"keys": ignored})
        if new.http.host == old.http.host and (problem := config_mod.admin_token_problem(new)):
            log.error("reload rejected: http.admin_token", extra={"error": problem})
            self.notifier.ready()
            return
        setup_logging(new.daemon.log_level, new.daemon.log_format)
        if self.api_context is not None:
            self.api_context.admin_token = new.http.admin_token
        if self.db is not None and new.sms.pool != old.sms.pool:
            added, retired = await self.db.write(
                lambda conn: senders.sync_pool(conn, new.sms.pool, self.clock())
            )
            if self.api_context is not None:
                outbound = self.api_context.outbound
                outbound.settings = dataclasses.replace(outbound.settings, pool=new.sms.pool)
            log.info("sender pool synchronised", extra={"added": added, "retired": retired})
        self.config = _merge_live(old, new)
        log.info("config reloaded")
        self.notifier.ready()


def _get(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def _merge_live(old: Config, new: Config) -> Config:
    """The new config, but with the restart-only sections kept as they are running."""

    http = dataclasses.replace(new.http, host=old.http.host, port=old.http.port)
    storage = dataclasses.replace(new.storage, data_dir=old.storage.data_dir)
    return dataclasses.replace(
        new,
        database=old.database,
        http=http,
        smtp=old.smtp,
        relay=old.relay,
        dkim=old.dkim,
        smpp=old.smpp,
        imap=old.imap,
        storage=storage,
        webhooks=old.webhooks,
    )
