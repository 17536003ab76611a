"""Admin routes: tenants (SPEC 2.3 "Admin")."""

from __future__ import annotations

from aiohttp import web

from gateway.domain.model import SenderMode
from gateway.http.context import API, CTX
from gateway.http.errors import ApiError
from gateway.http.routing import Auth, Principal
from gateway.http.schemas import CreditsIn, TenantCreate, TenantCreated, TenantOut, TenantPatch
from gateway.http.views import tenant_out
from gateway.services.tenants import TenantSettings


def _json(model: TenantOut, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


@API.route(
    "POST",
    "/v1/tenants",
    summary="Create a tenant; returns its API key once",
    auth=Auth.ADMIN,
    body=TenantCreate,
    responses={201: TenantCreated},
    tag="tenants",
)
async def create_tenant(request: web.Request, principal: Principal, body: TenantCreate) -> web.Response:
    ctx = request.app[CTX]
    created = await ctx.tenants.create(
        TenantSettings(
            name=body.name,
            mailbox_prefix=body.mailbox_prefix,
            trusted_domains=body.trusted_domains,
            sms_sender_mode=SenderMode(body.sms_sender.mode),
            sms_alphanumeric=body.sms_sender.alphanumeric,
            sms_alphanumeric_allowed=body.sms_sender.allowed,
            attachments_save=body.attachments.save,
            attachments_quota_bytes=body.attachments.quota_bytes,
            webhook_url=body.webhook_url,
            business_hours=body.business_hours,
            sms_keywords=body.sms_keywords.model_dump() if body.sms_keywords else None,
            require_verified_sender=body.require_verified_sender,
        ),
        sms_credits=body.sms_credits,
    )
    out = tenant_out(created.tenant, ctx.tenants.mail_domain)
    full = TenantCreated(
        **out.model_dump(), api_key=created.api_key, webhook_secret=created.tenant.webhook_secret or ""
    )
    return web.json_response(
        text=full.model_dump_json(), status=201, headers={"Location": f"/v1/tenants/{out.id}"}
    )


def _visible(principal: Principal, tenant_id: str) -> None:
    # A tenant key may read its own tenant; for any other id it learns nothing, not even existence.
    if not principal.is_admin and principal.tenant_id != tenant_id:
        raise ApiError(
            404, "not_found", f"tenant {tenant_id!r} not found", {"kind": "tenant", "id": tenant_id}
        )


@API.route(
    "GET",
    "/v1/tenants/{tenant_id}",
    summary="Read a tenant (admin, or the tenant's own key)",
    auth=Auth.ANY,
    responses={200: TenantOut},
    tag="tenants",
)
async def get_tenant(request: web.Request, principal: Principal) -> web.Response:
    ctx = request.app[CTX]
    tenant_id = request.match_info["tenant_id"]
    _visible(principal, tenant_id)
    return _json(tenant_out(await ctx.tenants.get(tenant_id), ctx.tenants.mail_domain))


@API.route(
    "PATCH",
    "/v1/tenants/{tenant_id}",
    summary="Change a tenant; a new mailbox_prefix keeps every earlier one as a live alias",
    auth=Auth.ADMIN,
    body=TenantPatch,
    responses={200: TenantOut},
    tag="tenants",
)
async def patch_tenant(request: web.Request, principal: Principal, body: TenantPatch) -> web.Response:
    ctx = request.app[CTX]
    tenant_id = request.match_info["tenant_id"]
    fields = set(body.model_fields_set) - {"sms_sender", "attachments"}
    sender = body.sms_sender
    attachments = body.attachments
    if sender is not None:
        names = {
            "mode": "sms_sender_mode",
            "alphanumeric": "sms_alphanumeric",
            "allowed": "sms_alphanumeric_allowed",
        }
        fields |= {names[k] for k in sender.model_fields_set}
    if attachments is not None:
        fields |= {f"attachments_{k}" for k in attachments.model_fields_set}
    if "attachments_save" in fields and attachments is not None and attachments.save is None:
        raise ApiError(
            422, "validation_error", "attachments.save: must be true or false", {"field": "attachments.save"}
        )
    changes = TenantSettings(
        name=body.name,
        mailbox_prefix=body.mailbox_prefix,
        trusted_domains=body.trusted_domains,
        sms_sender_mode=SenderMode(sender.mode) if sender and sender.mode else None,
        sms_alphanumeric=sender.alphanumeric if sender else None,
        sms_alphanumeric_allowed=sender.allowed if sender else None,
        attachments_save=attachments.save if attachments else None,
        attachments_quota_bytes=attachments.quota_bytes if attachments else None,
        webhook_url=body.webhook_url,
        business_hours=body.business_hours,
        sms_keywords=body.sms_keywords.model_dump() if body.sms_keywords else None,
        require_verified_sender=body.require_verified_sender,
    )
    tenant = await ctx.tenants.update(tenant_id, changes, fields)
    return _json(tenant_out(tenant, ctx.tenants.mail_domain))


@API.route(
    "POST",
    "/v1/tenants/{tenant_id}/credits",
    summary="Top up the SMS balance (one credit = one part)",
    auth=Auth.ADMIN,
    body=CreditsIn,
    responses={200: TenantOut},
    tag="tenants",
)
async def top_up_credits(request: web.Request, principal: Principal, body: CreditsIn) -> web.Response:
    ctx = request.app[CTX]
    tenant = await ctx.tenants.top_up(request.match_info["tenant_id"], body.amount)
    return _json(tenant_out(tenant, ctx.tenants.mail_domain))
