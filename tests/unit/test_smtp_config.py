"""The inbound SMTP listener's keys: defaults, rules, the TLS pair `gateway run` insists on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, email_problem, load
from gateway.smtp.server import SmtpLimits

SECRET = "0123456789abcdef-secret"


def cfg(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "g.toml"
    path.write_text(text)
    return load(path, {})


def test_defaults_match_the_listener_defaults(tmp_path: Path) -> None:
    s = cfg(tmp_path, "").smtp
    d = SmtpLimits()
    assert (s.tls_cert, s.tls_key) == ("", "")
    assert (
        s.max_recipients,
        s.max_connections,
        s.max_connections_per_ip,
        s.connection_rate_per_ip,
        s.limit_exempt_networks,
        s.idle_timeout_seconds,
        s.max_session_seconds,
        s.max_commands,
        s.max_errors,
    ) == (
        d.max_recipients,
        d.max_connections,
        d.max_connections_per_ip,
        d.connection_rate_per_ip,
        d.exempt_networks,
        d.idle_timeout,
        d.max_session_seconds,
        d.max_commands,
        d.max_errors,
    )


def test_keys_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[smtp]\nmax_connections = 0\nlimit_exempt_networks = ["10.0.0.0/8"]\n')
    c = load(path, {"GATEWAY_SMTP__MAX_ERRORS": "5", "GATEWAY_SMTP__IDLE_TIMEOUT_SECONDS": "60"})
    assert (c.smtp.max_connections, c.smtp.limit_exempt_networks) == (0, ("10.0.0.0/8",))
    assert (c.smtp.max_errors, c.smtp.idle_timeout_seconds) == (5, 60.0)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_recipients = 0", "smtp.max_recipients"),
        ("max_connections = -1", "smtp.max_connections"),
        ("connection_rate_per_ip = -5", "smtp.connection_rate_per_ip"),
        ("idle_timeout_seconds = 0", "smtp.idle_timeout_seconds"),
        ('limit_exempt_networks = ["10.0.0.5/8"]', "smtp.limit_exempt_networks"),
    ],
)
def test_key_rules(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(tmp_path, f"[smtp]\n{text}\n")
    assert err.value.key.startswith(key)


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    base = f'[smtp]\nmessage_id_secret = "{SECRET}"\n'
    assert email_problem(cfg(tmp_path, base + 'tls_cert = "c.pem"\n')) == (
        "smtp.tls_key",
        "smtp.tls_cert and smtp.tls_key are set together (STARTTLS needs both)",
    )
    problem = email_problem(cfg(tmp_path, base + 'tls_key = "k.pem"\n'))
    assert problem is not None and problem[0] == "smtp.tls_cert"
    assert email_problem(cfg(tmp_path, base + 'tls_cert = "c.pem"\ntls_key = "k.pem"\n')) is None


def test_check_config_names_the_missing_tls_key(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'[smtp]\nmessage_id_secret = "{SECRET}"\ntls_cert = "c.pem"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "smtp.tls_key" in proc.stderr.strip().splitlines()[-1]
