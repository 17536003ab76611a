"""gateway.config: defaults, strict validation, env overrides, masking, admin token policy."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from gateway.config import (
    EXAMPLE_ADMIN_TOKEN,
    Config,
    ConfigError,
    admin_token_problem,
    is_loopback,
    load,
    sqlite_path,
    to_masked_dict,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "gateway.example.toml"

CONNECTORS = """
[[smpp.connectors]]
name = "smsc_a"
host = "smsc-a.example.net"
system_id = "gw"
password = "pw"

[[smpp.connectors]]
name = "smsc_b"
host = "10.0.0.2"
system_id = "gw2"
tps = 12.5
bind = "transmitter_receiver"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), environ or {})


def error_for(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value


# --- defaults and files ----------------------------------------------------------------------


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no conf/gateway.toml here
    cfg = load(None, {})
    assert cfg == Config()
    assert cfg.source is None
    assert cfg.database.url == "sqlite+aiosqlite:///var/gateway.sqlite3"
    assert cfg.database.pool_size == 10
    assert cfg.database.busy_timeout_ms == 5000
    assert (cfg.http.host, cfg.http.port, cfg.http.admin_token) == ("127.0.0.1", 8080, "")
    assert cfg.http.max_body_bytes == 1048576
    assert cfg.smtp.enabled is False
    assert (cfg.smtp.host, cfg.smtp.port, cfg.smtp.mail_domain) == ("127.0.0.1", 2525, "mail.example.com")
    assert cfg.relay.port == 25 and cfg.relay.starttls is True
    assert cfg.dkim.selector == "gateway"
    assert cfg.smpp.connectors == () and cfg.smpp.listeners == ()
    assert cfg.sms.pool == () and cfg.sms.allowed_regions == ("PL",)
    assert cfg.sms.reply_window_days == 15 and cfg.sms.default_region == "PL"
    assert cfg.storage.data_dir == "var"
    assert cfg.queue.retry_base_seconds == 5.0 and cfg.queue.max_attempts == 8
    assert (cfg.daemon.log_level, cfg.daemon.log_format) == ("INFO", "json")
    assert cfg.imap.pollers == ()


def test_default_path_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway.toml").write_text("[http]\nport = 9999\n")
    monkeypatch.chdir(tmp_path)
    cfg = load(None, {})
    assert cfg.http.port == 9999
    assert cfg.source == Path("conf/gateway.toml")


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.http.port = 1  # type: ignore[misc]


def test_example_file_loads() -> None:
    cfg = load(EXAMPLE, {})
    assert cfg.http.admin_token == EXAMPLE_ADMIN_TOKEN
    assert cfg.sms.pool == ("+48500000001", "+48500000002")
    assert cfg.smtp.enabled is False
    assert cfg.database.url == "sqlite+aiosqlite:///var/gateway.sqlite3"


def test_example_file_commented_blocks_are_valid(tmp_path: Path) -> None:
    # The commented smpp/imap examples are documentation people will uncomment; keep them valid.
    lines = EXAMPLE.read_text().splitlines()
    key_line = re.compile(r"^# (\[\[[a-z.]+\]\]|[a-z_]+ = .*)$")
    uncommented = [line[2:] if key_line.match(line) else line for line in lines]
    assert uncommented != lines
    cfg = load_text(tmp_path, "\n".join(uncommented))
    assert [c.name for c in cfg.smpp.connectors] == ["smsc_a"]
    assert cfg.smpp.listeners[0].carriers[0].system_id == "partner1"
    assert cfg.imap.pollers[0].name == "support"


def test_full_file(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        CONNECTORS
        + """
[[smpp.listeners]]
name = "partners"
port = 2776

[[smpp.listeners.carriers]]
system_id = "p1"
password = "x"
networks = ["10.1.0.0/16", "2001:db8::/32"]
connector = "smsc_b"

[sms]
pool = ["48500100200", "+48500100201"]
allowed_regions = ["pl", "DE"]

[[imap.pollers]]
name = "support"
host = "imap.example.com"
username = "u"
""",
    )
    a, b = cfg.smpp.connectors
    assert (a.port, a.bind, a.tps, a.window, a.weight) == (2775, "transceiver", 50.0, 10, 1)
    assert isinstance(a.tps, float)
    assert (b.tps, b.bind) == (12.5, "transmitter_receiver")
    listener = cfg.smpp.listeners[0]
    assert (listener.host, listener.port) == ("127.0.0.1", 2776)
    assert listener.carriers[0].networks == ("10.1.0.0/16", "2001:db8::/32")
    assert cfg.sms.pool == ("+48500100200", "+48500100201")
    assert cfg.sms.allowed_regions == ("PL", "DE")
    assert isinstance(cfg.smpp.connectors, tuple)
    poller = cfg.imap.pollers[0]
    assert (poller.port, poller.tls, poller.mailbox, poller.interval_seconds) == (993, "tls", "INBOX", 60.0)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml", {})
    assert info.value.key == "config"
    assert "nope.toml" in str(info.value)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, '[http]\nport = 8080\nhost = "unterminated\n')
    assert err.key == "config"
    assert "gateway.toml" in err.reason
    assert "line 3" in err.reason


