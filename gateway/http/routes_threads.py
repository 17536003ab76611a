"""Conversation routes (issue 7): threads, the operators' message list, drop records, the event feed
with long-polling, webhook delivery state (attachment downloads: routes_attachments). All read-only;
every list is keyset-paginated with an opaque ``cursor`` (``next_cursor`` of the previous page)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.domain.model import MessageStatus
from gateway.http.context import API, CTX
from gateway.http.errors import ApiError
from gateway.http.routing import Auth, Principal, QueryParam
from gateway.http.schemas import SmsInfo
from gateway.http.schemas_threads import (
    AttachmentOut,
    ContextOut,
    DropList,
    DropOut,
    EventList,
    EventOut,
    ListedMessageOut,
    MessageBrief,
    MessageList,
    ThreadList,
    ThreadMessageOut,
    ThreadOut,
    ThreadSummaryOut,
    WebhookFailureList,
    WebhookFailureOut,
    WebhookStatusOut,
)
from gateway.services.conversations import MAX_WAIT_SECONDS, ConversationService, Page
from gateway.services.errors import InvalidInputError
from gateway.services.events import event_json

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_THREAD_MESSAGES = 1000

_LIMIT = QueryParam("limit", f"page size, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT})")
_CURSOR = QueryParam("cursor", "next_cursor from the previous page")
_SINCE = QueryParam("since", "ISO 8601 time with a UTC offset: only rows at or after it")


def _service(request: web.Request) -> ConversationService:
    service = request.app[CTX].conversations
    assert service is not None, "ApiContext.conversations is not set"
    return service


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each at most once; an unknown one is an error naming it (a typo such
    as ``contactid=`` must not silently list everything)."""
    out: dict[str, str] = {}
    for name in request.query:
        if name not in allowed:
            raise InvalidInputError(name, "unknown query parameter")
        values = request.query.getall(name)
        if len(values) > 1:
            raise InvalidInputError(name, "given more than once")
        out[name] = values[0]
    return out


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInputError(name, f"must be a whole number from {low} to {high}")
    return int(raw)


def _since(query: dict[str, str]) -> datetime | None:
    raw = query.get("since")
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # a '+' left unencoded arrives as ' '
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InvalidInputError(
            "since", "must be an ISO 8601 time with a UTC offset, e.g. 2026-11-24T08:00:00Z"
        )
    return value


def _json(model: Any) -> web.Response:
    return web.json_response(text=model.model_dump_json())


# --- views ---------------------------------------------------------------------------------------


def _context(row: dict[str, Any]) -> ContextOut | None:
    if row["context_type"] is None or row["context_id"] is None:
        return None
    return ContextOut(type=row["context_type"], id=row["context_id"])


def _attachment(a: dict[str, Any]) -> AttachmentOut:
    return AttachmentOut(
        id=a["id"],
        filename=a["filename"],
        content_type=a["content_type"],
        size_bytes=a["size_bytes"],
        stored=a["stored"],
        not_stored_reason=a["not_stored_reason"],
        download_url=f"/v1/attachments/{a['id']}" if a["stored"] else None,
    )


def _message_fields(m: dict[str, Any]) -> dict[str, Any]:
    sms = None
    if m["channel"] == "sms":
        sms = SmsInfo(encoding=m["sms_encoding"] or "", parts=m["sms_parts"] or 0, sender=m["sender"])
    return {
        "id": m["id"],
        "direction": m["direction"],
        "channel": m["channel"],
        "status": m["status"],
        "status_reason": m["status_reason"],
        "sender": m["sender"],
        "recipient": m["recipient"],
        "subject": m["subject"],
        "text": m["text"],
        "category": m["category"],
        "note": m["note"],
        "sms": sms,
        "attachments": [_attachment(a) for a in m.get("attachments", [])],
        "created_at": m["created_at"],
        "updated_at": m["updated_at"],
    }


def _summary_fields(t: dict[str, Any]) -> dict[str, Any]:
    last = t.get("last_message")
    return {
        "id": t["id"],
        "contact_id": t["contact_id"],
        "context": _context(t),
        "created_at": t["created_at"],
        "last_message_at": t["last_message_at"],
        "message_count": t["message_count"],
        "last_message": MessageBrief(
            id=last["id"],
            direction=last["direction"],
            channel=last["channel"],
            status=last["status"],
            text=last["text"],
            created_at=last["created_at"],
        )
        if last
        else None,
    }


