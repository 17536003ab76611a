"""Tenant routes: sending, reading and cancelling messages (SPEC 2.3)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.http.context import API, CTX
from gateway.http.errors import ApiError
from gateway.http.routes_templates import notify_of
from gateway.http.routing import Auth, Principal, QueryParam
from gateway.http.schemas import EmailOut, MessageCreate, MessageOut, MessagesAccepted, SmsInfo, SmsPartOut
from gateway.http.schemas_notify import MessagesCancelled
from gateway.services.notify import NotifyOptions
from gateway.services.outbound import SendRequest, request_hash


@API.route(
    "POST",
    "/v1/messages",
    summary="Send a text to a contact by SMS and/or email; every channel is checked before anything is sent",
    auth=Auth.TENANT,
    body=MessageCreate,
    responses={202: MessagesAccepted},
    tag="messages",
)
async def send_message(request: web.Request, principal: Principal, body: MessageCreate) -> web.Response:
    ctx = request.app[CTX]
    req = SendRequest(
        channels=tuple(body.channels),
        text=body.text,
        contact_id=body.contact_id,
        to_phone=body.to.phone if body.to else None,
        to_email=body.to.email if body.to else None,
        subject=body.subject,
        html=body.html,
        context=(body.context.type, body.context.id) if body.context else None,
        thread_id=body.thread_id,
        category=body.category,
        send_at=body.send_at,
        idempotency_key=body.idempotency_key,
        sms_sender=body.sms_sender,
        dedupe_key=body.dedupe_key,
    )
    # Issue 8: template, delay, business hours -> the plain request (no I/O when none is used).
    options = NotifyOptions(
        template=body.template,
        variables=body.variables,
        delay=body.delay,
        business_hours_only=body.business_hours_only,
        location=body.location,
    )
    if not options.empty:
        req = await notify_of(ctx).prepare(principal.tenant, req, options)
    # The body's hash only matters for an idempotency key (a repeat must be the same request).
    digest = request_hash(body.model_dump(mode="json", exclude_unset=True)) if body.idempotency_key else ""
    status, result = await ctx.outbound.send(principal.tenant, req, digest)
    return web.json_response(text=MessagesAccepted.model_validate(result).model_dump_json(), status=status)


def _message_out(message: dict[str, Any], parts: list[dict[str, Any]]) -> MessageOut:
    sms = None
    if message["channel"] == "sms":
        sms = SmsInfo(
            encoding=message["sms_encoding"] or "", parts=message["sms_parts"] or 0, sender=message["sender"]
        )
    return MessageOut(
        id=message["id"],
        direction=message["direction"],
        channel=message["channel"],
        status=message["status"],
        status_reason=message["status_reason"],
        thread_id=message["thread_id"],
        category=message["category"],
        sender=message["sender"],
        recipient=message["recipient"],
        text=message["text"],
        sms=sms,
        sms_parts=[
            SmsPartOut(
                part_no=p["part_no"],
                status=p["status"],
                connector=p["connector"],
                smsc_message_id=p["smsc_message_id"],
                status_reason=p["status_reason"],
            )
            for p in parts
        ]
        if message["channel"] == "sms"
        else None,
        email=EmailOut(
            subject=message["subject"],
            message_id=message["email_message_id"],
            in_reply_to=message["in_reply_to"],
            html=message["html"] is not None,
        )
        if message["channel"] == "email"
        else None,
        send_at=message["send_at"],
        created_at=message["created_at"],
        updated_at=message["updated_at"],
    )


@API.route(
    "GET",
    "/v1/messages/{message_id}",
    summary="A message and its status (SMS: per part)",
    auth=Auth.TENANT,
    responses={200: MessageOut},
    tag="messages",
)
async def get_message(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    message, parts = await ctx.messages.get(principal.tenant, request.match_info["message_id"])
    return web.json_response(text=_message_out(message, parts).model_dump_json())


@API.route(
    "DELETE",
    "/v1/messages/{message_id}",
    summary="Cancel a queued or scheduled message (credits come back)",
    auth=Auth.TENANT,
    responses={200: MessageOut},
    tag="messages",
)
async def cancel_message(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    message = await ctx.messages.cancel(principal.tenant, request.match_info["message_id"])
    _, parts = await ctx.messages.get(principal.tenant, message["id"])
    return web.json_response(text=_message_out(message, parts).model_dump_json())


@API.route(
    "DELETE",
    "/v1/messages",
    summary="Cancel the queued or scheduled messages a dedupe_key names (credits come back)",
    auth=Auth.TENANT,
    responses={200: MessagesCancelled},
    query=(QueryParam("dedupe_key", "the key given when the messages were sent", required=True),),
    tag="messages",
)
async def cancel_by_dedupe_key(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    unknown = set(request.query) - {"dedupe_key"}
    key = request.query.get("dedupe_key", "")
    if unknown or not key:
        name = sorted(unknown)[0] if unknown else "dedupe_key"
        reason = "unknown query parameter" if unknown else "is required"
        raise ApiError(422, "validation_error", f"{name}: {reason}", {"field": name})
    cancelled = await notify_of(ctx).cancel_key(principal.tenant, key)
    out = []
    for message in cancelled:
        _, parts = await ctx.messages.get(principal.tenant, message["id"])
        out.append(_message_out(message, parts))
    return web.json_response(text=MessagesCancelled(messages=out).model_dump_json())
