"""systemd/gateway.service: systemd accepts every directive, and the essentials are present."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gateway.service"


def directives(text: str) -> dict[str, list[str]]:
    # A line scan rather than configparser: unit files repeat keys (Environment=, Wants=).
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_essentials() -> None:
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30"]
    assert unit["StateDirectory"] == ["gateway"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["User"] == ["gateway"]
    assert unit["Group"] == ["gateway"]
    assert unit["ExecStart"] == ["/opt/gateway/.venv/bin/gateway run -c /etc/gateway/gateway.toml"]
    assert unit["ExecStartPre"][0].endswith("gateway migrate -c /etc/gateway/gateway.toml")
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "GATEWAY_STORAGE__DATA_DIR=/var/lib/gateway" in unit["Environment"]
    assert "GATEWAY_DATABASE__URL=sqlite+aiosqlite:////var/lib/gateway/gateway.sqlite3" in unit["Environment"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    # The daemon's graceful drain (30 s default) must finish before systemd sends SIGKILL.
    assert int(unit["TimeoutStopSec"][0]) > 30


def test_unit_env_overrides_are_valid_config(tmp_path: Path) -> None:
    # The Environment= lines feed gateway.config; they must name real keys with valid values.
    from gateway.config import load, sqlite_path

    env = dict(v.split("=", 1) for v in directives(UNIT.read_text())["Environment"])
    cfg = load(Path(__file__).resolve().parents[2] / "conf" / "gateway.example.toml", env)
    assert cfg.storage.data_dir == "/var/lib/gateway"
    assert sqlite_path(cfg.database.url) == Path("/var/lib/gateway/gateway.sqlite3")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart binaries exist; /opt/gateway is not installed here.
    text = re.sub(r"^(ExecStart(?:Pre)?=)\S+.*$", r"\1/bin/true", UNIT.read_text(), flags=re.MULTILINE)
    assert text.count("=/bin/true") == 2
    copy = tmp_path / "gateway.service"
    copy.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    bad = [line for line in output.splitlines() if "Unknown key" in line or "Unknown lvalue" in line]
    assert not bad, output
    # Only lines about our own unit matter; systemd may grumble about the host's units.
    ours = [line for line in output.splitlines() if copy.name in line]
    assert not ours, output
