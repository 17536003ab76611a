"""The SMTP listener (aiosmtpd's protocol, served by our own event loop; not its threaded Controller).

The protocol side: sessions, limits, shutdown. What each recipient and message means to us is the
handler's business (gateway.smtp.handler.InboundHandler).

- Oversize: aiosmtpd enforces ``max_message_bytes`` (SIZE, RFC 1870); its ``552`` replies get the
  enhanced code ``5.3.4`` (RFC 3463: message too big for system).
- Shutdown: stop accepting, let transactions in DATA finish (bounded), then ``421 4.3.2`` and close
  the remaining sessions (RFC 5321 §3.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from gateway.smtp.handler import InboundHandler

log = logging.getLogger(__name__)

__all__ = ["SmtpListener"]


class _Smtp(SMTP):
    async def push(self, status: AnyStr) -> None:
        # aiosmtpd's size refusals lack an enhanced status code (RFC 3463 5.3.4, RFC 1870 §6.2).
        if isinstance(status, str) and status.startswith("552 Error"):
            status = "552 5.3.4 Message too big for system"
        await super().push(status)


class SmtpListener:
    """Serves :class:`InboundHandler` on ``host:port`` in the running loop."""

    def __init__(
        self,
        handler: InboundHandler,
        *,
        host: str,
        port: int,
        hostname: str,
        max_message_bytes: int,
        timeout: float = 300.0,  # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        self.timeout = timeout
        self.sessions: weakref.WeakSet[_Smtp] = weakref.WeakSet()
        self._server: asyncio.Server | None = None

    def _protocol(self) -> _Smtp:
        proto = _Smtp(
            self.handler,
            hostname=self.hostname,
            ident="ESMTP",
            data_size_limit=self.max_message_bytes,
            enable_SMTPUTF8=True,
            timeout=self.timeout,
            loop=asyncio.get_running_loop(),
        )
        self.sessions.add(proto)
        return proto

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0)."""
        self._server = await asyncio.get_running_loop().create_server(self._protocol, self.host, self.port)
        sockets = self._server.sockets or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.port
        log.info("smtp listening", extra={"host": self.host, "port": self.port})
        return self.port

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def stop(self, timeout: float) -> None:
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.handler.idle.wait(), timeout)  # a DATA in progress answers first
        for proto in list(self.sessions):
            transport: Any = getattr(proto, "transport", None)
            if transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(b"421 4.3.2 Service shutting down\r\n")
                transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))
        self._server = None
