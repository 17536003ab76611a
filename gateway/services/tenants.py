"""Tenant use cases: create, read, change (prefix renames keep aliases), credits, API key auth."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ids import new_id
from gateway.domain.mailbox import prefix_from_name, prefix_problem
from gateway.domain.mo import KeywordProblem, check_keywords
from gateway.domain.model import SenderMode, Tenant
from gateway.domain.schedule import ScheduleError, parse_business_hours
from gateway.services.errors import ConflictError, InvalidInputError, NotFoundError
from gateway.services.normalize import normalize_domain
from gateway.services.webhooks import check_webhook_url
from gateway.storage import tenants as repo
from gateway.storage import webhooks as webhooks_repo
from gateway.storage.db import Database

T = TypeVar("T")

KEY_CACHE_SECONDS = 30.0
KEY_CACHE_SIZE = 10_000

API_KEY_PREFIX = "gwk_"
#: 3GPP TS 23.040 §9.1.2.5: an alphanumeric originator is at most 11 GSM characters. We allow the
#: letters, digits, space and the few punctuation marks every carrier passes through unchanged.
ALNUM_SENDER_RE = re.compile(r"[A-Za-z0-9 .\-&]{1,11}")


def hash_api_key(key: str) -> str:
    # Keys are 256 random bits, so a plain SHA-256 resists guessing; no password stretching needed.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Everything a tenant can have set; ``None`` in an update means 'leave as it is'."""

    name: str | None = None
    mailbox_prefix: str | None = None
    trusted_domains: Sequence[str] | None = None
    sms_sender_mode: SenderMode | None = None
    sms_alphanumeric: str | None = None
    sms_alphanumeric_allowed: Sequence[str] | None = None
    attachments_save: bool | None = None
    attachments_quota_bytes: int | None = None
    webhook_url: str | None = None
    business_hours: dict[str, Any] | None = None
    #: {"stop": [...], "start": [...]}; a missing list keeps the default. None: the defaults.
    sms_keywords: Mapping[str, Sequence[str] | None] | None = None
    #: Refuse inbound email without an aligned DKIM/SPF pass (issue 6).
    require_verified_sender: bool | None = None


@dataclass(frozen=True, slots=True)
class CreatedTenant:
    tenant: Tenant
    api_key: str