def _thread_list(page: Page) -> ThreadList:
    return ThreadList(
        threads=[ThreadSummaryOut(**_summary_fields(t)) for t in page.items], next_cursor=page.next_cursor
    )


# --- threads -------------------------------------------------------------------------------------


@API.route(
    "GET",
    "/v1/threads",
    summary="Conversations, newest activity first; filter by contact and/or context",
    auth=Auth.TENANT,
    responses={200: ThreadList},
    query=(
        QueryParam("contact_id", "only this contact's threads"),
        QueryParam("context_type", "only threads with this context type, e.g. repair"),
        QueryParam("context_id", "only threads with this context id, e.g. R-1042"),
        _LIMIT,
        _CURSOR,
    ),
    tag="threads",
)
async def list_threads(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"contact_id", "context_type", "context_id", "limit", "cursor"})
    page = await _service(request).threads(
        principal.tenant,
        contact_id=q.get("contact_id"),
        context_type=q.get("context_type"),
        context_id=q.get("context_id"),
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=q.get("cursor"),
    )
    return _json(_thread_list(page))


@API.route(
    "GET",
    "/v1/contacts/{contact_id}/threads",
    summary="A contact's conversations, newest activity first (the client-card view)",
    auth=Auth.TENANT,
    responses={200: ThreadList},
    query=(_LIMIT, _CURSOR),
    tag="threads",
)
async def contact_threads(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"limit", "cursor"})
    page = await _service(request).threads(
        principal.tenant,
        contact_id=request.match_info["contact_id"],
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=q.get("cursor"),
        contact_must_exist=True,
    )
    return _json(_thread_list(page))


@API.route(
    "GET",
    "/v1/threads/{thread_id}",
    summary="A conversation: its messages in order, both directions and channels, with attachments",
    auth=Auth.TENANT,
    responses={200: ThreadOut},
    query=(
        QueryParam("limit", f"messages per page, 1-{MAX_THREAD_MESSAGES} (default {MAX_THREAD_MESSAGES})"),
        _CURSOR,
    ),
    tag="threads",
)
async def get_thread(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"limit", "cursor"})
    thread, page = await _service(request).thread(
        principal.tenant,
        request.match_info["thread_id"],
        limit=_int(q, "limit", MAX_THREAD_MESSAGES, 1, MAX_THREAD_MESSAGES),
        cursor=q.get("cursor"),
    )
    out = ThreadOut(
        **{
            **_summary_fields(thread),
            "messages": [ThreadMessageOut(**_message_fields(m)) for m in page.items],
            "next_cursor": page.next_cursor,
        }
    )
    return _json(out)


# GET /v1/attachments/{id}: gateway/http/routes_attachments.py.


# --- messages and drops ----------------------------------------------------------------------------


_STATUSES = sorted(s.value for s in MessageStatus)


@API.route(
    "GET",
    "/v1/messages",
    summary="The tenant's messages, newest first, by status and time (for operators)",
    auth=Auth.TENANT,
    responses={200: MessageList},
    query=(QueryParam("status", "one of " + ", ".join(_STATUSES)), _SINCE, _LIMIT, _CURSOR),
    tag="messages",
)
async def list_messages(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"status", "since", "limit", "cursor"})
    status = q.get("status")
    if status is not None and status not in _STATUSES:
        raise InvalidInputError("status", "must be one of " + ", ".join(_STATUSES))
    page = await _service(request).messages(
        principal.tenant,
        status=status,
        since=_since(q),
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=q.get("cursor"),
    )
    items = [
        ListedMessageOut(**_message_fields(m), thread_id=m["thread_id"], contact_id=m["contact_id"])
        for m in page.items
    ]
    return _json(MessageList(messages=items, next_cursor=page.next_cursor))


