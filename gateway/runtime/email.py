"""Email wiring: the outbound relay with DKIM (the ``email.send`` job handler sends through it), the
inbound-email service (issue 6) and the SMTP listener (bounces and inbound mail)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from gateway.config import Config
from gateway.domain.inbound_mail import InboundMailSink
from gateway.http.context import ApiContext
from gateway.mailauth import authserv_id, build_verifier
from gateway.runtime.base import JobHandler, StartupError, Wiring, log
from gateway.services.bounces import BounceService
from gateway.services.email_send import EmailSender
from gateway.services.inbound_email import InboundEmailService, InboundEmailSettings
from gateway.services.outbound import EmailSettings
from gateway.smtp.addresses import check_deliverability
from gateway.smtp.dkim import load_signer
from gateway.smtp.errors import DkimKeyError, SmtpTlsError
from gateway.smtp.handler import InboundHandler
from gateway.smtp.relay import RelaySettings, SmtpRelay
from gateway.smtp.server import SmtpLimits, SmtpListener
from gateway.storage.attachment_files import AttachmentFiles

__all__ = ["EmailStarted", "email_settings", "start_email"]


@dataclass
class EmailStarted:
    """What the runtime keeps. ``relay``/``send``: None without a [relay] host; ``smtp_port``:
    None with the SMTP listener off."""

    inbound_mail: InboundMailSink
    relay: SmtpRelay | None = None
    send: JobHandler | None = None
    smtp_port: int | None = None


def email_settings(cfg: Config) -> EmailSettings | None:
    """What accepting email needs; None (the email channel refused) without a Message-ID key."""
    if not cfg.smtp.message_id_secret:
        return None
    return EmailSettings(
        mail_domain=cfg.smtp.mail_domain,
        message_id_key=cfg.smtp.message_id_secret.encode(),
        max_attempts=cfg.queue.max_attempts,
        deliverability=check_deliverability if cfg.smtp.check_deliverability else None,
    )


async def start_email(w: Wiring, inbound_mail: InboundMailSink | None) -> EmailStarted | None:
    """The relay (the email.send job handler sends through it) and the SMTP listener (bounces).
    ``inbound_mail``: a sink a test injected; None: the inbound-email service is built here.
    Returns None when email is off (no ``[smtp] message_id_secret``)."""
    cfg = w.config
    ctx = w.ctx
    if not cfg.smtp.message_id_secret:
        if cfg.relay.host or cfg.smtp.enabled:
            raise StartupError("smtp.message_id_secret must be set for outbound email and bounces")
        log.warning("email is off: [smtp] message_id_secret is empty (the email channel is refused)")
        return None
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
    send: JobHandler | None = None
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
        sender = EmailSender(ctx.db, relay, w.clock, verp_key=key, mail_domain=cfg.smtp.mail_domain)
        send = sender.handle
        w.stack.push_async_callback(relay.close)  # after the job runner stopped (reverse order)
        # Before the relay and the database close: record what the relay already took.
        w.stack.push_async_callback(sender.drain, cfg.daemon.shutdown_timeout_seconds)

        async def relay_ready() -> tuple[bool, dict[str, Any]]:
            snap = relay.snapshot()
            return snap["state"] == "ok", snap

        ctx.ready_checks["relay"] = relay_ready
    else:
        log.warning("no [relay] host configured: email messages stay queued until one is")
    bounces = BounceService(ctx.db, w.clock)
    if inbound_mail is None:  # tests may inject their own sink
        data_dir = Path(cfg.storage.data_dir)
        inbound_mail = InboundEmailService(
            ctx.db,
            w.clock,
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
    started = EmailStarted(inbound_mail=inbound_mail, relay=relay, send=send)
    handler: InboundHandler | None = None
    if cfg.smtp.enabled:
        inbound = inbound_mail if isinstance(inbound_mail, InboundEmailService) else None
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
            started.smtp_port = await listener.start()
        except SmtpTlsError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(
                f"cannot listen on smtp {cfg.smtp.host}:{cfg.smtp.port}: {exc.strerror}"
            ) from None
        w.stack.push_async_callback(listener.stop, cfg.daemon.shutdown_timeout_seconds)
        ctx.metrics_refreshers.append(listener.metrics(ctx.registry))

        async def smtp_ready() -> tuple[bool, dict[str, Any]]:
            return listener.serving, {"port": listener.port, "sessions": len(listener.sessions)}

        ctx.ready_checks["smtp"] = smtp_ready
    _email_metrics(ctx, relay, handler, bounces)
    return started


def _email_metrics(
    ctx: ApiContext,
    relay: SmtpRelay | None,
    handler: InboundHandler | None,
    bounces: BounceService,
) -> None:
    relayed = Gauge("gateway_email_relay", "Relay outcomes since start", ["result"], registry=ctx.registry)
    conns = Gauge("gateway_email_relay_connections", "Relay connections", ["state"], registry=ctx.registry)
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
