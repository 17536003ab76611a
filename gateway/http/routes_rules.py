"""Tenant routes: event rules and the application's events that fire them (issue 8)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.context import API, CTX
from gateway.http.errors import ApiError
from gateway.http.routes_templates import notify_of
from gateway.http.routing import Auth, Principal, QueryParam
from gateway.http.schemas_notify import (
    AppEventIn,
    AppEventResult,
    RuleCreate,
    RuleList,
    RuleOut,
    RulePatch,
)
from gateway.services.rules import AppEvent, RuleService, RuleSpec


def _rules(request: web.Request) -> RuleService:
    notify = notify_of(request.app[CTX])
    return RuleService(notify, notify.clock)


def rule_out(row: dict[str, Any]) -> RuleOut:
    return RuleOut.model_validate({k: row[k] for k in RuleOut.model_fields})


@API.route(
    "POST",
    "/v1/rules",
    summary="Create an event rule: an app event matching it sends a template",
    auth=Auth.TENANT,
    body=RuleCreate,
    responses={201: RuleOut},
    tag="rules",
)
async def create_rule(request: web.Request, principal: Principal, body: RuleCreate) -> web.Response:
    spec = RuleSpec(**{**body.model_dump(), "channels": tuple(body.channels)})
    row = await _rules(request).create(principal.tenant, spec)
    return web.json_response(text=rule_out(row).model_dump_json(), status=201)


@API.route(
    "GET",
    "/v1/rules",
    summary="The tenant's rules, oldest first",
    auth=Auth.TENANT,
    responses={200: RuleList},
    query=(QueryParam("event", "only the rules for this event type"),),
    tag="rules",
)
async def list_rules(request: web.Request, principal: Principal) -> web.Response:
    unknown = set(request.query) - {"event"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "validation_error", f"{name}: unknown query parameter", {"field": name})
    rows = await _rules(request).list_all(principal.tenant, request.query.get("event"))
    return web.json_response(text=RuleList(rules=[rule_out(r) for r in rows]).model_dump_json())


@API.route(
    "GET",
    "/v1/rules/{rule_id}",
    summary="Read a rule",
    auth=Auth.TENANT,
    responses={200: RuleOut},
    tag="rules",
)
async def get_rule(request: web.Request, principal: Principal) -> web.Response:
    row = await _rules(request).get(principal.tenant, request.match_info["rule_id"])
    return web.json_response(text=rule_out(row).model_dump_json())


@API.route(
    "PATCH",
    "/v1/rules/{rule_id}",
    summary="Change a rule, e.g. disable it with {enabled: false}",
    auth=Auth.TENANT,
    body=RulePatch,
    responses={200: RuleOut},
    tag="rules",
)
async def patch_rule(request: web.Request, principal: Principal, body: RulePatch) -> web.Response:
    changes = body.model_dump(exclude_unset=True)
    if "channels" in changes and changes["channels"] is not None:
        changes["channels"] = tuple(changes["channels"])
    for name in ("event", "template", "channels", "match", "category", "business_hours_only", "enabled"):
        if name in changes and changes[name] is None:
            raise ApiError(422, "validation_error", f"{name}: must not be null", {"field": name})
    row = await _rules(request).update(principal.tenant, request.match_info["rule_id"], changes)
    return web.json_response(text=rule_out(row).model_dump_json())


@API.route(
    "DELETE",
    "/v1/rules/{rule_id}",
    summary="Delete a rule (messages it already scheduled stay scheduled)",
    auth=Auth.TENANT,
    responses={204: "deleted"},
    tag="rules",
)
async def delete_rule(request: web.Request, principal: Principal) -> web.Response:
    await _rules(request).delete(principal.tenant, request.match_info["rule_id"])
    return web.Response(status=204)


@API.route(
    "POST",
    "/v1/app-events",
    summary="Report an application event; every enabled matching rule sends its template",
    auth=Auth.TENANT,
    body=AppEventIn,
    responses={200: AppEventResult},
    tag="rules",
)
async def post_app_event(request: web.Request, principal: Principal, body: AppEventIn) -> web.Response:
    event = AppEvent(
        type=body.type,
        contact_id=body.contact_id,
        data=body.data,
        context=(body.context.type, body.context.id) if body.context else None,
        id=body.id,
    )
    results = await _rules(request).fire(principal.tenant, event)
    out = AppEventResult.model_validate({"type": body.type, "results": results})
    return web.json_response(text=out.model_dump_json())
