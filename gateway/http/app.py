"""The aiohttp application: routes, error shape, auth, request metrics."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway.http import (  # noqa: F401 - importing them registers their routes
    routes_attachments,
    routes_contacts,
    routes_messages,
    routes_ops,
    routes_rules,
    routes_templates,
    routes_tenants,
    routes_threads,
)
from gateway.http.context import API, CTX, ApiContext
from gateway.http.errors import ApiError, error_response, from_service_error
from gateway.http.routing import Auth, Principal
from gateway.services.errors import ServiceError

log = logging.getLogger(__name__)

REQUESTS = web.AppKey("requests_total", Counter)
LATENCY = web.AppKey("request_seconds", Histogram)


class _RequestMetrics:
    """The per-route children of the request counter and latency histogram, looked up once per
    (route, method, status) instead of through ``labels()`` on every request (2 % of the send
    path)."""

    def __init__(self, requests: Counter, latency: Histogram) -> None:
        self._requests = requests
        self._latency = latency
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            children = (self._requests.labels(route, method, str(status)), self._latency.labels(route))
            if len(self._children) < 4096:  # routes are a fixed set; methods and statuses few
                self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)


METRICS = web.AppKey("request_metrics", _RequestMetrics)


def build_app(ctx: ApiContext, *, max_body_bytes: int = 1 << 20) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors_and_metrics])
    app[CTX] = ctx
    app[REQUESTS] = Counter(
        "gateway_http_requests", "HTTP requests", ["route", "method", "status"], registry=ctx.registry
    )
    app[LATENCY] = Histogram(
        "gateway_http_request_seconds", "HTTP request latency", ["route"], registry=ctx.registry
    )
    app[METRICS] = _RequestMetrics(app[REQUESTS], app[LATENCY])
    API.install(app, _authenticate)
    app.on_shutdown.append(_end_long_polls)
    return app


async def _end_long_polls(app: web.Application) -> None:
    # aiohttp runs on_shutdown after it stopped accepting and before it waits for the requests in
    # flight: a GET /v1/events?wait=30 answers (empty) now instead of holding the shutdown up.
    conversations = app[CTX].conversations
    if conversations is not None:
        conversations.hub.close()


async def _authenticate(request: web.Request, needed: Auth) -> Principal | None:
    ctx = request.app[CTX]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if ctx.admin_token and hmac.compare_digest(token.encode(), ctx.admin_token.encode()):
        return Principal(is_admin=True)
    tenant_id = await ctx.tenants.authenticate(token)
    return Principal(is_admin=False, tenant_id=tenant_id) if tenant_id else None


@web.middleware
async def _errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    response = await _render_errors(request, handler)
    request.app[METRICS].observe(route, request.method, response.status, time.perf_counter() - started)
    return response


async def _render_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="gateway"'} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)
    except ServiceError as exc:
        mapped = from_service_error(exc)
        if mapped is None:
            log.exception("unmapped service error", extra={"path": request.path})
            return error_response(500, "internal_error", "internal error")
        return error_response(mapped.status, mapped.code, mapped.message, mapped.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
            415: "unsupported_media_type",
        }.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, {}, headers)
    except Exception:
        # Never tell a client our exception text; the log has it.
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return error_response(500, "internal_error", "internal error")