def test_error_str() -> None:
    err = ConfigError("http.port", "expected an integer, got string")
    assert str(err) == "http.port: expected an integer, got string"
    assert (err.key, err.reason) == ("http.port", "expected an integer, got string")


# --- strict validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason_part"),
    [
        ("[http]\nprot = 1\n", "http.prot", "unknown key"),
        ("[htttp]\nport = 1\n", "htttp", "unknown section"),
        ("port = 1\n", "port", "unknown section"),
        ("http = 1\n", "http", "expected a table"),
        (CONNECTORS + "colour = 1\n", "smpp.connectors[1].colour", "unknown key"),
        ("[http]\nport = true\n", "http.port", "expected an integer, got boolean"),
        ('[http]\nport = "8080"\n', "http.port", "expected an integer, got string"),
        ("[http]\nport = 8080.0\n", "http.port", "expected an integer, got float"),
        ("[smtp]\nenabled = 1\n", "smtp.enabled", "expected a boolean, got integer"),
        ("[http]\nhost = 127\n", "http.host", "expected a string, got integer"),
        ('[sms]\npool = "+48500100200"\n', "sms.pool", "expected an array"),
        ("[sms]\npool = [48500100200]\n", "sms.pool[0]", "expected a string"),
        ("[queue]\nretry_base_seconds = true\n", "queue.retry_base_seconds", "expected a number"),
        ("[http]\nport = 70000\n", "http.port", "<= 65535"),
        ("[database]\npool_size = 0\n", "database.pool_size", ">= 1"),
        ("[database]\npool_size = 201\n", "database.pool_size", "<= 200"),
        ('[database]\nurl = "sqlite:///x.db"\n', "database.url", "must start with"),
        ('[smtp]\nmail_domain = "not a domain"\n', "smtp.mail_domain", "hostname"),
        ("[sms]\nreply_window_days = 366\n", "sms.reply_window_days", "<= 365"),
        ('[sms]\npool = ["+48500100200", "48500100200"]\n', "sms.pool[1]", "duplicates"),
        ('[sms]\npool = ["+4850"]\n', "sms.pool[0]", "E.164"),
        ('[sms]\nallowed_regions = ["POL"]\n', "sms.allowed_regions[0]", "ISO 3166"),
        ('[daemon]\nlog_level = "TRACE"\n', "daemon.log_level", "must be one of"),
        ('[daemon]\nlog_format = "xml"\n', "daemon.log_format", "must be one of"),
        ("[queue]\nretry_base_seconds = 10.0\nretry_max_seconds = 5.0\n", "queue.retry_max_seconds", ">="),
        ("[queue]\npoll_interval_seconds = 0\n", "queue.poll_interval_seconds", "> 0"),
        ("[webhooks]\nretry_base_seconds = 60\nretry_max_seconds = 5\n", "webhooks.retry_max_seconds", ">="),
        ('[webhooks]\nallow_private = "yes"\n', "webhooks.allow_private", "expected a boolean"),
        ('[[smpp.connectors]]\nname = "a"\nhost = "h"\n', "smpp.connectors[0].system_id", "missing"),
        (
            CONNECTORS.replace('"smsc_b"', '"smsc_a"'),
            "smpp.connectors[1].name",
            "duplicate",
        ),
        (CONNECTORS.replace("tps = 12.5", "tps = -1"), "smpp.connectors[1].tps", ">= 0"),
        (CONNECTORS.replace("tps = 12.5", "window = 1001"), "smpp.connectors[1].window", "<= 1000"),
        (
            CONNECTORS.replace('system_id = "gw2"', 'system_id = "sixteen_chars_id"'),
            "smpp.connectors[1].system_id",
            "at most 15",
        ),
        (
            CONNECTORS.replace('password = "pw"', 'password = "ninechars"'),
            "smpp.connectors[0].password",
            "at most 8",
        ),
        (CONNECTORS.replace('name = "smsc_a"', 'name = "SMSC A"'), "smpp.connectors[0].name", "[a-z0-9_-]"),
        (
            CONNECTORS.replace('bind = "transmitter_receiver"', 'bind = "rx"'),
            "smpp.connectors[1].bind",
            "one",
        ),
        ('[[smpp.listeners]]\nname = "l"\n', "smpp.listeners[0].port", "missing"),
        (
            '[[smpp.listeners]]\nname = "l"\nport = 1\n[[smpp.listeners.carriers]]\nsystem_id = "c"\n'
            'networks = ["10.0.0.5/24"]\n',
            "smpp.listeners[0].carriers[0].networks[0]",
            "not a valid network",
        ),
        (
            '[[smpp.listeners]]\nname = "l"\nport = 1\n[[smpp.listeners.carriers]]\nsystem_id = "c"\n'
            'connector = "ghost"\n',
            "smpp.listeners[0].carriers[0].connector",
            "ghost",
        ),
        ('[[imap.pollers]]\nname = "p"\nhost = "h"\n', "imap.pollers[0].username", "missing"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str, reason_part: str) -> None:
    err = error_for(tmp_path, text)
    assert err.key == key, str(err)
    assert reason_part in err.reason
    assert str(err) == f"{key}: {err.reason}"


# --- environment overrides ---------------------------------------------------------------------


def test_env_scalar_bool_and_float(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "[http]\nport = 8080\n",
        {
            "GATEWAY_HTTP__PORT": "9000",
            "gateway_http__host": "0.0.0.0",  # case-insensitive
            "GATEWAY_SMTP__ENABLED": "true",
            "GATEWAY_QUEUE__RETRY_BASE_SECONDS": "2.5",
            "GATEWAY_DATABASE__URL": "postgresql+asyncpg://gw@db/gw",
            "GATEWAY_DAEMON__LOG_LEVEL": "debug",
        },
    )
    assert cfg.http.port == 9000
    assert cfg.http.host == "0.0.0.0"
    assert cfg.smtp.enabled is True
    assert cfg.queue.retry_base_seconds == 2.5
    assert cfg.database.url == "postgresql+asyncpg://gw@db/gw"
    assert cfg.daemon.log_level == "DEBUG"


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("0", False), ("FALSE", False), ("yes", True)])
def test_env_bool_spellings(text: str, expected: bool) -> None:
    assert load(EXAMPLE, {"GATEWAY_SMTP__ENABLED": text}).smtp.enabled is expected


