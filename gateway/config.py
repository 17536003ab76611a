"""Configuration: one TOML file plus ``GATEWAY_<SECTION>__<KEY>`` environment overrides.

The result is a tree of frozen dataclasses so the rest of the daemon can pass it around (and
across reloads) without anyone mutating shared state. Validation is strict and happens once, at
load time: a typo or a wrong type must stop the daemon with a message naming the key, rather
than silently falling back to a default and misrouting traffic.

The dataclass fields are the schema: the loader walks ``dataclasses.fields`` and the resolved
type hints, so a key is added by adding a field (with an ``_opt(...)`` rule) and nothing else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EXAMPLE_ADMIN_TOKEN",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "DatabaseConfig",
    "DkimConfig",
    "HttpConfig",
    "ImapConfig",
    "ImapPollerConfig",
    "QueueConfig",
    "RelayConfig",
    "SmppCarrierConfig",
    "SmppConfig",
    "SmppConnectorConfig",
    "SmppListenerConfig",
    "SmsConfig",
    "SmtpConfig",
    "StorageConfig",
    "admin_token_problem",
    "is_loopback",
    "load",
    "sqlite_path",
    "to_masked_dict",
]

# The token shipped in conf/gateway.example.toml. Known to everyone who read the repo, so it is
# treated exactly like an empty token when the admin API is reachable from the network.
EXAMPLE_ADMIN_TOKEN: str = "change-me-admin-token"
MIN_ADMIN_TOKEN_LENGTH = 16
DEFAULT_CONFIG_PATH = Path("conf/gateway.toml")
ENV_PREFIX = "GATEWAY_"
MASK = "***"

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration problem. ``key`` is dotted (``smpp.connectors[0].tps``) so operators can find it."""

    def __init__(self, key: str, reason: str) -> None:
        # Both go to Exception.args so the error pickles/copies with its fields intact.
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


