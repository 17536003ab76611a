"""The config schema: frozen dataclasses whose fields (with ``_opt`` rules) are the keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config._rules import (
    _PORT,
    _REMOTE_PORT,
    EXAMPLE_ADMIN_TOKEN,
    MIN_ADMIN_TOKEN_LENGTH,
    _check_db_url,
    _check_domain,
    _check_host,
    _check_name,
    _check_networks,
    _check_optional_domain,
    _check_optional_host,
    _check_pool,
    _check_regions,
    _check_schema,
    _check_secret,
    _Invalid,
    _lower,
    _norm_region,
    _opt,
    _upper,
)

# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = _opt("sqlite+aiosqlite:///var/gateway.sqlite3", normalize=_check_db_url)
    pool_size: int = _opt(10, ge=1, le=200)
    busy_timeout_ms: int = _opt(5000, ge=0)
    # PostgreSQL only: the schema holding the tables ("" = the server's search_path, usually public).
    schema: str = _opt("", normalize=_check_schema)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = _opt("127.0.0.1", nonempty=True, normalize=_check_host)
    port: int = _opt(8080, **_PORT)
    admin_token: str = _opt("", secret=True)
    max_body_bytes: int = _opt(1048576, ge=1)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    enabled: bool = _opt(False)
    host: str = _opt("127.0.0.1", nonempty=True, normalize=_check_host)
    port: int = _opt(2525, **_PORT)
    mail_domain: str = _opt("mail.example.com", nonempty=True, normalize=_check_domain)
    max_message_bytes: int = _opt(26214400, ge=1)
    # HMAC key of our Message-IDs and VERP bounce addresses (gateway.domain.email_ids). Required
    # (>= 16 characters) for outbound email; keep it stable: changing it orphans replies to old mail.
    message_id_secret: str = _opt("", secret=True, normalize=_check_secret)
    # Also look the recipient's domain up in DNS (MX/A) when a message is accepted.
    check_deliverability: bool = _opt(False)
    # STARTTLS (RFC 3207) on the inbound listener: PEM certificate chain and key, both or neither.
    tls_cert: str = _opt("")
    tls_key: str = _opt("")
    # Inbound session limits (gateway.smtp.server.SmtpLimits); 0 turns a count or rate off.
    max_recipients: int = _opt(100, ge=1)  # per transaction; RFC 5321 §4.5.3.1.8 asks for >= 100
    max_connections: int = _opt(100, ge=0)
    max_connections_per_ip: int = _opt(20, ge=0)
    connection_rate_per_ip: int = _opt(60, ge=0)  # new connections per minute (IPv6: per /64)
    limit_exempt_networks: tuple[str, ...] = _opt(("127.0.0.0/8", "::1/128"), normalize=_check_networks)
    idle_timeout_seconds: float = _opt(300.0, gt=0)
    max_session_seconds: float = _opt(1800.0, ge=0)
    max_commands: int = _opt(10000, ge=0)
    max_errors: int = _opt(20, ge=0)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str = _opt("", normalize=_check_optional_host)  # "" = no smart host configured
    port: int = _opt(25, **_REMOTE_PORT)
    username: str = _opt("")
    password: str = _opt("", secret=True)
    starttls: bool = _opt(True)
    implicit_tls: bool = _opt(False)  # TLS from the first byte (RFC 8314, port 465); wins over starttls
    ca_file: str = _opt("")  # extra CA bundle to verify the relay's certificate ("" = system CAs)
    connections: int = _opt(4, ge=1, le=64)
    timeout_seconds: float = _opt(30.0, gt=0)
    max_messages_per_connection: int = _opt(1000, ge=1)
    idle_seconds: float = _opt(60.0, gt=0)


@dataclass(frozen=True, slots=True)
class DkimConfig:
    selector: str = _opt("gateway", nonempty=True, normalize=_check_domain)
    private_key_file: str = _opt("")  # "" = do not sign
    # A second, ed25519-sha256 signature (RFC 8463) under its own selector; needs PyNaCl.
    ed25519_selector: str = _opt("", normalize=_check_optional_domain)
    ed25519_private_key_file: str = _opt("")


@dataclass(frozen=True, slots=True)
class SmppConnectorConfig:
    """An outbound bind to an SMSC. Length limits are SMPP 3.4 §4.1.1 C-Octet sizes minus the NUL."""

    name: str = _opt("", required=True, normalize=_check_name)
    host: str = _opt("", required=True, normalize=_check_host)
    port: int = _opt(2775, **_REMOTE_PORT)
    system_id: str = _opt("", required=True, max_len=15)
    password: str = _opt("", secret=True, max_len=8)
    system_type: str = _opt("", max_len=12)
    bind: str = _opt("transceiver", choices=("transceiver", "transmitter_receiver"))
    tps: float = _opt(50.0, ge=0)  # parts per second; 0 = no limit
    window: int = _opt(10, ge=1, le=1000)
    weight: int = _opt(1, ge=1)
    enquire_link_seconds: float = _opt(30.0, gt=0)
    response_timeout_seconds: float = _opt(30.0, gt=0)
    # How this SMSC writes message ids in submit_sm_resp vs in receipt texts (Kannel's msg-id-type):
    # as_is | hex | decimal | hex_resp_decimal_dlr | decimal_resp_hex_dlr.
    message_id_type: str = _opt(
        "as_is", choices=("as_is", "hex", "decimal", "hex_resp_decimal_dlr", "decimal_resp_hex_dlr")
    )
    # How a long message's parts say they belong together: "udh" (a concatenation header in each
    # part, esm_class UDHI) or "sar" (SMPP 3.4 SAR TLVs, for SMSCs that want them). Never both.
    long_messages: str = _opt("udh", choices=("udh", "sar"))


@dataclass(frozen=True, slots=True)
class SmppCarrierConfig:
    """An ESME (carrier/partner) allowed to bind to one of our SMPP listeners."""

    system_id: str = _opt("", required=True, max_len=15)
    password: str = _opt("", secret=True, max_len=8)
    networks: tuple[str, ...] = _opt(("127.0.0.1/32",), normalize=_check_networks)
    connector: str = _opt("")  # "" = no pinned connector; otherwise must name one (cross-checked)
    # At most this many sessions (binds or outbinds) of this carrier at once; more: ESME_RBINDFAIL.
    max_connections: int = _opt(2, ge=1, le=100)
    # Accept its outbind (SMPP 3.4 §2.2.1): we bind back with the connector's system_id/password
    # (so connector is required), as a "receiver", or a "transceiver" that also carries our submits.
    outbind: bool = _opt(False)
    outbind_bind: str = _opt("receiver", choices=("receiver", "transceiver"))
    # submit_sm from this carrier are MO/receipts like deliver_sm (else submit_sm_resp ESME_RINVCMDID).
    accept_submit: bool = _opt(False)


@dataclass(frozen=True, slots=True)
class SmppListenerConfig:
    name: str = _opt("", required=True, normalize=_check_name)
    host: str = _opt("127.0.0.1", nonempty=True, normalize=_check_host)
    port: int = _opt(0, required=True, **_PORT)
    carriers: tuple[SmppCarrierConfig, ...] = _opt(())
    system_id: str = _opt("gateway", nonempty=True, max_len=15)  # ours, in bind_*_resp
    tls_cert_file: str = _opt("")  # PEM; with tls_key_file: TLS from the first byte ("" = plain TCP)
    tls_key_file: str = _opt("")
    bind_timeout_seconds: float = _opt(10.0, gt=0, le=300)  # connect to bound (TLS included)
    enquire_link_seconds: float = _opt(30.0, gt=0)
    response_timeout_seconds: float = _opt(30.0, gt=0)  # for our enquire_link/unbind, then reset
    # Inbound messages of one session being processed at once; the excess is refused (resent later).
    window: int = _opt(10, ge=1, le=1000)


@dataclass(frozen=True, slots=True)
class SmppConfig:
    connectors: tuple[SmppConnectorConfig, ...] = _opt(())
    listeners: tuple[SmppListenerConfig, ...] = _opt(())


@dataclass(frozen=True, slots=True)
class SmsConfig:
    pool: tuple[str, ...] = _opt((), normalize=_check_pool)  # normalized to "+<digits>"
    allowed_regions: tuple[str, ...] = _opt(("PL",), normalize=_check_regions)
    reply_window_days: int = _opt(15, ge=1, le=365)
    default_region: str = _opt("PL", normalize=_norm_region)
    # A text needing more parts is refused at the API (422 too_many_parts), never truncated.
    max_parts: int = _opt(10, ge=1, le=255)
    # Parts whose submit_sm got no response: resubmitting risks a duplicate SMS, not resubmitting
    # risks a lost one. Default: do not resubmit (see docs/decisions.md "Outcome unknown").
    resubmit_unknown: bool = _opt(False)
    # Inbound SMS (docs/decisions.md "Inbound SMS"): a concatenated MO whose parts are not all in
    # within this time is stored with what arrived and a note.
    concat_timeout_minutes: int = _opt(30, ge=1, le=1440)
    # A deliver_sm identical to one we stored but did not acknowledge (a crash before the
    # deliver_sm_resp) within this time is the SMSC's resend: stored once.
    mo_duplicate_window_minutes: int = _opt(1440, ge=1, le=10080)
    # How often incomplete concatenations and expired duplicate fingerprints are looked at.
    housekeeping_seconds: float = _opt(60.0, gt=0, le=3600)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: str = _opt("var", nonempty=True)
    attachments_quota_bytes_default: int = _opt(104857600, ge=0)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    lease_seconds: int = _opt(60, ge=1)
    batch_size: int = _opt(100, ge=1, le=10000)
    max_attempts: int = _opt(8, ge=1)
    retry_base_seconds: float = _opt(5.0, gt=0)
    retry_max_seconds: float = _opt(3600.0, gt=0)  # cross-checked: >= retry_base_seconds
    poll_interval_seconds: float = _opt(0.5, gt=0)
    # Housekeeping (gateway/services/maintenance.py): how long finished jobs and idempotency keys are
    # kept, and how often the daemon looks.
    keep_done_days: int = _opt(7, ge=1, le=3650)
    keep_idempotency_days: int = _opt(7, ge=1, le=3650)
    maintenance_seconds: float = _opt(300.0, gt=0, le=86400)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    shutdown_timeout_seconds: float = _opt(30.0, gt=0)
    log_level: str = _opt("INFO", normalize=_upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _opt("json", normalize=_lower, choices=("json", "text"))


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Event delivery to tenants' webhook_url (gateway/services/webhooks.py)."""

    # Let webhook URLs reach loopback/private/link-local addresses (SSRF guard off): tests, or a
    # gateway whose applications live on the same private network.
    allow_private: bool = _opt(False)
    timeout_seconds: float = _opt(10.0, gt=0, le=300)  # per POST, connecting included
    retry_hours: float = _opt(24.0, gt=0, le=24 * 30)  # from the event's time; then failed for good
    retry_base_seconds: float = _opt(10.0, gt=0)
    retry_max_seconds: float = _opt(3600.0, gt=0)  # cross-checked: >= retry_base_seconds
    concurrency: int = _opt(50, ge=1, le=10000)  # tenants delivered to at once (one POST each)
    poll_interval_seconds: float = _opt(1.0, gt=0, le=60)  # for events written by other processes
    lease_seconds: float = _opt(60.0, ge=1)  # a daemon owns a tenant's delivery this long, renewed