def test_env_lists(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "", {"GATEWAY_SMS__POOL": "+48500100200, 48500100201"})
    assert cfg.sms.pool == ("+48500100200", "+48500100201")
    cfg = load_text(tmp_path, "", {"GATEWAY_SMS__POOL": '["+48500100200"]'})
    assert cfg.sms.pool == ("+48500100200",)
    cfg = load_text(tmp_path, '[sms]\npool = ["+48500100200"]\n', {"GATEWAY_SMS__POOL": ""})
    assert cfg.sms.pool == ()
    cfg = load_text(tmp_path, "", {"GATEWAY_SMS__ALLOWED_REGIONS": "PL,DE"})
    assert cfg.sms.allowed_regions == ("PL", "DE")


def test_env_connector_by_index_and_name(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        CONNECTORS,
        {
            "GATEWAY_SMPP__CONNECTORS__0__PASSWORD": "secret1",
            "GATEWAY_SMPP__CONNECTORS__SMSC_B__PASSWORD": "secret2",
            "GATEWAY_SMPP__CONNECTORS__smsc_b__TPS": "7",
        },
    )
    assert cfg.smpp.connectors[0].password == "secret1"
    assert cfg.smpp.connectors[1].password == "secret2"
    assert cfg.smpp.connectors[1].tps == 7.0


