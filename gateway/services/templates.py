"""Message templates (issue 8): per tenant, a body per channel, rendered by Jinja2's sandbox.

Why Jinja2: the issue names it; its :class:`~jinja2.sandbox.SandboxedEnvironment` refuses
attribute access to Python internals (``{{ x.__class__ }}``) and caps ``range()``, which matters
because template source comes over the API; :class:`~jinja2.StrictUndefined` turns a missing
variable into an error instead of a message with a hole in it. Autoescaping is on for the HTML body
only: an SMS or a plain-text email with ``&amp;`` in it would be wrong.

Templates are checked when saved (syntax errors are a 422 naming the part and the line) and
rendered when a message is sent (a missing variable is a 422 naming the variable).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.model import Channel
from gateway.services.errors import InvalidInputError, NotFoundError
from gateway.storage import templates as repo
from gateway.storage import tenants as tenants_repo
from gateway.storage.db import Database

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Limits on what a rendering may produce (the message limits of POST /v1/messages).
MAX_TEXT = 10_000
MAX_HTML = 1_000_000
#: The variable the renderer sets to the tenant's time zone (the ``datetime`` filter's default).
TZ_VARIABLE = "_timezone"
#: (column, the part's name in errors and in the API body)
PARTS = (
    ("sms_text", "sms.text"),
    ("email_subject", "email.subject"),
    ("email_text", "email.text"),
    ("email_html", "email.html"),
)


class TemplateRenderError(InvalidInputError):
    """A template cannot be rendered with the given variables (422). ``field`` is
    ``variables.NAME`` for a missing variable, else the template part (``sms.text``)."""

    def __init__(self, field: str, reason: str, *, template: str, part: str) -> None:
        super().__init__(field, reason)
        self.template = template
        self.part = part


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template's parts rendered; None for a part it does not have."""

    sms_text: str | None
    email_subject: str | None
    email_text: str | None
    email_html: str | None


