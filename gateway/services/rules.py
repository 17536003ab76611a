"""Event rules and application events (issue 8).

A rule says: when the application reports event ``event`` whose ``data`` matches ``match``, send
template ``template`` on ``channels`` to the event's contact, in the event's context thread — now,
after ``delay``, or ``remind_before`` the time in ``data[time_field]`` — optionally only within
business hours. ``POST /v1/app-events`` runs every enabled matching rule through the normal send
path (consent, credits, validation) and answers what each one did.

A reminder's dedupe key is derived from the rule and the event's context
(``rule:RULE_ID:CONTEXT_TYPE:CONTEXT_ID``), so the next event for the same visit with a new time
replaces the scheduled reminder instead of adding a second one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ids import new_id
from gateway.services import templates
from gateway.services.errors import (
    ChannelsRefusedError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from gateway.services.notify import NotifyOptions, NotifyService, duration
from gateway.services.outbound import SendRequest, check_category, check_channels, request_hash
from gateway.storage import rules as repo
from gateway.storage import templates as templates_repo

EVENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,7}$")
OPERATORS = {"in", "not", "exists"}
MAX_MATCH_FIELDS = 20
_MISSING = object()


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as the API gives it (durations still as given)."""

    event: str
    template: str
    channels: tuple[str, ...]
    match: Mapping[str, Any]
    category: str = "transactional"
    delay: int | float | str | None = None
    business_hours_only: bool = False
    location: str | None = None
    remind_before: int | float | str | None = None
    time_field: str | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AppEvent:
    type: str
    contact_id: str
    data: Mapping[str, Any]
    context: tuple[str, str] | None = None
    #: The application's id for the event: a repeat of the same event sends nothing twice.
    id: str | None = None


# --- matching ------------------------------------------------------------------------------------


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """``data["a"]["b"]`` for ``a.b``; :data:`_MISSING` when any step is absent."""
    value: Any = data
    for step in path.split("."):
        if not isinstance(value, Mapping) or step not in value:
            return _MISSING
        value = value[step]
    return value


