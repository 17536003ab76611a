"""Tenant routes: message templates and their preview (issue 8)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.domain import sms_text
from gateway.http.context import API, CTX, ApiContext
from gateway.http.routing import Auth, Principal
from gateway.http.schemas_notify import (
    RenderedEmail,
    RenderedSms,
    TemplateEmailIn,
    TemplateList,
    TemplateOut,
    TemplatePut,
    TemplateRendered,
    TemplateRenderIn,
    TemplateSmsIn,
)
from gateway.services.notify import NotifyService
from gateway.services.templates import variables_of


def notify_of(ctx: ApiContext) -> NotifyService:
    """The context's NotifyService; one built from the outbound service (same database and clock)
    when the embedding code did not set one."""
    if ctx.notify is None:
        ctx.notify = NotifyService(ctx.outbound.db, ctx.outbound.clock, ctx.outbound)
    return ctx.notify


def template_out(row: dict[str, Any]) -> TemplateOut:
    sms = TemplateSmsIn(text=row["sms_text"]) if row["sms_text"] is not None else None
    email = (
        TemplateEmailIn(subject=row["email_subject"], text=row["email_text"], html=row["email_html"])
        if row["email_text"] is not None
        else None
    )
    return TemplateOut(
        name=row["name"],
        description=row["description"],
        sms=sms,
        email=email,
        variables=variables_of(row),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@API.route(
    "PUT",
    "/v1/templates/{name}",
    summary="Create or replace a template (Jinja2, sandboxed; checked when saved)",
    auth=Auth.TENANT,
    body=TemplatePut,
    responses={200: TemplateOut, 201: TemplateOut},
    tag="templates",
)
async def put_template(request: web.Request, principal: Principal, body: TemplatePut) -> web.Response:
    service = notify_of(request.app[CTX]).templates
    row, created = await service.put(
        principal.tenant,
        request.match_info["name"],
        {
            "description": body.description,
            "sms_text": body.sms.text if body.sms else None,
            "email_subject": body.email.subject if body.email else None,
            "email_text": body.email.text if body.email else None,
            "email_html": body.email.html if body.email else None,
        },
    )
    return web.json_response(text=template_out(row).model_dump_json(), status=201 if created else 200)


@API.route(
    "GET",
    "/v1/templates/{name}",
    summary="Read a template",
    auth=Auth.TENANT,
    responses={200: TemplateOut},
    tag="templates",
)
async def get_template(request: web.Request, principal: Principal) -> web.Response:
    service = notify_of(request.app[CTX]).templates
    row = await service.get(principal.tenant, request.match_info["name"])
    return web.json_response(text=template_out(row).model_dump_json())


@API.route(
    "GET",
    "/v1/templates",
    summary="The tenant's templates, by name",
    auth=Auth.TENANT,
    responses={200: TemplateList},
    tag="templates",
)
async def list_templates(request: web.Request, principal: Principal) -> web.Response:
    service = notify_of(request.app[CTX]).templates
    rows = await service.list_all(principal.tenant)
    return web.json_response(text=TemplateList(templates=[template_out(r) for r in rows]).model_dump_json())


@API.route(
    "DELETE",
    "/v1/templates/{name}",
    summary="Delete a template (messages already accepted keep their text; rules using it report an error)",
    auth=Auth.TENANT,
    responses={204: "deleted"},
    tag="templates",
)
async def delete_template(request: web.Request, principal: Principal) -> web.Response:
    service = notify_of(request.app[CTX]).templates
    await service.delete(principal.tenant, request.match_info["name"])
    return web.Response(status=204)


@API.route(
    "POST",
    "/v1/templates/{name}/render",
    summary="Preview a template with variables (SMS: encoding and part count); sends nothing",
    auth=Auth.TENANT,
    body=TemplateRenderIn,
    responses={200: TemplateRendered},
    tag="templates",
)
async def render_template(request: web.Request, principal: Principal, body: TemplateRenderIn) -> web.Response:
    service = notify_of(request.app[CTX]).templates
    rendered = await service.preview(principal.tenant, request.match_info["name"], body.variables)
    sms = None
    if rendered.sms_text is not None:
        p = sms_text.preview(rendered.sms_text)
        sms = RenderedSms(
            text=rendered.sms_text,
            encoding=p.encoding.value,
            chars=p.chars,
            parts=p.parts,
            chars_left_in_part=p.chars_left_in_part,
        )
    email = None
    if rendered.email_text is not None:
        email = RenderedEmail(
            subject=rendered.email_subject, text=rendered.email_text, html=rendered.email_html
        )
    return web.json_response(text=TemplateRendered(sms=sms, email=email).model_dump_json())