def _check_imap_mailbox(value: str) -> str:
    # RFC 3501 5.1.3: names on the wire are 7-bit (international ones in modified UTF-7).
    if not value or not all(" " <= c <= "~" for c in value):
        raise _Invalid("must be printable ASCII (write international names in IMAP modified UTF-7)")
    return value


def _check_imap_on_success(value: str) -> str:
    if value == "flag":
        return value
    if value.startswith("move:"):
        return "move:" + _check_imap_mailbox(value[5:])
    raise _Invalid('must be "flag" or "move:<folder>"')


@dataclass(frozen=True, slots=True)
class ImapPollerConfig:
    """A mailbox the gateway reads replies from (gateway/imap; docs/decisions.md "IMAP ingress")."""

    name: str = _opt("", required=True, normalize=_check_name)
    host: str = _opt("", required=True, normalize=_check_host)
    port: int = _opt(993, **_REMOTE_PORT)
    # "tls": TLS from the first byte (RFC 8314, port 993); "starttls" (RFC 3501 6.2.1, port 143,
    # refused if the server does not offer it); "none": plain text, loopback hosts only.
    tls: str = _opt("tls", choices=("tls", "starttls", "none"))
    ca_file: str = _opt("")  # extra CA bundle to verify the server's certificate ("" = system CAs)
    username: str = _opt("", required=True)
    password: str = _opt("", secret=True)
    mailbox: str = _opt("INBOX", normalize=_check_imap_mailbox)
    # A tenant id: every message goes to that tenant's current address. "" = route by recipient
    # (Delivered-To / X-Original-To, else To / Cc addresses at smtp.mail_domain).
    tenant: str = _opt("", max_len=64)
    # After the gateway committed a message: "flag" (\Seen and $GatewayProcessed) or "move:<folder>".
    on_success: str = _opt("flag", normalize=_check_imap_on_success)
    interval_seconds: float = _opt(60.0, gt=0)  # polling period when the server has no IDLE
    # IDLE is re-issued this often (RFC 2177: at most 29 minutes; NATs often forget sooner).
    idle_timeout_seconds: float = _opt(300.0, gt=0, le=1740)
    timeout_seconds: float = _opt(30.0, gt=0)  # connect, greeting, and each command
    retry_base_seconds: float = _opt(5.0, gt=0)  # backoff after errors: doubles, jittered
    retry_max_seconds: float = _opt(300.0, gt=0)  # cross-checked: >= retry_base_seconds