def _same(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1 (Python's True == 1 would make it so).
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def matches(match: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    """Every condition holds. A condition is a value (equal), ``{"in": [..]}`` (one of),
    ``{"not": value}`` (absent or different) or ``{"exists": bool}``."""
    for path, condition in match.items():
        value = lookup(data, path)
        if isinstance(condition, Mapping):
            ((op, arg),) = condition.items()
            if op == "in":
                ok = value is not _MISSING and any(_same(value, x) for x in arg)
            elif op == "not":
                ok = value is _MISSING or not _same(value, arg)
            else:  # exists
                ok = (value is not _MISSING) == bool(arg)
        else:
            ok = value is not _MISSING and _same(value, condition)
        if not ok:
            return False
    return True


def check_match(match: Mapping[str, Any]) -> dict[str, Any]:
    if len(match) > MAX_MATCH_FIELDS:
        raise InvalidInputError("match", f"at most {MAX_MATCH_FIELDS} conditions")
    for path, condition in match.items():
        where = f"match.{path}"
        if not PATH_RE.match(path):
            raise InvalidInputError(where, "a field of data, dotted for nested ones (order.status)")
        if isinstance(condition, Mapping):
            if len(condition) != 1 or next(iter(condition)) not in OPERATORS:
                raise InvalidInputError(
                    where, 'an operator object is one of {"in": [...]}, {"not": v}, {"exists": b}'
                )
            op, arg = next(iter(condition.items()))
            if op == "in" and not (isinstance(arg, list) and all(_scalar(x) for x in arg)):
                raise InvalidInputError(where, '"in" takes a list of values')
            if op == "not" and not _scalar(arg):
                raise InvalidInputError(where, '"not" takes a value')
            if op == "exists" and not isinstance(arg, bool):
                raise InvalidInputError(where, '"exists" takes true or false')
        elif not _scalar(condition):
            raise InvalidInputError(where, "a value (string, number, boolean, null) or an operator object")
    return dict(match)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# --- the service ---------------------------------------------------------------------------------


class RuleService:
    def __init__(self, notify: NotifyService, clock: Callable[[], datetime]) -> None:
        self.notify = notify
        self.db = notify.db
        self.clock = clock

    async def create(self, tenant_id: str, spec: RuleSpec) -> dict[str, Any]:
        values = self._validate(spec)
        now = self.clock()
        rule_id = new_id("rul")

        async def unit(conn: AsyncConnection) -> dict[str, Any]:
            await self._check_template(conn, tenant_id, spec.template, spec.channels)
            await repo.insert(
                conn, {"id": rule_id, "tenant_id": tenant_id, "created_at": now, "updated_at": now, **values}
            )
            row = await repo.get(conn, tenant_id, rule_id)
            assert row is not None
            return row

        return await self.db.write(unit)

    async def get(self, tenant_id: str, rule_id: str) -> dict[str, Any]:
        found = await self.db.read(lambda conn: repo.get(conn, tenant_id, rule_id))
        if found is None:
            raise NotFoundError("rule", rule_id)
        return found

    async def list_all(self, tenant_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return await self.db.read(lambda conn: repo.list_all(conn, tenant_id, event=event))

    async def update(self, tenant_id: str, rule_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH: the given fields replace the rule's, and the result is checked as a whole."""
        current = await self.get(tenant_id, rule_id)
        merged = spec_of(current)
        spec = RuleSpec(**{**merged, **changes})
        values = self._validate(spec)
        now = self.clock()

        async def unit(conn: AsyncConnection) -> dict[str, Any]:
            if {"template", "channels"} & set(changes):
                await self._check_template(conn, tenant_id, spec.template, spec.channels)
            if not await repo.update(conn, tenant_id, rule_id, values, now):
                raise NotFoundError("rule", rule_id)
            row = await repo.get(conn, tenant_id, rule_id)
            assert row is not None
            return row

        return await self.db.write(unit)

    async def delete(self, tenant_id: str, rule_id: str) -> None:
        if not await self.db.write(lambda conn: repo.delete(conn, tenant_id, rule_id)):
            raise NotFoundError("rule", rule_id)

    def _validate(self, spec: RuleSpec) -> dict[str, Any]:
        if not EVENT_RE.match(spec.event):
            raise InvalidInputError(
                "event", "1-100 letters, digits, '.', '_', ':' or '-' (order.status_changed)"
            )
        templates.check_name(spec.template)
        check_channels(spec.channels)
        check_category(spec.category)
        delay = duration(spec.delay, "delay") if spec.delay is not None else None
        remind = duration(spec.remind_before, "remind_before") if spec.remind_before is not None else None
        if remind is not None and spec.time_field is None:
            raise InvalidInputError(
                "time_field", "remind_before needs the data field with the time (visit_at)"
            )
        if spec.time_field is not None:
            if remind is None:
                raise InvalidInputError("time_field", "only with remind_before")
            if not PATH_RE.match(spec.time_field):
                raise InvalidInputError("time_field", "a field of data, dotted for nested ones (visit.at)")
        if remind is not None and delay is not None:
            raise InvalidInputError("delay", "give delay or remind_before, not both")
        if spec.location is not None and not spec.business_hours_only:
            raise InvalidInputError("location", "only with business_hours_only")
        return {
            "event": spec.event,
            "match": check_match(spec.match),
            "channels": list(spec.channels),
            "template": spec.template,
            "category": spec.category,
            "delay_seconds": _seconds(delay),
            "business_hours_only": spec.business_hours_only,
            "location": spec.location,
            "remind_before_seconds": _seconds(remind),
            "time_field": spec.time_field,
            "enabled": spec.enabled,
        }

    async def _check_template(
        self, conn: AsyncConnection, tenant_id: str, name: str, channels: tuple[str, ...]
    ) -> None:
        template = await templates_repo.get(conn, tenant_id, name)
        if template is None:
            raise InvalidInputError("template", f"no template named {name!r}")
        has = templates.channels_of(template)
        for i, ch in enumerate(channels):
            if ch not in has:
                raise InvalidInputError(f"channels[{i}]", f"template {name!r} has no {ch} body")

    # --- app events ------------------------------------------------------------------------------

    async def fire(self, tenant_id: str, event: AppEvent) -> list[dict[str, Any]]:
        """Run every enabled rule for ``event.type`` whose match holds; one result per such rule,
        in the order the rules were created. A rule that cannot send does not stop the others."""
        if not EVENT_RE.match(event.type):
            raise InvalidInputError("type", "1-100 letters, digits, '.', '_', ':' or '-'")
        rules = await self.db.read(
            lambda conn: repo.list_all(conn, tenant_id, event=event.type, enabled_only=True)
        )
        results = []
        for rule in rules:
            if matches(rule["match"], event.data):
                results.append(await self._fire_one(tenant_id, rule, event))
        return results

    async def _fire_one(self, tenant_id: str, rule: dict[str, Any], event: AppEvent) -> dict[str, Any]:
        now = self.clock()
        result: dict[str, Any] = {"rule_id": rule["id"], "template": rule["template"], "messages": []}
        # The event's data is the template's variables, with the event's own fields beside it.
        variables = {
            **event.data,
            "event": event.type,
            "contact_id": event.contact_id,
            "context": {"type": event.context[0], "id": event.context[1]} if event.context else None,
        }
        send_at: datetime | None = None
        dedupe_key: str | None = None
        when: datetime | None = None
        if rule["remind_before_seconds"] is not None:
            raw = lookup(event.data, rule["time_field"])
            when = _aware_time(raw)
            if when is None:
                return {
                    **result,
                    "outcome": "error",
                    "reason": "invalid_time",
                    "field": f"data.{rule['time_field']}",
                    "detail": "missing, or not an ISO 8601 time with a UTC offset",
                }
            owner = (
                f"{event.context[0]}:{event.context[1]}" if event.context else f"contact:{event.contact_id}"
            )
            dedupe_key = f"rule:{rule['id']}:{owner}"
            result["dedupe_key"] = dedupe_key
            if when <= now:
                return {**result, "outcome": "skipped", "reason": "too_late", "detail": "the time has passed"}
            send_at = when - timedelta(seconds=rule["remind_before_seconds"])
            if send_at <= now:
                send_at = None  # less than remind_before ahead: remind now
        draft = SendRequest(
            channels=tuple(rule["channels"]),
            text="",
            contact_id=event.contact_id,
            context=event.context,
            category=rule["category"],
            send_at=send_at,
            idempotency_key=f"app-event:{event.id}:{rule['id']}" if event.id else None,
            dedupe_key=dedupe_key,
        )
        # A reminder within business hours must still come before the event (notify.reminder_time).
        hours_here = rule["business_hours_only"] and when is None
        opts = NotifyOptions(
            template=rule["template"],
            variables=variables,
            delay=rule["delay_seconds"],
            business_hours_only=hours_here,
            location=rule["location"] if hours_here else None,
        )
        fingerprint = request_hash(
            {"rule": rule["id"], "type": event.type, "contact_id": event.contact_id, "data": event.data}
        )
        try:
            if when is not None and rule["business_hours_only"]:
                due = send_at or now
                send_at = await self.notify.reminder_time(tenant_id, rule["location"], due, when)
                draft = dataclasses.replace(draft, send_at=send_at)
            req = await self.notify.prepare(tenant_id, draft, opts)
            _, body = await self.notify.outbound.send(tenant_id, req, fingerprint)
        except ChannelsRefusedError as exc:
            return {
                **result,
                "outcome": "refused",
                "reason": next(iter(exc.refusals.values()))[0],
                "channels": {c: {"reason": r, "detail": d} for c, (r, d) in exc.refusals.items()},
            }
        except ConflictError as exc:
            return {**result, "outcome": "skipped", "reason": exc.code, "detail": exc.reason}
        except InvalidInputError as exc:
            return {
                **result,
                "outcome": "error",
                "reason": "invalid",
                "field": exc.field,
                "detail": exc.reason,
            }
        except NotFoundError as exc:
            return {**result, "outcome": "error", "reason": "not_found", "detail": str(exc)}
        messages = list(body["messages"])
        scheduled = any(m["status"] == "scheduled" for m in messages)
        return {**result, "outcome": "scheduled" if scheduled else "queued", "messages": messages}


def spec_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored rule as :class:`RuleSpec` fields (durations as seconds)."""
    return {
        "event": row["event"],
        "template": row["template"],
        "channels": tuple(row["channels"]),
        "match": row["match"],
        "category": row["category"],
        "delay": row["delay_seconds"],
        "business_hours_only": row["business_hours_only"],
        "location": row["location"],
        "remind_before": row["remind_before_seconds"],
        "time_field": row["time_field"],
        "enabled": row["enabled"],
    }


def _seconds(value: timedelta | None) -> int | None:
    # Stored whole (a rule's sub-second delay has no use); rounded up so it is never early.
    if value is None:
        return None
    whole = int(value.total_seconds())
    return whole + (1 if value.total_seconds() > whole else 0)


def _aware_time(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None
