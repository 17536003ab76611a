"""gateway.logs (JSON/text lines, idempotent setup) and gateway.sdnotify (real AF_UNIX socket)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import JsonFormatter, setup_logging
from gateway.sdnotify import Notifier

# --- logging -------------------------------------------------------------------------------------


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    # setup_logging mutates the process-wide root logger; put it back for the other tests.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Unserializable:
    def __str__(self) -> str:
        return "<unserializable>"


@pytest.mark.usefixtures("restore_root_logger")
def test_json_line_has_extras_and_exc(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("gateway.test")
    log.debug("filtered out")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception(
            "send failed for %s",
            "msg-1",
            extra={
                "tenant_id": 7,
                "message_id": "msg-1",
                "peer": ("10.0.0.1", 2775),
                "obj": Unserializable(),
            },
        )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "ERROR"
    assert record["logger"] == "gateway.test"
    assert record["msg"] == "send failed for msg-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    assert record["tenant_id"] == 7
    assert record["message_id"] == "msg-1"
    assert record["peer"] == ["10.0.0.1", 2775]
    assert record["obj"] == "<unserializable>"
    assert "Traceback" in record["exc"] and "ValueError: boom" in record["exc"]


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_is_idempotent_and_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    before = len(logging.getLogger().handlers)
    setup_logging("DEBUG", "json")
    setup_logging("DEBUG", "text")
    assert len(logging.getLogger().handlers) == before + 1
    logging.getLogger("gateway.t").debug("hello %s", "world", extra={"tenant_id": 3})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1  # not doubled
    assert "DEBUG" in lines[0] and "gateway.t: hello world" in lines[0] and "tenant_id=3" in lines[0]


def test_setup_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="level"):
        setup_logging("LOUD", "json")
    with pytest.raises(ValueError, match="format"):
        setup_logging("INFO", "xml")


def test_json_formatter_survives_odd_extras() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.weird = {(1, 2): "tuple key"}  # json.dumps cannot encode tuple keys even with default=
    record.ts = "clash"  # an extra must not replace the core timestamp
    out = json.loads(JsonFormatter().format(record))
    assert out["weird"] == "{(1, 2): 'tuple key'}"
    assert out["extra.ts"] == "clash" and out["ts"] != "clash"


# --- sd_notify -----------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_notifier_sends_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    with Notifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"
        assert notifier.status("draining\nREADY=1") is True
        assert sock.recv(4096) == b"STATUS=draining READY=1"  # newline cannot inject a new variable
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.reloading() is True
        assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", sock.recv(4096))
        assert notifier.stopping() is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notifier_abstract_namespace() -> None:
    name = f"gateway-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        with Notifier({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"


def test_notifier_without_socket_is_noop() -> None:
    notifier = Notifier({})
    assert notifier.enabled is False
    assert notifier.notify("READY=1") is False
    assert notifier.ready() is False


def test_notifier_socket_errors_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    with caplog.at_level(logging.DEBUG, logger="gateway.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    levels = [r.levelno for r in caplog.records if r.name == "gateway.sdnotify"]
    assert levels == [logging.WARNING, logging.DEBUG]  # repeats do not flood the log
    notifier.close()


def test_watchdog_interval() -> None:
    assert Notifier({}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    own = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": own}).watchdog_interval() == 15.0
    other = str(os.getpid() + 1)
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None
