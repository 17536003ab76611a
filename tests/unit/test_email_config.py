"""The email keys: defaults, secrets masked, the combinations `gateway run` refuses (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, email_problem, load, to_masked_dict

ROOT = Path(__file__).resolve().parents[2]
SECRET = "0123456789abcdef-secret"


def cfg(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "g.toml"
    path.write_text(text)
    return load(path, {})


def test_defaults_and_masking(tmp_path: Path) -> None:
    c = cfg(tmp_path, f'[smtp]\nmessage_id_secret = "{SECRET}"\n[relay]\nhost = "relay.example.com"\n')
    assert (c.relay.connections, c.relay.implicit_tls, c.relay.timeout_seconds) == (4, False, 30.0)
    assert c.smtp.check_deliverability is False and c.dkim.ed25519_private_key_file == ""
    masked = to_masked_dict(c)
    assert masked["smtp"]["message_id_secret"] == "***" and SECRET not in str(masked)
    assert email_problem(c) is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[relay]\nhost = "relay.example.com"\n', "smtp.message_id_secret"),
        ("[smtp]\nenabled = true\n", "smtp.message_id_secret"),
        (
            f'[smtp]\nmessage_id_secret = "{SECRET}"\n[dkim]\ned25519_private_key_file = "k"\n',
            "dkim.ed25519_selector",
        ),
        (
            f'[smtp]\nmessage_id_secret = "{SECRET}"\n[dkim]\nselector = "a"\n'
            'ed25519_selector = "a"\ned25519_private_key_file = "k"\n',
            "dkim.ed25519_selector",
        ),
        (
            f'[smtp]\nmessage_id_secret = "{SECRET}"\n[relay]\nhost = "relay.example.com"\n'
            'username = "u"\nstarttls = false\n',
            "relay.username",
        ),
    ],
)
def test_combinations_refused_at_run(tmp_path: Path, text: str, key: str) -> None:
    problem = email_problem(cfg(tmp_path, text))
    assert problem is not None and problem[0] == key


def test_key_rules(tmp_path: Path) -> None:
    for text, key in [
        ('[smtp]\nmessage_id_secret = "short"\n', "smtp.message_id_secret"),
        ("[relay]\nconnections = 0\n", "relay.connections"),
        ('[dkim]\ned25519_selector = "not a name"\n', "dkim.ed25519_selector"),
    ]:
        with pytest.raises(ConfigError) as err:
            cfg(tmp_path, text)
        assert err.value.key == key
    # AUTH in clear is fine to a relay on this machine.
    relay = '[relay]\nhost = "127.0.0.1"\nusername = "u"\nstarttls = false\n'
    local = cfg(tmp_path, f'[smtp]\nmessage_id_secret = "{SECRET}"\n' + relay)
    assert email_problem(local) is None


def test_run_and_check_config_exit_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[relay]\nhost = "relay.example.com"\n')
    for command in ("check-config", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "smtp.message_id_secret" in proc.stderr.strip().splitlines()[-1]