@pass_context
def _datetime_filter(context: Context, value: Any, fmt: str = "%Y-%m-%d %H:%M", tz: str | None = None) -> str:
    """``{{ visit_at | datetime("%d.%m %H:%M") }}``: an ISO 8601 time (or a datetime) shown in
    ``tz``, default the tenant's business-hours time zone, else UTC. A time without an offset is
    taken as already local."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"datetime filter: {value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise ValueError(f"datetime filter: {value!r} is not a time")
    zone_name = tz or context.get(TZ_VARIABLE) or "UTC"
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"datetime filter: unknown time zone {zone_name!r}") from None
    local = value.astimezone(zone) if value.tzinfo else value
    return local.strftime(fmt)


def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    env.filters["datetime"] = _datetime_filter
    return env


_PLAIN = _environment(False)
_HTML = _environment(True)


@lru_cache(maxsize=1024)
def _compile(source: str, html: bool) -> tuple[Any, frozenset[str]]:
    """(compiled template, the variables it reads from outside): parsed once per source text."""
    env = _HTML if html else _PLAIN
    ast = env.parse(source)
    return env.from_string(ast), frozenset(meta.find_undeclared_variables(ast))


def check_source(source: str, part: str) -> frozenset[str]:
    """Syntax check at save time; returns the variables the part uses. 422 with the line."""
    try:
        _, names = _compile(source, part == "email.html")
    except TemplateSyntaxError as exc:
        raise InvalidInputError(part, f"line {exc.lineno}: {exc.message}") from None
    return names


def render_part(name: str, part: str, source: str, variables: Mapping[str, Any], tz: str | None) -> str:
    template, needs = _compile(source, part == "email.html")
    missing = sorted(n for n in needs if n not in variables and n != TZ_VARIABLE)
    if missing:
        raise TemplateRenderError(
            f"variables.{missing[0]}",
            f"missing; template {name!r} ({part}) needs " + ", ".join(missing),
            template=name,
            part=part,
        )
    try:
        out = str(template.render({**variables, TZ_VARIABLE: tz}))
    except SecurityError as exc:
        raise TemplateRenderError(
            part, f"not allowed in a template: {exc}", template=name, part=part
        ) from None
    except TemplateError as exc:
        # e.g. StrictUndefined on a nested value: "'dict object' has no attribute 'number'"
        raise TemplateRenderError("variables", f"{part}: {exc}", template=name, part=part) from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateRenderError(part, f"cannot render: {exc}", template=name, part=part) from None
    limit = MAX_HTML if part == "email.html" else MAX_TEXT
    if len(out) > limit:
        raise TemplateRenderError(part, f"renders to more than {limit} characters", template=name, part=part)
    return out


def render(template: Mapping[str, Any], variables: Mapping[str, Any], tz: str | None) -> Rendered:
    """Every part the template has, rendered."""
    name = str(template["name"])
    out: dict[str, str | None] = {}
    for column, part in PARTS:
        source = template.get(column)
        out[column] = None if source is None else render_part(name, part, source, variables, tz)
    return Rendered(**out)


def channels_of(template: Mapping[str, Any]) -> set[str]:
    out = set()
    if template.get("sms_text") is not None:
        out.add(Channel.SMS.value)
    if template.get("email_text") is not None or template.get("email_html") is not None:
        out.add(Channel.EMAIL.value)
    return out


def variables_of(template: Mapping[str, Any]) -> list[str]:
    names: set[str] = set()
    for column, part in PARTS:
        if template.get(column) is not None:
            names |= check_source(template[column], part)
    return sorted(names - {TZ_VARIABLE})


def tenant_timezone(business_hours: Mapping[str, Any] | None) -> str | None:
    tz = (business_hours or {}).get("timezone")
    return tz if isinstance(tz, str) else None


class TemplateService:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    async def put(self, tenant_id: str, name: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or replace. ``body`` has the columns of :data:`PARTS` (None: no such part) and
        ``description``; every part is syntax-checked first."""
        check_name(name)
        if body.get("sms_text") is None and body.get("email_text") is None and body.get("email_html") is None:
            raise InvalidInputError("sms", "give a body for at least one channel (sms or email)")
        if body.get("email_subject") is not None and body.get("email_text") is None:
            raise InvalidInputError("email.text", "an email template needs a text body (html is optional)")
        if body.get("email_html") is not None and body.get("email_text") is None:
            raise InvalidInputError("email.text", "an email template needs a text body (html is optional)")
        for column, part in PARTS:
            if body.get(column) is not None:
                check_source(body[column], part)
        now = self.clock()
        return await self.db.write(lambda conn: repo.put(conn, tenant_id, name, body, now))

    async def get(self, tenant_id: str, name: str) -> dict[str, Any]:
        found = await self.db.read(lambda conn: repo.get(conn, tenant_id, name))
        if found is None:
            raise NotFoundError("template", name)
        return found

    async def list_all(self, tenant_id: str) -> list[dict[str, Any]]:
        return await self.db.read(lambda conn: repo.list_all(conn, tenant_id))

    async def delete(self, tenant_id: str, name: str) -> None:
        if not await self.db.write(lambda conn: repo.delete(conn, tenant_id, name)):
            raise NotFoundError("template", name)

    async def _template_and_hours(
        self, tenant_id: str, name: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async def unit(conn: AsyncConnection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            template = await repo.get(conn, tenant_id, name)
            tenant = await tenants_repo.load_tenant(conn, tenant_id)
            return template, (tenant.business_hours if tenant else None)

        return await self.db.read(unit)

    async def load_for_render(
        self, tenant_id: str, name: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(the template, the tenant's business hours) in one read; 422 when the template is missing
        (at send time the name is a value in the request, not a resource in the path)."""
        template, hours = await self._template_and_hours(tenant_id, name)
        if template is None:
            raise InvalidInputError("template", f"no template named {name!r}")
        return template, hours

    async def preview(self, tenant_id: str, name: str, variables: Mapping[str, Any]) -> Rendered:
        template, hours = await self._template_and_hours(tenant_id, name)
        if template is None:
            raise NotFoundError("template", name)
        return render(template, variables, tenant_timezone(hours))


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidInputError(
            "name", "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