def test_env_nested_carrier_by_system_id(tmp_path: Path) -> None:
    text = '[[smpp.listeners]]\nname = "l"\nport = 1\n[[smpp.listeners.carriers]]\nsystem_id = "p1"\n'
    cfg = load_text(tmp_path, text, {"GATEWAY_SMPP__LISTENERS__L__CARRIERS__P1__PASSWORD": "pw"})
    assert cfg.smpp.listeners[0].carriers[0].password == "pw"


def test_env_without_double_underscore_is_ignored(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path, "", {"GATEWAY_TEST_PG_URL": "postgresql://x", "GATEWAY_": "", "PATH": "/usr/bin"}
    )
    assert cfg.database.url == Config().database.url


@pytest.mark.parametrize(
    ("environ", "key", "reason_part"),
    [
        ({"GATEWAY_HTTP__PORT": "eighty"}, "env GATEWAY_HTTP__PORT (http.port)", "expected an integer"),
        ({"GATEWAY_HTTP__PORT": "70000"}, "env GATEWAY_HTTP__PORT (http.port)", "<= 65535"),
        ({"GATEWAY_SMTP__ENABLED": "maybe"}, "env GATEWAY_SMTP__ENABLED (smtp.enabled)", "boolean"),
        (
            {"GATEWAY_QUEUE__RETRY_BASE_SECONDS": "nan"},
            "env GATEWAY_QUEUE__RETRY_BASE_SECONDS (queue.retry_base_seconds)",
            "finite",
        ),
        ({"GATEWAY_SMS__POOL": "+48500100200,12"}, "env GATEWAY_SMS__POOL (sms.pool[1])", "E.164"),
        ({"GATEWAY_SMS__POOL": "[1, 2]"}, "env GATEWAY_SMS__POOL (sms.pool)", "JSON array of strings"),
        ({"GATEWAY_HTTP__PROT": "1"}, "env GATEWAY_HTTP__PROT (http.prot)", "unknown key"),
        ({"GATEWAY_NOPE__X": "1"}, "env GATEWAY_NOPE__X (nope)", "unknown section"),
        ({"GATEWAY_HTTP__PORT__X": "1"}, "env GATEWAY_HTTP__PORT__X (http.port)", "not a table"),
        (
            {"GATEWAY_SMPP__CONNECTORS__5__PASSWORD": "x"},
            "env GATEWAY_SMPP__CONNECTORS__5__PASSWORD (smpp.connectors)",
            "no entry",
        ),
        (
            {"GATEWAY_SMPP__CONNECTORS__ghost__PASSWORD": "x"},
            "env GATEWAY_SMPP__CONNECTORS__ghost__PASSWORD (smpp.connectors)",
            "no entry",
        ),
        (
            {"GATEWAY_SMPP__CONNECTORS__0__PASSWORD": "ninechars"},
            "env GATEWAY_SMPP__CONNECTORS__0__PASSWORD (smpp.connectors[0].password)",
            "at most 8",
        ),
        (
            {"GATEWAY_SMPP__CONNECTORS__0__NAME": "smsc_b"},
            "env GATEWAY_SMPP__CONNECTORS__0__NAME (smpp.connectors[0].name)",
            "duplicate",
        ),
        ({"GATEWAY_SMPP__CONNECTORS": "x"}, "env GATEWAY_SMPP__CONNECTORS (smpp.connectors)", "index"),
        (
            {"GATEWAY_HTTP__PORT": "1", "gateway_http__port": "2"},
            "env gateway_http__port (http.port)",
            "also set by GATEWAY_HTTP__PORT",
        ),
    ],
)
def test_bad_env_names_the_variable(
    tmp_path: Path, environ: dict[str, str], key: str, reason_part: str
) -> None:
    err = error_for(tmp_path, CONNECTORS, environ)
    assert err.key == key, str(err)
    assert reason_part in err.reason


