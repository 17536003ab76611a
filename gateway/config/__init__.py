"""Configuration: one TOML file plus ``GATEWAY_<SECTION>__<KEY>`` environment overrides.

The result is a tree of frozen dataclasses so the rest of the daemon can pass it around (and
across reloads) without anyone mutating shared state. Validation is strict and happens once, at
load time: a typo or a wrong type must stop the daemon with a message naming the key, rather
than silently falling back to a default and misrouting traffic.

The dataclass fields are the schema: the loader walks ``dataclasses.fields`` and the resolved
type hints, so a key is added by adding a field (with an ``_opt(...)`` rule) and nothing else.
"""

from __future__ import annotations

from gateway.config._loader import load, sqlite_path, to_masked_dict
from gateway.config._rules import DEFAULT_CONFIG_PATH, EXAMPLE_ADMIN_TOKEN, ConfigError
from gateway.config._schema import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    DkimConfig,
    HttpConfig,
    ImapConfig,
    ImapPollerConfig,
    QueueConfig,
    RelayConfig,
    SmppCarrierConfig,
    SmppConfig,
    SmppConnectorConfig,
    SmppListenerConfig,
    SmsConfig,
    SmtpConfig,
    StorageConfig,
    WebhooksConfig,
    admin_token_problem,
    email_problem,
    is_loopback,
)

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
    "WebhooksConfig",
    "admin_token_problem",
    "email_problem",
    "is_loopback",
    "load",
    "sqlite_path",
    "to_masked_dict",
]
