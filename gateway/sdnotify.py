"""Minimal sd_notify(3) client (stdlib only) for Type=notify and the systemd watchdog.

Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op, so the daemon can call these
unconditionally. Notification failures are logged, never raised: losing a STATUS= line must not
take the gateway down (a missed WATCHDOG=1 will be noticed by systemd anyway).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

# Sends normally complete instantly; the timeout only bounds a wedged receiver so the event
# loop thread is never stuck here for long.
_SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = self._parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None
        self._warned = False

    @staticmethod
    def _parse_address(value: str) -> str | None:
        if not value:
            return None
        if value.startswith("@"):
            # Abstract namespace: systemd writes '@', the kernel wants a leading NUL.
            return "\0" + value[1:]
        if value.startswith("/"):
            return value
        # e.g. "vsock:..." (VMs); not supported here, and not used by a plain service.
        log.warning("unsupported NOTIFY_SOCKET address %r; notifications disabled", value)
        return None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send newline-separated VAR=value assignments; True if the datagram was sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(_SEND_TIMEOUT_SECONDS)
                self._sock = sock
            self._sock.sendto(state.encode("utf-8"), self._address)
        except OSError as exc:
            # First failure at WARNING, repeats at DEBUG: a dead socket and a 15 s watchdog
            # ping would otherwise flood the log.
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "sd_notify %r failed: %s", state.split("\n", 1)[0], exc)
            self._reset()
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253) and ignored before.
        # time.monotonic_ns uses CLOCK_MONOTONIC on Linux, the clock systemd compares against.
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        # A newline would start a new assignment (and could inject e.g. READY=1).
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog_interval(self) -> float | None:
        """Recommended ping period in seconds (half of WatchdogSec), or None if no watchdog."""
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None  # the watchdog is meant for another process (e.g. our parent)
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        # Half the timeout, as sd_watchdog_enabled(3) recommends, so one late ping is tolerated.
        return usec / 1_000_000 / 2

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
