"""Tenant routes: contacts and the SMS preview (SPEC 2.3 "Tenant")."""

from __future__ import annotations

from aiohttp import web

from gateway.domain import sms_text
from gateway.domain.model import Consent
from gateway.http.context import API, CTX
from gateway.http.errors import ApiError
from gateway.http.routing import Auth, Principal, QueryParam
from gateway.http.schemas import ContactList, ContactOut, ContactPut, PreviewIn, PreviewOut
from gateway.http.views import contact_out


@API.route(
    "PUT",
    "/v1/contacts/{contact_id}",
    summary="Create or replace a contact (the id is by convention its main phone number)",
    auth=Auth.TENANT,
    body=ContactPut,
    responses={200: ContactOut, 201: ContactOut},
    tag="contacts",
)
async def put_contact(request: web.Request, principal: Principal, body: ContactPut) -> web.Response:
    ctx = request.app[CTX]
    contact, created = await ctx.contacts.put(
        principal.tenant,
        request.match_info["contact_id"],
        name=body.name,
        phones=body.phones,
        emails=body.emails,
        consent=Consent(sms=body.consent.sms, email=body.consent.email, marketing=body.consent.marketing),
        blocked=body.blocked,
    )
    return web.json_response(text=contact_out(contact).model_dump_json(), status=201 if created else 200)


@API.route(
    "GET",
    "/v1/contacts/{contact_id}",
    summary="Read a contact",
    auth=Auth.TENANT,
    responses={200: ContactOut},
    tag="contacts",
)
async def get_contact(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    contact = await ctx.contacts.get(principal.tenant, request.match_info["contact_id"])
    return web.json_response(text=contact_out(contact).model_dump_json())


@API.route(
    "GET",
    "/v1/contacts",
    summary="Find contacts by any of their phone numbers or email addresses",
    auth=Auth.TENANT,
    responses={200: ContactList},
    tag="contacts",
    query=(
        QueryParam("phone", "any form of the number: +48500100200, 48500100200, 500 100 200"),
        QueryParam("email", "an email address (case-insensitive)"),
    ),
)
async def find_contacts(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    unknown = set(request.query) - {"phone", "email"}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(422, "validation_error", f"{name}: unknown query parameter", {"field": name})
    found = await ctx.contacts.find(
        principal.tenant, phone=request.query.get("phone"), email=request.query.get("email")
    )
    return web.json_response(text=ContactList(contacts=[contact_out(c) for c in found]).model_dump_json())


@API.route(
    "POST",
    "/v1/sms/preview",
    summary="How a text would be encoded and into how many parts it splits",
    auth=Auth.ANY,
    body=PreviewIn,
    responses={200: PreviewOut},
    tag="sms",
)
async def sms_preview(request: web.Request, principal: Principal, body: PreviewIn) -> web.Response:
    p = sms_text.preview(body.text)
    out = PreviewOut(
        encoding=p.encoding.value, chars=p.chars, parts=p.parts, chars_left_in_part=p.chars_left_in_part
    )
    return web.json_response(text=out.model_dump_json())
