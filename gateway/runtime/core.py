"""The daemon itself: ``Runtime`` builds the database and the services, starts each component
(its wiring lives in the sibling modules), serves until a signal, reloads on SIGHUP, and drains."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from gateway import __version__
from gateway import config as config_mod
from gateway.config import Config, ConfigError
from gateway.domain.inbound_mail import InboundMailSink
from gateway.domain.webhooks import Resolver
from gateway.http.context import ApiContext
from gateway.imap.poller import ImapPoller
from gateway.logs import setup_logging
from gateway.runtime.base import BackgroundRun, JobHandler, StartupError, Wiring, log, utc_now
from gateway.runtime.email import email_settings, start_email
from gateway.runtime.http import start_http
from gateway.runtime.imap import start_imap
from gateway.runtime.jobs import start_jobs
from gateway.runtime.maintenance import start_maintenance
from gateway.runtime.smpp import start_smpp
from gateway.runtime.webhooks import start_webhooks
from gateway.sdnotify import Notifier
from gateway.services.contacts import ContactService
from gateway.services.jobrunner import JobRunner
from gateway.services.outbound import (
    EMAIL_JOB,
    SMS_JOB,
    MessageQueries,
    OutboundService,
    SmsSettings,
)
from gateway.services.tenants import TenantService
from gateway.services.webhooks import WebhookDispatcher
from gateway.smpp.listener import SmppListener
from gateway.smpp.pool import ConnectorPool
from gateway.smtp.relay import SmtpRelay
from gateway.storage import senders
from gateway.storage.db import Database
from gateway.storage.jobs import JobQueue, RetryPolicy
from gateway.storage.migrate import current_revision, head_revision

__all__ = ["RESTART_ONLY", "Runtime"]

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
    job_handlers: dict[str, JobHandler] = field(default_factory=dict)
    smpp_pool: ConnectorPool | None = None
    #: DNS for webhook URLs (tests inject one); None: getaddrinfo.
    resolver: Resolver | None = None
    webhooks: WebhookDispatcher | None = None
    smtp_port: int | None = None
    email_relay: SmtpRelay | None = None
    #: What inbound email (SMTP and IMAP) is handed to: start_email builds the inbound-email
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
                email=email_settings(cfg),
            ),
            messages=MessageQueries(db, self.clock),
        )
        self.api_context = ctx
        self._metrics(ctx, queue)

        def background(
            name: str,
            run: BackgroundRun,
            *,
            on_deadline: Callable[[], None] | None = None,
        ) -> asyncio.Task[None]:
            return self._background(stack, name, run, on_deadline=on_deadline)

        w = Wiring(config=cfg, clock=self.clock, stack=stack, ctx=ctx, background=background)
        # Stopped in reverse order: HTTP stops accepting first, then jobs finish, then SMPP unbinds.
        smpp = await start_smpp(w)
        if smpp is not None:
            self.job_handlers[SMS_JOB] = smpp.submit
            self.smpp_pool = smpp.pool
            self.smpp_listeners = smpp.listeners
        email = await start_email(w, self.inbound_mail)
        if email is not None:
            if email.send is not None:
                self.job_handlers[EMAIL_JOB] = email.send
            self.email_relay = email.relay
            self.inbound_mail = email.inbound_mail
            self.smtp_port = email.smtp_port
        self.imap_pollers = await start_imap(w, self.inbound_mail)
        await start_jobs(w, runner, self.job_handlers)
        start_maintenance(w, queue)
        self.webhooks = await start_webhooks(
            w, resolver=self.resolver, owner=f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        )
        self.http_port = await start_http(w)

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
        run: BackgroundRun,
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
