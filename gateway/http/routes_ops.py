"""Operations: liveness, readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.context import API, CTX
from gateway.http.routing import Auth
from gateway.http.schemas import HealthOut, ReadyOut

log = logging.getLogger(__name__)

#: A readiness check slower than this counts as failed: a load balancer must get an answer quickly.
CHECK_TIMEOUT_S = 2.0


@API.route(
    "GET", "/healthz", summary="The process is up", auth=Auth.NONE, responses={200: HealthOut}, tag="ops"
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@API.route(
    "GET",
    "/readyz",
    summary="Database reachable and every component up (SMPP binds listed)",
    auth=Auth.NONE,
    responses={200: ReadyOut, 503: ReadyOut},
    tag="ops",
)
async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    checks: dict[str, dict[str, Any]] = {}

    async def database() -> tuple[bool, dict[str, Any]]:
        await ctx.db.ping()
        return True, {"backend": ctx.db.dialect}

    for name, check in {"database": database, **ctx.ready_checks}.items():
        try:
            ok, details = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except Exception as exc:  # a failing check is reported, not raised
            log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
            ok, details = False, {"error": type(exc).__name__}
        checks[name] = {"ok": ok, **details}
    ready = all(c["ok"] for c in checks.values())
    body = ReadyOut(status="ready" if ready else "not_ready", checks=checks)
    return web.json_response(text=body.model_dump_json(), status=200 if ready else 503)


@API.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    auth=Auth.NONE,
    responses={200: "Prometheus text format"},
    tag="ops",
)
async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    for refresh in ctx.metrics_refreshers:
        try:
            await asyncio.wait_for(refresh(), CHECK_TIMEOUT_S)
        except Exception as exc:  # stale gauges are better than no metrics
            log.warning("metrics refresh failed", extra={"error": repr(exc)})
    body = generate_latest(ctx.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@API.route(
    "GET",
    "/v1/openapi.json",
    summary="This document",
    auth=Auth.NONE,
    responses={200: "OpenAPI 3.1 document"},
    tag="ops",
)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(API.openapi())