@API.route(
    "GET",
    "/v1/drops",
    summary="Drop records (inbound messages not accepted), newest first",
    auth=Auth.ANY,
    responses={200: DropList},
    query=(
        _SINCE,
        QueryParam("tenant_id", "admin token only: that tenant's drops (default: the drops of no tenant)"),
        _LIMIT,
        _CURSOR,
    ),
    tag="threads",
)
async def list_drops(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"since", "tenant_id", "limit", "cursor"})
    if principal.is_admin:
        tenant_id = q.get("tenant_id")  # None: nobody's drops
    elif "tenant_id" in q:
        raise ApiError(403, "forbidden", "tenant_id= needs the admin token", {"field": "tenant_id"})
    else:
        tenant_id = principal.tenant
    page = await _service(request).drops(
        tenant_id,
        since=_since(q),
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=q.get("cursor"),
    )
    drops = [
        DropOut(
            id=d["id"],
            tenant_id=d["tenant_id"],
            reason=d["reason"],
            channel=d["channel"],
            sender=d["sender"],
            recipient=d["recipient"],
            size_bytes=d["size_bytes"],
            detail=d["detail"],
            email_message_id=d["email_message_id"],
            subject=d["subject"],
            created_at=d["created_at"],
        )
        for d in page.items
    ]
    return _json(DropList(drops=drops, next_cursor=page.next_cursor))


# --- events and webhooks -------------------------------------------------------------------------


@API.route(
    "GET",
    "/v1/events",
    summary="The tenant's event feed, oldest first; wait= long-polls until an event comes",
    auth=Auth.TENANT,
    responses={200: EventList},
    query=(
        QueryParam("after", "next from the previous answer, or an event's cursor (default: from the first)"),
        QueryParam("limit", f"1-{MAX_LIMIT} (default {DEFAULT_LIMIT})"),
        QueryParam("wait", f"seconds to wait for an event when there is none yet, 0-{MAX_WAIT_SECONDS:g}"),
    ),
    tag="events",
)
async def list_events(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"after", "limit", "wait"})
    wait_raw = q.get("wait", "0")
    try:
        wait = float(wait_raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise InvalidInputError("wait", f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
    events, nxt = await _service(request).events(
        principal.tenant,
        after=q.get("after"),
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        wait=wait,
    )
    out = EventList(events=[EventOut.model_validate(e) for e in events], next=nxt)
    return _json(out)


@API.route(
    "GET",
    "/v1/webhooks",
    summary="Webhook delivery state: how far delivered, what is pending, the last error",
    auth=Auth.TENANT,
    responses={200: WebhookStatusOut},
    tag="events",
)
async def webhook_status(request: web.Request, principal: Principal) -> web.Response:
    _query(request, set())
    tenant_id = principal.tenant
    tenant = await request.app[CTX].tenants.get(tenant_id)
    state = await _service(request).webhook_status(tenant_id)
    out = WebhookStatusOut(
        url=tenant.webhook_url,
        delivered_through=state["last_event_id"] if state else None,
        pending=state["pending"] if state else 0,
        attempts=state["attempts"] if state else 0,
        next_attempt_at=state["next_attempt_at"] if state else None,
        failing_since=state["failing_since"] if state else None,
        last_error=state["last_error"] if state else None,
        last_delivered_at=state["last_delivered_at"] if state else None,
    )
    return _json(out)


@API.route(
    "GET",
    "/v1/webhooks/failed",
    summary="Events whose webhook delivery was given up after the retry window, newest first",
    auth=Auth.TENANT,
    responses={200: WebhookFailureList},
    query=(_SINCE, _LIMIT, _CURSOR),
    tag="events",
)
async def webhook_failures(request: web.Request, principal: Principal) -> web.Response:
    q = _query(request, {"since", "limit", "cursor"})
    page = await _service(request).webhook_failures(
        principal.tenant,
        since=_since(q),
        limit=_int(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=q.get("cursor"),
    )
    failures = [
        WebhookFailureOut(
            event_id=f["event_id"],
            event_type=f["event_type"],
            url=f["url"],
            attempts=f["attempts"],
            last_error=f["last_error"],
            first_failed_at=f["first_failed_at"],
            failed_at=f["failed_at"],
            event=EventOut.model_validate(
                event_json(
                    f["event_id"],
                    f["event_type"],
                    f["payload"],
                    f["event_created_at"],
                    (f["event_xid"], f["event_id"]),
                )
            )
            if f["payload"] is not None
            else None,
        )
        for f in page.items
    ]
    return _json(WebhookFailureList(failures=failures, next_cursor=page.next_cursor))