class TenantService:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime],
        *,
        mail_domain: str,
        default_quota_bytes: int,
        webhook_url_check: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.mail_domain = mail_domain
        self.default_quota_bytes = default_quota_bytes
        #: Why a webhook URL is refused, or None (SSRF: resolves it, refuses private addresses).
        #: Default: the URL's form and IP literals only (no DNS).
        self.webhook_url_check = webhook_url_check or (
            lambda url: check_webhook_url(url, resolver=None, allow_private=False)
        )
        self._key_cache: dict[str, tuple[str, float]] = {}

    def mailbox_address(self, prefix: str) -> str:
        return f"{prefix}@{self.mail_domain}"

    async def create(self, settings: TenantSettings, *, sms_credits: int = 0) -> CreatedTenant:
        name = (settings.name or "").strip()
        if not name:
            raise InvalidInputError("name", "must not be empty")
        mode = settings.sms_sender_mode or SenderMode.POOL
        alnum = _check_sender(mode, settings.sms_alphanumeric)
        allowed = _check_allowed(settings.sms_alphanumeric_allowed or (), alnum)
        domains = _check_domains(settings.trusted_domains or ())
        keywords = _check_keywords(settings.sms_keywords)
        quota = (
            self.default_quota_bytes
            if settings.attachments_quota_bytes is None
            else settings.attachments_quota_bytes
        )
        if quota < 0:
            raise InvalidInputError("attachments.quota_bytes", "must not be negative")
        if sms_credits < 0:
            raise InvalidInputError("sms_credits", "must not be negative")
        explicit_prefix = settings.mailbox_prefix
        if explicit_prefix is not None and (problem := prefix_problem(explicit_prefix)):
            raise InvalidInputError("mailbox_prefix", problem)
        await self._check_webhook(settings.webhook_url)
        tenant_id = new_id("ten")
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        webhook_secret = secrets.token_urlsafe(32)
        now = self.clock()

        async def unit(conn: AsyncConnection) -> Tenant:
            prefix = explicit_prefix or await _free_prefix(conn, prefix_from_name(name))
            if await repo.prefix_owner(conn, prefix) is not None:
                raise ConflictError("prefix_taken", "mailbox_prefix", f"{prefix!r} is already in use")
            await repo.insert_tenant(
                conn,
                {
                    "id": tenant_id,
                    "name": name,
                    "sms_sender_mode": mode.value,
                    "sms_alphanumeric": alnum,
                    "sms_alphanumeric_allowed": allowed or None,
                    "attachments_save": bool(settings.attachments_save),
                    "attachments_quota_bytes": quota,
                    "attachments_used_bytes": 0,
                    "sms_credits": 0,
                    "webhook_url": settings.webhook_url,
                    "webhook_secret": webhook_secret,
                    "business_hours": _check_hours(settings.business_hours),
                    "sms_keywords": keywords,
                    "require_verified_sender": bool(settings.require_verified_sender),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await repo.add_prefix(conn, tenant_id, prefix, now)
            await repo.replace_trusted_domains(conn, tenant_id, domains)
            await repo.insert_api_key(conn, tenant_id, hash_api_key(api_key), api_key[:8], now)
            if settings.webhook_url:
                await webhooks_repo.ensure_cursor(conn, tenant_id, now)
            if sms_credits:
                await repo.change_credits(conn, tenant_id, sms_credits, "top_up", now)
            tenant = await repo.load_tenant(conn, tenant_id)
            assert tenant is not None
            return tenant

        tenant = await self._write(unit)
        return CreatedTenant(tenant=tenant, api_key=api_key)

    async def get(self, tenant_id: str) -> Tenant:
        tenant = await self.db.read(lambda conn: repo.load_tenant(conn, tenant_id))
        if tenant is None:
            raise NotFoundError("tenant", tenant_id)
        return tenant

    async def update(self, tenant_id: str, changes: TenantSettings, fields_set: set[str]) -> Tenant:
        """Apply the fields in ``fields_set`` (a PATCH: absent fields are left alone)."""
        values: dict[str, Any] = {}
        if "name" in fields_set:
            name = (changes.name or "").strip()
            if not name:
                raise InvalidInputError("name", "must not be empty")
            values["name"] = name
        new_prefix = changes.mailbox_prefix if "mailbox_prefix" in fields_set else None
        if "mailbox_prefix" in fields_set:
            if new_prefix is None:
                raise InvalidInputError("mailbox_prefix", "must not be null")
            if problem := prefix_problem(new_prefix):
                raise InvalidInputError("mailbox_prefix", problem)
        domains = _check_domains(changes.trusted_domains or ()) if "trusted_domains" in fields_set else None
        if "attachments_save" in fields_set:
            values["attachments_save"] = bool(changes.attachments_save)
        if "attachments_quota_bytes" in fields_set:
            if changes.attachments_quota_bytes is None or changes.attachments_quota_bytes < 0:
                raise InvalidInputError("attachments.quota_bytes", "must be a number >= 0")
            values["attachments_quota_bytes"] = changes.attachments_quota_bytes
        if "webhook_url" in fields_set:
            await self._check_webhook(changes.webhook_url)
            values["webhook_url"] = changes.webhook_url
        if "business_hours" in fields_set:
            values["business_hours"] = _check_hours(changes.business_hours)
        if "sms_keywords" in fields_set:
            values["sms_keywords"] = _check_keywords(changes.sms_keywords)
        if "require_verified_sender" in fields_set:
            if changes.require_verified_sender is None:
                raise InvalidInputError("require_verified_sender", "must be true or false")
            values["require_verified_sender"] = changes.require_verified_sender
        sender_fields = {"sms_sender_mode", "sms_alphanumeric", "sms_alphanumeric_allowed"}
        sender_touched = bool(sender_fields & fields_set)
        now = self.clock()

        async def unit(conn: AsyncConnection) -> Tenant:
            current = await repo.load_tenant(conn, tenant_id)
            if current is None:
                raise NotFoundError("tenant", tenant_id)
            if sender_touched:
                mode = changes.sms_sender_mode or current.sms_sender_mode
                alnum = (
                    changes.sms_alphanumeric if "sms_alphanumeric" in fields_set else current.sms_alphanumeric
                )
                values["sms_sender_mode"] = mode.value
                values["sms_alphanumeric"] = _check_sender(mode, alnum)
                allowed = (
                    changes.sms_alphanumeric_allowed or ()
                    if "sms_alphanumeric_allowed" in fields_set
                    else current.sms_alphanumeric_allowed
                )
                checked = _check_allowed(allowed, values["sms_alphanumeric"])
                values["sms_alphanumeric_allowed"] = checked or None
            if new_prefix is not None and new_prefix != current.mailbox_prefix:
                owner = await repo.prefix_owner(conn, new_prefix)
                if owner is not None and owner[0] != tenant_id:
                    raise ConflictError("prefix_taken", "mailbox_prefix", f"{new_prefix!r} is already in use")
                await repo.make_prefix_current(conn, tenant_id, new_prefix, now)
            if domains is not None:
                await repo.replace_trusted_domains(conn, tenant_id, domains)
            if "webhook_url" in values:
                if values["webhook_url"]:
                    await webhooks_repo.ensure_cursor(conn, tenant_id, now)
                else:
                    await webhooks_repo.drop_cursor(conn, tenant_id)
            await repo.update_tenant(conn, tenant_id, {**values, "updated_at": now})
            tenant = await repo.load_tenant(conn, tenant_id)
            assert tenant is not None
            return tenant

        return await self._write(unit)

    async def top_up(self, tenant_id: str, amount: int) -> Tenant:
        if amount <= 0:
            raise InvalidInputError("amount", "must be a positive whole number of credits")
        now = self.clock()

        async def unit(conn: AsyncConnection) -> Tenant:
            if await repo.change_credits(conn, tenant_id, amount, "top_up", now) is None:
                raise NotFoundError("tenant", tenant_id)
            tenant = await repo.load_tenant(conn, tenant_id)
            assert tenant is not None
            return tenant

        return await self._write(unit)

    async def authenticate(self, api_key: str) -> str | None:
        """The tenant id an API key belongs to, or None (unknown or revoked).

        Known keys are remembered for ``KEY_CACHE_SECONDS`` (a database read per request was a tenth
        of the send path's cost); a revoked key therefore stops working within that time.
        """
        if not api_key.startswith(API_KEY_PREFIX):
            return None
        key_hash = hash_api_key(api_key)
        now = time.monotonic()
        cached = self._key_cache.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        tenant_id = await self.db.read(lambda conn: repo.tenant_for_key_hash(conn, key_hash))
        if tenant_id is not None:
            if len(self._key_cache) >= KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[key_hash] = (tenant_id, now + KEY_CACHE_SECONDS)
        return tenant_id

    async def _check_webhook(self, url: str | None) -> None:
        if url is not None and (problem := await self.webhook_url_check(url)):
            raise InvalidInputError("webhook_url", problem)

    async def _write(self, unit: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        try:
            return await self.db.write(unit)
        except IntegrityError as exc:
            # Two concurrent requests (PostgreSQL) raced for the same prefix: the loser learns here.
            if "mailbox_prefixes" in str(exc.orig) or "pk_mailbox_prefixes" in str(exc.orig):
                raise ConflictError("prefix_taken", "mailbox_prefix", "is already in use") from None
            raise


async def _free_prefix(conn: AsyncConnection, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… when taken; used when the tenant gave no prefix."""
    candidate = base
    n = 1
    while await repo.prefix_owner(conn, candidate) is not None:
        n += 1
        suffix = f"-{n}"
        candidate = base[: 32 - len(suffix)] + suffix
    return candidate


def _check_sender(mode: SenderMode, alphanumeric: str | None) -> str | None:
    if mode is SenderMode.POOL:
        return alphanumeric or None  # kept, unused, so switching back and forth loses nothing
    if not alphanumeric:
        raise InvalidInputError("sms_sender.alphanumeric", "is required when mode is 'alphanumeric'")
    _check_header(alphanumeric, "sms_sender.alphanumeric")
    return alphanumeric


def _check_header(value: str, field: str) -> None:
    if not ALNUM_SENDER_RE.fullmatch(value):
        raise InvalidInputError(field, "must be 1-11 characters of A-Z, a-z, 0-9, space, '.', '-', '&'")
    if value.isdigit():
        raise InvalidInputError(field, "must contain a letter (all digits is a number)")


def _check_allowed(allowed: Sequence[str], default: str | None) -> list[str]:
    """The further headers a message may pick: each valid, no repeats, the default not repeated.
    Kept in pool mode too (unused there), like the default header."""
    out: list[str] = []
    for i, value in enumerate(allowed):
        _check_header(value, f"sms_sender.allowed[{i}]")
        if value != default and value not in out:
            out.append(value)
    return out


def _check_domains(domains: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, raw in enumerate(domains):
        d = normalize_domain(raw, field=f"trusted_domains[{i}]")
        if d not in out:
            out.append(d)
    return out


def _check_hours(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Business hours (issue 8, gateway.domain.schedule): stored as given once they parse."""
    if value is not None:
        try:
            parse_business_hours(value)
        except ScheduleError as exc:
            raise InvalidInputError(exc.field, exc.reason) from None
    return value


def _check_keywords(value: Mapping[str, Sequence[str] | None] | None) -> dict[str, list[str]] | None:
    """Validated keyword lists as stored: only the lists given (a missing one follows the default)."""
    if value is None:
        return None
    checked = check_keywords(value.get("stop"), value.get("start"))
    if isinstance(checked, KeywordProblem):
        raise InvalidInputError(f"sms_keywords.{checked.field}", checked.reason)
    stored = {k: words for k, words in checked.as_json().items() if value.get(k) is not None}
    return stored or None