def test_env_on_imap_without_pollers(tmp_path: Path) -> None:
    err = error_for(tmp_path, "", {"GATEWAY_IMAP__POLLERS__0__PASSWORD": "x"})
    assert err.key == "env GATEWAY_IMAP__POLLERS__0__PASSWORD (imap.pollers)"


# --- masking -------------------------------------------------------------------------------------


def test_masked_dict(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        CONNECTORS + '[relay]\nhost = "smtp.example.com"\npassword = "hunter2"\n',
        {"GATEWAY_HTTP__ADMIN_TOKEN": "a" * 32},
    )
    masked = to_masked_dict(cfg)
    assert masked["http"]["admin_token"] == "***"
    assert masked["relay"]["password"] == "***"
    assert masked["relay"]["host"] == "smtp.example.com"
    assert masked["smpp"]["connectors"][0]["password"] == "***"
    assert masked["smpp"]["connectors"][1]["password"] == ""  # empty stays empty: shows "unset"
    assert masked["smpp"]["connectors"][1]["tps"] == 12.5
    assert isinstance(masked["sms"]["allowed_regions"], list)
    assert "source" not in masked
    assert set(masked) == {
        "database", "http", "smtp", "relay", "dkim", "smpp", "sms", "storage", "queue", "daemon", "imap",
        "webhooks", "mailauth",
    }  # fmt: skip
    assert "hunter2" not in repr(masked) and "a" * 32 not in repr(masked)


def test_masked_dict_uses_toml_layout(tmp_path: Path) -> None:
    # With no secrets set nothing is masked, so the dump is the effective config and must load
    # back to the same thing (JSON scalars are valid TOML scalars for these values).
    cfg = load(EXAMPLE, {"GATEWAY_HTTP__ADMIN_TOKEN": ""})
    lines: list[str] = []
    for section, values in to_masked_dict(cfg).items():
        if section in ("smpp", "imap"):
            assert all(v == [] for v in values.values())  # arrays of tables, empty here
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    reloaded = load_text(tmp_path, "\n".join(lines) + "\n")
    assert dataclasses.replace(reloaded, source=None) == dataclasses.replace(cfg, source=None)


# --- admin token policy and helpers ------------------------------------------------------------


def _with_http(host: str, token: str) -> Config:
    cfg = Config()
    return dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, host=host, admin_token=token))


@pytest.mark.parametrize("token", ["", EXAMPLE_ADMIN_TOKEN, "short-token"])
def test_admin_token_problem_on_public_bind(token: str) -> None:
    problem = admin_token_problem(_with_http("0.0.0.0", token))
    assert problem is not None
    assert "admin_token" in problem
    assert _with_http("0.0.0.0", token).admin_token_problem() == problem


@pytest.mark.parametrize(
    ("host", "token"),
    [
        ("127.0.0.1", ""),
        ("127.1.2.3", EXAMPLE_ADMIN_TOKEN),
        ("::1", ""),
        ("localhost", "x"),
        ("0.0.0.0", "k3J9-strong-token-value-XYZ"),
        ("::", "0123456789abcdef"),  # exactly 16 characters is enough
    ],
)
def test_admin_token_ok(host: str, token: str) -> None:
    assert admin_token_problem(_with_http(host, token)) is None


def test_admin_token_problem_from_env(tmp_path: Path) -> None:
    cfg = load(EXAMPLE, {"GATEWAY_HTTP__HOST": "0.0.0.0"})
    assert cfg.admin_token_problem() is not None
    assert "example" in (cfg.admin_token_problem() or "")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("gateway.example.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:///var/gateway.sqlite3", Path("var/gateway.sqlite3")),
        ("sqlite+aiosqlite:////var/lib/gateway/gateway.sqlite3", Path("/var/lib/gateway/gateway.sqlite3")),
        ("sqlite+aiosqlite:///db.sqlite3?timeout=5", Path("db.sqlite3")),
        ("sqlite+aiosqlite:///:memory:", None),
        ("sqlite+aiosqlite://", None),
        ("postgresql+asyncpg://u@h/db", None),
    ],
)
def test_sqlite_path(url: str, expected: Path | None) -> None:
    assert sqlite_path(url) == expected
