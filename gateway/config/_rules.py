"""Field rules and value checks shared by the schema; see gateway.config for the overview."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


def _check_optional_domain(value: str) -> str:
    return _check_domain(value) if value else value


#: An HMAC key typed by a person: long enough that guessing it is hopeless.
MIN_SECRET_LENGTH = 16


def _check_secret(value: str) -> str:
    if value and len(value) < MIN_SECRET_LENGTH:
        raise _Invalid(f"must be at least {MIN_SECRET_LENGTH} characters (or empty: email off)")
    return value


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
