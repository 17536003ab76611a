"""HTTP wiring: the aiohttp app (gateway/http) on ``[http] host:port``. Started last, so at shutdown
it stops accepting first; in-flight requests get ``[daemon] shutdown_timeout_seconds`` to finish."""

from __future__ import annotations

from aiohttp import web

from gateway.http.app import build_app
from gateway.runtime.base import StartupError, Wiring, log

__all__ = ["start_http"]


async def start_http(w: Wiring) -> int:
    """Start serving; returns the port bound (the configured one, or the kernel's pick for 0)."""
    cfg = w.config.http
    app = build_app(w.ctx, max_body_bytes=cfg.max_body_bytes)
    # shutdown_timeout: how long in-flight requests may finish after we stop accepting.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=w.config.daemon.shutdown_timeout_seconds,
    )
    await runner.setup()
    w.stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, cfg.host, cfg.port)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on http {cfg.host}:{cfg.port}: {exc.strerror}") from None
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port: int = sockets[0].getsockname()[1] if sockets else cfg.port
    log.info("http listening", extra={"host": cfg.host, "port": port})
    return port