# --------------------------------------------------------------------------------------------
# Field rules
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """Raised by normalizers; ``suffix`` points inside the value (``[2]`` for a list item)."""

    def __init__(self, reason: str, suffix: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.suffix = suffix


@dataclass(frozen=True, slots=True)
class _Rule:
    required: bool = False  # must be present in the file/env; strings must also be non-empty
    nonempty: bool = False
    secret: bool = False  # masked by to_masked_dict
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    max_len: int | None = None
    choices: tuple[str, ...] | None = None
    # Runs after the type check and before `choices`; returns the normalized value.
    normalize: Callable[[Any], Any] | None = None


_NO_RULE = _Rule()


def _opt(default: Any, **rule: Any) -> Any:
    """A dataclass field with validation metadata. Returns Any so field annotations stay precise."""
    return field(default=default, metadata={"rule": _Rule(**rule)})


def _rule(f: dataclasses.Field[Any]) -> _Rule:
    rule = f.metadata.get("rule", _NO_RULE)
    assert isinstance(rule, _Rule)
    return rule


# --------------------------------------------------------------------------------------------
# Value checks shared by several fields
# --------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
# RFC 1123 labels. Underscores are allowed only for hosts we *connect to* (internal DNS often
# has them); names we publish (mail_domain, DKIM selector) must be strictly valid.
_LABEL_STRICT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LABEL_LENIENT = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_E164_RE = re.compile(r"\+?([1-9][0-9]{7,14})")
_REGION_RE = re.compile(r"[A-Z]{2}")
_DB_PREFIXES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


def _is_hostname(value: str, *, lenient: bool) -> bool:
    if not value or len(value) > 253 or not value.isascii():
        return False
    label = _LABEL_LENIENT if lenient else _LABEL_STRICT
    return all(label.fullmatch(part) for part in value.split("."))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_name(value: str) -> str:
    # Names end up in metrics labels, log fields and env var names, so keep them boring.
    if not _NAME_RE.fullmatch(value):
        raise _Invalid("must match [a-z0-9_-]+ (at most 64 characters)")
    return value


def _check_host(value: str) -> str:
    if value.startswith("["):
        raise _Invalid("write IPv6 addresses without brackets")
    if not (_is_ip(value) or _is_hostname(value, lenient=True)):
        raise _Invalid(f"{value!r} is not a valid hostname or IP address")
    return value


def _check_optional_host(value: str) -> str:
    return _check_host(value) if value else value


def _check_domain(value: str) -> str:
    if not _is_hostname(value, lenient=False):
        raise _Invalid(f"{value!r} is not a valid hostname")
    return value.lower()


def _check_db_url(value: str) -> str:
    # Only the async drivers we ship; a sync URL would block the event loop at runtime.
    if not value.startswith(_DB_PREFIXES):
        raise _Invalid("must start with " + " or ".join(repr(p) for p in _DB_PREFIXES))
    return value


def _check_schema(value: str) -> str:
    if (value and not _NAME_RE.fullmatch(value.replace("-", "_"))) or "-" in value:
        raise _Invalid("must be a lower-case SQL identifier ([a-z0-9_]+)")
    return value


def _check_pool(numbers: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, raw in enumerate(numbers):
        m = _E164_RE.fullmatch(raw.strip())
        if not m:
            raise _Invalid(f"{raw!r} is not an E.164 number (+ and 8-15 digits)", f"[{i}]")
        number = "+" + m.group(1)
        if number in seen:
            raise _Invalid(f"{number} duplicates item [{seen[number]}]", f"[{i}]")
        seen[number] = i
        out.append(number)
    return tuple(out)


def _norm_region(value: str, suffix: str = "") -> str:
    region = value.strip().upper()
    if not _REGION_RE.fullmatch(region):
        raise _Invalid(f"{value!r} is not an ISO 3166-1 alpha-2 code", suffix)
    return region


def _check_regions(values: tuple[str, ...]) -> tuple[str, ...]:
    # Order-preserving de-duplication: a repeated region is harmless, not worth failing over.
    return tuple(dict.fromkeys(_norm_region(v, f"[{i}]") for i, v in enumerate(values)))


def _check_networks(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            # strict: "10.0.0.5/24" is almost always a typo in an ACL, so refuse it loudly.
            out.append(str(ipaddress.ip_network(value.strip(), strict=True)))
        except ValueError as exc:
            raise _Invalid(f"{value!r} is not a valid network: {exc}", f"[{i}]") from None
    return tuple(out)


def _upper(value: str) -> str:
    return value.upper()


def _lower(value: str) -> str:
    return value.lower()


_PORT = {"ge": 0, "le": 65535}  # 0 = ephemeral, useful for tests binding a free port
_REMOTE_PORT = {"ge": 1, "le": 65535}


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


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str = _opt("", normalize=_check_optional_host)  # "" = no smart host configured
    port: int = _opt(25, **_REMOTE_PORT)
    username: str = _opt("")
    password: str = _opt("", secret=True)
    starttls: bool = _opt(True)


@dataclass(frozen=True, slots=True)
class DkimConfig:
    selector: str = _opt("gateway", nonempty=True, normalize=_check_domain)
    private_key_file: str = _opt("")  # "" = do not sign


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
    tps: float = _opt(50.0, gt=0)
    window: int = _opt(10, ge=1, le=1000)
    weight: int = _opt(1, ge=1)
    enquire_link_seconds: float = _opt(30.0, gt=0)
    response_timeout_seconds: float = _opt(30.0, gt=0)


@dataclass(frozen=True, slots=True)
class SmppCarrierConfig:
    """An ESME (carrier/partner) allowed to bind to one of our SMPP listeners."""

    system_id: str = _opt("", required=True, max_len=15)
    password: str = _opt("", secret=True, max_len=8)
    networks: tuple[str, ...] = _opt(("127.0.0.1/32",), normalize=_check_networks)
    connector: str = _opt("")  # "" = no pinned connector; otherwise must name one (cross-checked)


@dataclass(frozen=True, slots=True)
class SmppListenerConfig:
    name: str = _opt("", required=True, normalize=_check_name)
    host: str = _opt("127.0.0.1", nonempty=True, normalize=_check_host)
    port: int = _opt(0, required=True, **_PORT)
    carriers: tuple[SmppCarrierConfig, ...] = _opt(())


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


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    shutdown_timeout_seconds: float = _opt(30.0, gt=0)
    log_level: str = _opt("INFO", normalize=_upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _opt("json", normalize=_lower, choices=("json", "text"))


@dataclass(frozen=True, slots=True)
class ImapPollerConfig:
    name: str = _opt("", required=True, normalize=_check_name)
    host: str = _opt("", required=True, normalize=_check_host)
    port: int = _opt(993, **_REMOTE_PORT)
    tls: bool = _opt(True)
    username: str = _opt("", required=True)
    password: str = _opt("", secret=True)
    mailbox: str = _opt("INBOX", nonempty=True)
    interval_seconds: float = _opt(60.0, gt=0)


@dataclass(frozen=True, slots=True)
class ImapConfig:
    pollers: tuple[ImapPollerConfig, ...] = _opt(())


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


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(value: object) -> str:
    # TOML vocabulary, because that is what the operator wrote.
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__  # dates/times


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Public (non-internal) fields of a schema class with their resolved type hints."""
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        # `from __future__ import annotations` makes annotations strings; resolve them once.
        hints = _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _table_array_element(hint: Any) -> type | None:
    if typing.get_origin(hint) is tuple:
        elem = typing.get_args(hint)[0]
        if isinstance(elem, type) and dataclasses.is_dataclass(elem):
            return elem
    return None


class _Ctx:
    """Remembers which keys came from the environment so errors point at the env var."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}  # dotted key -> env var name

    def source_of(self, key: str) -> str | None:
        for src_key, env_name in self.sources.items():
            if key == src_key or key.startswith((src_key + ".", src_key + "[")):
                return env_name
        return None

    def error(self, key: str, reason: str) -> ConfigError:
        env_name = self.source_of(key)
        return ConfigError(f"env {env_name} ({key})" if env_name else key, reason)


def _build(cls: type[_T], raw: Any, key: str, ctx: _Ctx) -> _T:
    if not isinstance(raw, dict):
        raise ctx.error(key, f"expected a table, got {_type_name(raw)}")
    known = _fields(cls)
    for name in raw:
        if name not in known:
            raise ctx.error(_join(key, name), "unknown key" if key else "unknown section")
    kwargs: dict[str, Any] = {}
    for name, (f, hint) in known.items():
        fkey = _join(key, name)
        rule = _rule(f)
        if name not in raw:
            if rule.required:
                raise ctx.error(fkey, "required key is missing")
            continue  # the dataclass default applies
        kwargs[name] = _convert(hint, raw[name], fkey, rule, ctx)
    factory: Callable[..., _T] = cls
    return factory(**kwargs)


def _convert(hint: Any, value: Any, key: str, rule: _Rule, ctx: _Ctx) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key, ctx)
    if typing.get_origin(hint) is tuple:
        elem = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ctx.error(key, f"expected an array, got {_type_name(value)}")
        if isinstance(elem, type) and dataclasses.is_dataclass(elem):
            return tuple(_build(elem, item, f"{key}[{i}]", ctx) for i, item in enumerate(value))
        result: Any = tuple(_scalar(elem, item, f"{key}[{i}]", ctx) for i, item in enumerate(value))
    else:
        result = _scalar(hint, value, key, ctx)
    return _apply_rule(result, key, rule, ctx)


def _scalar(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    # bool is a subclass of int in Python; TOML keeps them apart and so do we (`port = true`
    # is a mistake, not port 1).
    if tp is bool:
        if isinstance(value, bool):
            return value
        expected = "a boolean"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ctx.error(key, "must be a finite number")
            return float(value)
        expected = "a number"
    elif tp is str:
        if isinstance(value, str):
            return value
        expected = "a string"
    else:  # pragma: no cover - schema bug, not user input
        raise TypeError(f"unsupported schema type {tp!r} at {key}")
    raise ctx.error(key, f"expected {expected}, got {_type_name(value)}")


def _apply_rule(value: Any, key: str, rule: _Rule, ctx: _Ctx) -> Any:
    if isinstance(value, str):
        if (rule.required or rule.nonempty) and not value:
            raise ctx.error(key, "must not be empty")
        if rule.max_len is not None and len(value) > rule.max_len:
            raise ctx.error(key, f"must be at most {rule.max_len} characters, got {len(value)}")
    if rule.normalize is not None:
        try:
            value = rule.normalize(value)
        except _Invalid as exc:
            raise ctx.error(key + exc.suffix, exc.reason) from None
    if rule.choices is not None and value not in rule.choices:
        raise ctx.error(key, "must be one of " + ", ".join(repr(c) for c in rule.choices))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rule.ge is not None and value < rule.ge:
            raise ctx.error(key, f"must be >= {_num(rule.ge)}, got {value}")
        if rule.le is not None and value > rule.le:
            raise ctx.error(key, f"must be <= {_num(rule.le)}, got {value}")
        if rule.gt is not None and value <= rule.gt:
            raise ctx.error(key, f"must be > {_num(rule.gt)}, got {value}")
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _cross_checks(cfg: Config, ctx: _Ctx) -> None:
    """Rules that span several keys; run after every key is individually valid."""
    _unique_names("smpp.connectors", [c.name for c in cfg.smpp.connectors], ctx)
    _unique_names("smpp.listeners", [li.name for li in cfg.smpp.listeners], ctx)
    _unique_names("imap.pollers", [p.name for p in cfg.imap.pollers], ctx)
    connector_names = {c.name for c in cfg.smpp.connectors}
    for li, listener in enumerate(cfg.smpp.listeners):
        seen: dict[str, int] = {}
        for ci, carrier in enumerate(listener.carriers):
            base = f"smpp.listeners[{li}].carriers[{ci}]"
            # The SMSC side identifies the carrier only by system_id at bind time.
            if carrier.system_id in seen:
                raise ctx.error(
                    f"{base}.system_id",
                    f"duplicate system_id {carrier.system_id!r} (also carriers[{seen[carrier.system_id]}])",
                )
            seen[carrier.system_id] = ci
            if carrier.connector and carrier.connector not in connector_names:
                raise ctx.error(
                    f"{base}.connector", f"no smpp connector named {carrier.connector!r} is configured"
                )
    if cfg.queue.retry_max_seconds < cfg.queue.retry_base_seconds:
        raise ctx.error("queue.retry_max_seconds", "must be >= queue.retry_base_seconds")


def _unique_names(prefix: str, names: list[str], ctx: _Ctx) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            first, second = f"{prefix}[{seen[name]}].name", f"{prefix}[{i}].name"
            # Blame the entry whose name came from the environment, if any: that is the one
            # the operator has to look at.
            if ctx.source_of(first) and not ctx.source_of(second):
                raise ctx.error(first, f"duplicate name {name!r} (also {prefix}[{i}])")
            raise ctx.error(second, f"duplicate name {name!r} (also {prefix}[{seen[name]}])")
        seen[name] = i


# --------------------------------------------------------------------------------------------
# Environment overrides
# --------------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_INT_RE = re.compile(r"[+-]?[0-9]+")  # int() would also accept non-ASCII digits and "1_0"
_INDEX_RE = re.compile(r"[0-9]+")


def _from_env(hint: Any, text: str) -> Any:
    """Convert an env string to the key's type; ValueError carries the operator-facing reason."""
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false/1/0/yes/no/on/off), got {text!r}")
    if hint is int:
        if not _INT_RE.fullmatch(text.strip()):
            raise ValueError(f"expected an integer, got {text!r}")
        return int(text.strip())
    if hint is float:
        try:
            if not text.strip().isascii():
                raise ValueError
            number = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {text!r}")
        return number
    if hint is str:
        return text
    if typing.get_origin(hint) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            # JSON array for values that may themselves contain commas.
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON array: {exc}") from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("expected a JSON array of strings")
            return items
        return [part.strip() for part in stripped.split(",") if part.strip()]
    raise ValueError("cannot be set from the environment")  # pragma: no cover - schema bug


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str], ctx: _Ctx) -> None:
    # Sorted so the outcome (and which error comes first) does not depend on environ order.
    for env_name in sorted(environ):
        if not env_name.upper().startswith(ENV_PREFIX):
            continue
        rest = env_name[len(ENV_PREFIX) :]
        if "__" not in rest:
            continue  # GATEWAY_TEST_PG_URL and friends belong to other tools
        _apply_one(raw, env_name, rest.split("__"), environ[env_name], ctx)


def _apply_one(raw: dict[str, Any], env_name: str, parts: list[str], text: str, ctx: _Ctx) -> None:
    label = f"env {env_name}"
    cls: type = Config
    node = raw
    dotted = ""
    i = 0
    while i < len(parts):
        seg = parts[i].lower()
        known = _fields(cls)
        if seg not in known:
            reason = "unknown key" if dotted else "unknown section"
            raise ConfigError(f"{label} ({_join(dotted, seg)})", reason)
        hint = known[seg][1]
        dotted = _join(dotted, seg)
        last = i == len(parts) - 1
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if last:
                raise ConfigError(f"{label} ({dotted})", "is a table; set its keys individually")
            child = node.setdefault(seg, {})
            if not isinstance(child, dict):
                raise ctx.error(dotted, f"expected a table, got {_type_name(child)}")
            node, cls, i = child, hint, i + 1
            continue
        elem = _table_array_element(hint)
        if elem is not None:
            if i + 2 >= len(parts):
                raise ConfigError(
                    f"{label} ({dotted})",
                    f"must be followed by an index (or {_ENTRY_KEY[elem]}) and a key, like __0__<KEY>",
                )
            entries = node.get(seg)
            if not isinstance(entries, list):
                if entries is None:
                    # Entries are only overridden, never created: a half-defined connector made
                    # of env vars alone is more likely a mistake than a deployment choice.
                    raise ConfigError(f"{label} ({dotted})", f"no {dotted} entries in the config file")
                raise ctx.error(dotted, f"expected an array of tables, got {_type_name(entries)}")
            index = _select_entry(entries, parts[i + 1], _ENTRY_KEY[elem])
            if index is None:
                raise ConfigError(f"{label} ({dotted})", f"no entry {parts[i + 1]!r} (by index or name)")
            dotted = f"{dotted}[{index}]"
            entry = entries[index]
            if not isinstance(entry, dict):
                raise ctx.error(dotted, f"expected a table, got {_type_name(entry)}")
            node, cls, i = entry, elem, i + 2
            continue
        if not last:
            raise ConfigError(f"{label} ({dotted})", "is not a table")
        try:
            value = _from_env(hint, text)
        except ValueError as exc:
            raise ConfigError(f"{label} ({dotted})", str(exc)) from None
        if dotted in ctx.sources:
            # Env names are case-insensitive here, so GATEWAY_HTTP__PORT and gateway_http__port
            # would silently race; refuse instead.
            raise ConfigError(f"{label} ({dotted})", f"also set by {ctx.sources[dotted]}")
        node[seg] = value
        ctx.sources[dotted] = env_name
        return
    raise ConfigError(label, "empty name")  # pragma: no cover - split("__") never yields []


def _select_entry(entries: list[Any], selector: str, key_field: str) -> int | None:
    # Digits mean an index; names are [a-z0-9_-]+ and env var names are often upper-cased,
    # hence the case-insensitive match.
    if _INDEX_RE.fullmatch(selector):
        index = int(selector)
        return index if index < len(entries) else None
    wanted = selector.lower()
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and str(entry.get(key_field, "")).lower() == wanted:
            return index
    return None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Config:
    """Load and validate the config; raises ConfigError naming the first offending key."""
    source: Path | None
    if path is None:
        # Dev convenience: `gateway run` from a checkout picks up conf/gateway.toml if present.
        source = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    else:
        source = Path(path)
        if not source.exists():
            raise ConfigError("config", f"{source}: file not found")
    raw: dict[str, Any] = {}
    if source is not None:
        raw = _read_toml(source)
    ctx = _Ctx()
    _apply_env(raw, environ, ctx)
    config = _build(Config, raw, "", ctx)
    _cross_checks(config, ctx)
    return dataclasses.replace(config, source=source)


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{source}: not UTF-8 (byte offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line N, column M)".
        raise ConfigError("config", f"{source}: invalid TOML: {exc}") from None


def to_masked_dict(config: Config) -> dict[str, Any]:
    """The effective config in TOML layout with secrets masked; safe to log or serve to admins."""
    result = _dump(config)
    assert isinstance(result, dict)
    return result


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for name, (f, _hint) in _fields(type(obj)).items():
            value = getattr(obj, name)
            if _rule(f).secret and isinstance(value, str) and value:
                out[name] = MASK
            else:
                out[name] = _dump(value)
        return out
    if isinstance(obj, tuple):
        return [_dump(item) for item in obj]
    return obj


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


def sqlite_path(url: str) -> Path | None:
    """Filesystem path of a SQLite URL (relative stays relative), None for in-memory or non-SQLite."""
    # SQLAlchemy form: sqlite[+driver]:///relative/path or sqlite[+driver]:////absolute/path.
    m = re.fullmatch(r"sqlite(?:\+\w+)?://(.*)", url, flags=re.DOTALL)
    if not m:
        return None
    rest = m.group(1).split("?", 1)[0]
    if not rest.startswith("/"):
        return None  # "sqlite://" alone is an in-memory database
    database = unquote(rest[1:])
    if database in ("", ":memory:"):
        return None
    return Path(database)
