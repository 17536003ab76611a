"""Reading TOML, applying env overrides, building and checking the Config tree."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from gateway.config._rules import (
    _T,
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    MASK,
    ConfigError,
    _Invalid,
    _Rule,
    _rule,
)
from gateway.config._schema import (
    _ENTRY_KEY,
    Config,
    is_loopback,
)

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
    for pi, poller in enumerate(cfg.imap.pollers):
        base = f"imap.pollers[{pi}]"
        if poller.tls == "none" and not is_loopback(poller.host):
            raise ctx.error(f"{base}.tls", '"none" would send the password in clear: use "tls" or "starttls"')
        if poller.on_success == f"move:{poller.mailbox}":
            raise ctx.error(f"{base}.on_success", "must move to a folder other than the polled mailbox")
        if poller.retry_max_seconds < poller.retry_base_seconds:
            raise ctx.error(f"{base}.retry_max_seconds", "must be >= retry_base_seconds")
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
            if carrier.outbind and not carrier.connector:
                # We bind back with the credentials of our account at that carrier (SMPP 3.4 §2.2.1).
                why = "must name the connector to bind back with when outbind = true"
                raise ctx.error(f"{base}.connector", why)
        if bool(listener.tls_cert_file) != bool(listener.tls_key_file):
            why = "tls_cert_file and tls_key_file go together"
            raise ctx.error(f"smpp.listeners[{li}].tls_key_file", why)
    if cfg.queue.retry_max_seconds < cfg.queue.retry_base_seconds:
        raise ctx.error("queue.retry_max_seconds", "must be >= queue.retry_base_seconds")
    if cfg.webhooks.retry_max_seconds < cfg.webhooks.retry_base_seconds:
        raise ctx.error("webhooks.retry_max_seconds", "must be >= webhooks.retry_base_seconds")


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