@dataclass(frozen=True, slots=True)
class ImapConfig:
    pollers: tuple[ImapPollerConfig, ...] = _opt(())


def _check_nameservers(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            out.append(str(ipaddress.ip_address(value.strip())))  # dnspython wants addresses
        except ValueError:
            raise _Invalid(f"{value!r} is not an IP address", f"[{i}]") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class MailAuthConfig:
    """Sender verification of inbound email (gateway/mailauth; docs/decisions.md "Sender verification")."""

    # The authserv-id of the Authentication-Results we write (RFC 8601 §2.5); "" = smtp.mail_domain.
    authserv_id: str = _opt("", normalize=_check_optional_domain)
    nameservers: tuple[str, ...] = _opt((), normalize=_check_nameservers)  # () = /etc/resolv.conf
    dns_port: int = _opt(53, **_REMOTE_PORT)
    dns_timeout_seconds: float = _opt(5.0, gt=0, le=60)  # one lookup, retries included
    timeout_seconds: float = _opt(20.0, gt=0, le=300)  # all of SPF (RFC 7208 §4.6.4), all of DKIM
    max_dkim_signatures: int = _opt(10, ge=1, le=50)  # more on one message are not looked at


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    smpp: SmppConfig = field(default_factory=SmppConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    mailauth: MailAuthConfig = field(default_factory=MailAuthConfig)
    # Which file was loaded (None = built-in defaults). Not a TOML section: the loader and
    # to_masked_dict skip fields marked "internal".
    source: Path | None = field(default=None, metadata={"internal": True})

    def admin_token_problem(self) -> str | None:
        return admin_token_problem(self)


# For env overrides addressed by name instead of index (GATEWAY_SMPP__CONNECTORS__<name>__...).
# Carriers have no name; their system_id is what identifies them.
_ENTRY_KEY = {
    SmppConnectorConfig: "name",
    SmppListenerConfig: "name",
    ImapPollerConfig: "name",
    SmppCarrierConfig: "system_id",
}


def is_loopback(host: str) -> bool:
    """True only for hosts that certainly stay on this machine (hostnames other than localhost are not)."""
    host = host.strip().strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 is loopback too, but Python 3.11 reports False for it.
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def email_problem(config: Config) -> tuple[str, str] | None:
    """(key, reason) when the email settings cannot work together, else None. Checked by ``gateway
    run`` (like the admin token), not by every load: the keys are fine one by one."""
    if (config.relay.host or config.smtp.enabled) and not config.smtp.message_id_secret:
        return (
            "smtp.message_id_secret",
            "must be set (16+ random characters) when relay.host is set or smtp.enabled is true",
        )
    if config.dkim.ed25519_private_key_file and not config.dkim.ed25519_selector:
        return "dkim.ed25519_selector", "must be set when dkim.ed25519_private_key_file is"
    if config.dkim.ed25519_private_key_file and config.dkim.ed25519_selector == config.dkim.selector:
        return "dkim.ed25519_selector", "must differ from dkim.selector (each key has its own DNS record)"
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        missing = "smtp.tls_key" if config.smtp.tls_cert else "smtp.tls_cert"
        return missing, "smtp.tls_cert and smtp.tls_key are set together (STARTTLS needs both)"
    relay = config.relay
    if relay.username and not (relay.starttls or relay.implicit_tls) and not is_loopback(relay.host):
        return "relay.username", "AUTH without TLS would send the password in clear: enable relay.starttls"
    return None


def admin_token_problem(config: Config) -> str | None:
    """Why the admin token is unacceptable for this bind address, or None if it is fine."""
    host = config.http.host
    if is_loopback(host):
        return None  # only local users can reach the API; an empty token is a dev convenience
    token = config.http.admin_token
    where = f"http.host={host!r} is reachable from the network"
    if not token:
        return f"{where} but http.admin_token is empty"
    if token == EXAMPLE_ADMIN_TOKEN:
        return f"{where} but http.admin_token is the example token from gateway.example.toml"
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        return f"{where} but http.admin_token is shorter than {MIN_ADMIN_TOKEN_LENGTH} characters"
    return None
