"""Messages, their SMS parts, threads, events and idempotency keys."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.domain.ids import new_id
from gateway.storage.db import (
    fetch,
    fetch_one,
    insert,
    lock_name,
    lock_names,
    notify_after_commit,
    run,
    run_many,
)
from gateway.storage.tables import events, idempotency_keys, messages, sms_parts, threads

# --- threads -----------------------------------------------------------------------------------


async def find_or_create_thread(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    contact_pk: int | None,
    context: tuple[str, str] | None,
    now: datetime,
    addresses: Sequence[str] = (),
) -> tuple[str, bool]:
    """The thread a new message joins (issue 7): with a context, the contact's thread for that
    context; without, the contact's ongoing conversation (its newest thread without a context).
    Created when there is none. A message to a bare number or address that is nobody's contact
    follows the same rules with ``addresses`` standing in for the contact (threads without a contact
    that already hold a message to or from one of them); with neither, a new thread.

    Two requests for the same new context at once must not open two threads: the look-up is
    repeated under a lock named after what is looked for (PostgreSQL; SQLite writers are serial).
    The lock is only taken on the way to creating one, so the common case costs one query.
    """
    addresses = tuple(a for a in addresses if a)
    if contact_pk is None and not addresses:
        return await create_thread(conn, tenant_id, None, context, now), True
    found = await _find_thread(conn, tenant_id, contact_pk, context, addresses)
    if found is not None:
        return found, False
    who = f"contact:{contact_pk}" if contact_pk is not None else "addr:" + ",".join(sorted(addresses))
    await lock_name(conn, _thread_lock(tenant_id, who, context))
    found = await _find_thread(conn, tenant_id, contact_pk, context, addresses)
    if found is not None:
        return found, False
    return await create_thread(conn, tenant_id, contact_pk, context, now), True


async def _find_thread(
    conn: AsyncConnection,
    tenant_id: str,
    contact_pk: int | None,
    context: tuple[str, str] | None,
    addresses: tuple[str, ...],
) -> str | None:
    if contact_pk is not None:
        if context is not None:
            params = {"t_id": tenant_id, "pk": contact_pk, "c_type": context[0], "c_id": context[1]}
            row = await fetch_one(conn, _THREAD_BY_CONTEXT, params)
        else:
            row = await fetch_one(conn, _THREAD_OF_CONTACT, {"t_id": tenant_id, "pk": contact_pk})
        return str(row["id"]) if row is not None else None
    ctx = (
        sa.and_(threads.c.context_type == context[0], threads.c.context_id == context[1])
        if context is not None
        else threads.c.context_type.is_(None)
    )
    q = (
        sa.select(threads.c.id)
        .where(
            threads.c.tenant_id == tenant_id,
            threads.c.contact_pk.is_(None),
            ctx,
            sa.exists().where(
                messages.c.thread_id == threads.c.id,
                sa.or_(messages.c.recipient.in_(addresses), messages.c.sender.in_(addresses)),
            ),
        )
        .order_by(threads.c.last_message_at.desc(), threads.c.id.desc())
        .limit(1)
    )
    found = (await conn.execute(q)).scalar_one_or_none()
    return str(found) if found is not None else None


async def create_thread(
    conn: AsyncConnection,
    tenant_id: str,
    contact_pk: int | None,
    context: tuple[str, str] | None,
    now: datetime,
) -> str:
    """A new conversation of the contact (or of nobody), for ``context`` if given."""
    row = _thread_row(tenant_id, contact_pk, context, now)
    await insert(conn, threads, row)
    return str(row["id"])


def _thread_row(
    tenant_id: str, contact_pk: int | None, context: tuple[str, str] | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id("thr"),
        "tenant_id": tenant_id,
        "contact_pk": contact_pk,
        "context_type": context[0] if context else None,
        "context_id": context[1] if context else None,
        "token": secrets.token_hex(6),
        "created_at": now,
        "last_message_at": now,
    }


def _thread_lock(tenant_id: str, who: str, context: tuple[str, str] | None) -> str:
    return f"thread:{tenant_id}:{who}:{context!r}"


async def ongoing_threads(
    conn: AsyncConnection, tenant_id: str, contact_pks: Sequence[int], now: datetime
) -> dict[int, tuple[str, bool]]:
    """:func:`find_or_create_thread` without a context for many contacts of one tenant at once:
    each contact's newest thread without a context, created where there is none (same lock and
    second look on PostgreSQL). Per contact: (thread id, created now)."""
    wanted = sorted(set(contact_pks))
    found = await _newest_threads(conn, tenant_id, wanted)
    missing = [pk for pk in wanted if pk not in found]
    if missing and conn.dialect.name == "postgresql":
        await lock_names(conn, [_thread_lock(tenant_id, f"contact:{pk}", None) for pk in missing])
        found |= await _newest_threads(conn, tenant_id, missing)
        missing = [pk for pk in missing if pk not in found]
    rows = [_thread_row(tenant_id, pk, None, now) for pk in missing]
    if rows:
        await insert(conn, threads, rows)
    out = {pk: (thread_id, False) for pk, thread_id in found.items()}
    out.update({int(r["contact_pk"]): (str(r["id"]), True) for r in rows})
    return out


_THREADS_OF_CONTACTS = sa.select(threads.c.id, threads.c.contact_pk, threads.c.last_message_at).where(
    threads.c.tenant_id == sa.bindparam("t_id"),
    threads.c.contact_pk.in_(sa.bindparam("pks", expanding=True)),
    threads.c.context_type.is_(None),
)


async def _newest_threads(conn: AsyncConnection, tenant_id: str, pks: list[int]) -> dict[int, str]:
    # The order of _THREAD_OF_CONTACT: newest last_message_at, then the greatest id.
    best: dict[int, tuple[datetime, str]] = {}
    for r in await fetch(conn, _THREADS_OF_CONTACTS, {"t_id": tenant_id, "pks": pks}):
        key = (r["last_message_at"], r["id"])
        if r["contact_pk"] not in best or key > best[r["contact_pk"]]:
            best[r["contact_pk"]] = key
    return {pk: thread_id for pk, (_, thread_id) in best.items()}


@dataclass(frozen=True, slots=True)
class ThreadOwner:
    """Whose a thread is: enough to check a ``thread_id`` a request names."""

    contact_pk: int | None
    context: tuple[str, str] | None


async def thread_owner(conn: AsyncConnection, tenant_id: str, thread_id: str) -> ThreadOwner | None:
    """None when the thread does not exist or is another tenant's (the caller cannot tell which)."""
    row = (
        await conn.execute(
            sa.select(threads.c.contact_pk, threads.c.context_type, threads.c.context_id).where(
                threads.c.id == thread_id, threads.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return None
    context = (str(row[1]), str(row[2])) if row[1] is not None and row[2] is not None else None
    return ThreadOwner(row[0], context)


_THREAD_BY_CONTEXT = sa.select(threads.c.id).where(
    threads.c.tenant_id == sa.bindparam("t_id"),
    threads.c.contact_pk == sa.bindparam("pk"),
    threads.c.context_type == sa.bindparam("c_type"),
    threads.c.context_id == sa.bindparam("c_id"),
)
_THREAD_OF_CONTACT = (
    sa.select(threads.c.id)
    .where(
        threads.c.tenant_id == sa.bindparam("t_id"),
        threads.c.contact_pk == sa.bindparam("pk"),
        threads.c.context_type.is_(None),
    )
    .order_by(threads.c.last_message_at.desc(), threads.c.id.desc())
    .limit(1)
)


async def touch_thread(conn: AsyncConnection, thread_id: str, now: datetime) -> None:
    await run(conn, _TOUCH_THREAD, {"t_id": thread_id, "t_now": now})


async def touch_threads(conn: AsyncConnection, touches: Sequence[tuple[str, datetime]]) -> None:
    """:func:`touch_thread` for many (thread id, now) in one statement."""
    if touches:
        await run_many(conn, _TOUCH_THREAD, [{"t_id": t, "t_now": now} for t, now in touches])


# --- messages ----------------------------------------------------------------------------------


# Statements built once: constructing a statement per call costs more than executing it.
_TOUCH_THREAD = (
    sa.update(threads)
    .where(threads.c.id == sa.bindparam("t_id"))
    .values(last_message_at=sa.bindparam("t_now"))
)


async def insert_message(conn: AsyncConnection, values: dict[str, Any] | list[dict[str, Any]]) -> None:
    """``values`` should name every column (one compiled form is then reused)."""
    await insert(conn, messages, values)


_GET_MESSAGE = sa.select(messages).where(messages.c.id == sa.bindparam("m_id"))
_GET_TENANT_MESSAGE = _GET_MESSAGE.where(messages.c.tenant_id == sa.bindparam("t_id"))
_GET_MESSAGES = sa.select(messages).where(messages.c.id.in_(sa.bindparam("m_ids", expanding=True)))
_GET_PARTS_OF = (
    sa.select(sms_parts)
    .where(sms_parts.c.message_id.in_(sa.bindparam("m_ids", expanding=True)))
    .order_by(sms_parts.c.message_id, sms_parts.c.part_no)
)
# No .values(): the parameters given at execution say which columns are SET (compiled once per set).
_SET_STATUS = sa.update(messages).where(messages.c.id == sa.bindparam("b_id"))
_SET_STATUS_FROM = _SET_STATUS.where(messages.c.status.in_(sa.bindparam("b_from", expanding=True)))
_UPDATE_PART = sa.update(sms_parts).where(
    sms_parts.c.message_id == sa.bindparam("b_message_id"), sms_parts.c.part_no == sa.bindparam("b_part_no")
)


async def get_message(
    conn: AsyncConnection, message_id: str, tenant_id: str | None = None
) -> dict[str, Any] | None:
    if tenant_id is None:
        return await fetch_one(conn, _GET_MESSAGE, {"m_id": message_id})
    return await fetch_one(conn, _GET_TENANT_MESSAGE, {"m_id": message_id, "t_id": tenant_id})


async def get_parts(conn: AsyncConnection, message_id: str) -> list[dict[str, Any]]:
    """The message's SMS parts in order (:func:`get_parts_of` for one)."""
    return (await get_parts_of(conn, [message_id])).get(message_id, [])


async def get_messages(conn: AsyncConnection, message_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`get_message` for many ids in one statement, by id (the ids not found are absent)."""
    if not message_ids:
        return {}
    return {r["id"]: r for r in await fetch(conn, _GET_MESSAGES, {"m_ids": list(message_ids)})}


async def get_parts_of(conn: AsyncConnection, message_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """:func:`get_parts` for many messages in one statement: each one's parts in order, by id
    (a message without parts is absent)."""
    found: dict[str, list[dict[str, Any]]] = {}
    if message_ids:
        for r in await fetch(conn, _GET_PARTS_OF, {"m_ids": list(message_ids)}):
            found.setdefault(r["message_id"], []).append(r)
    return found


async def set_statuses(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Unconditional status changes of many messages in one statement: each row names ``b_id``,
    ``status``, ``status_reason`` and ``updated_at``."""
    await run_many(conn, _SET_STATUS, rows)


async def set_message_status(
    conn: AsyncConnection,
    message_id: str,
    status: str,
    now: datetime,
    *,
    reason: str | None = None,
    only_from: Sequence[str] | None = None,
) -> bool:
    """Change the status (only from the given statuses, when set); True when a row changed."""
    params: dict[str, Any] = {
        "b_id": message_id,
        "status": status,
        "status_reason": reason,
        "updated_at": now,
    }
    if only_from is None:
        return bool(await run(conn, _SET_STATUS, params))
    result = await conn.execute(_SET_STATUS_FROM, {**params, "b_from": list(only_from)})
    return bool(result.rowcount)


async def update_part(
    conn: AsyncConnection, message_id: str, part_no: int, now: datetime, **values: Any
) -> None:
    params = {"b_message_id": message_id, "b_part_no": part_no, "updated_at": now, **values}
    await run(conn, _UPDATE_PART, params)


async def update_parts(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """:func:`update_part` for many parts in one statement: each row names ``b_message_id``,
    ``b_part_no`` and the same columns to set as the others."""
    await run_many(conn, _UPDATE_PART, rows)


# --- events ------------------------------------------------------------------------------------


async def add_event(
    conn: AsyncConnection, tenant_id: str, type_: str, payload: dict[str, Any], now: datetime
) -> None:
    """Written in the same transaction as the change it reports (ARCHITECTURE rule 3)."""
    await insert(conn, events, {"tenant_id": tenant_id, "type": type_, "payload": payload, "created_at": now})
    notify_after_commit(conn, event_topic(tenant_id))


async def add_event_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Several events at once (rows as for the events table), e.g. one per message of a batch."""
    if rows:
        await insert(conn, events, rows)
        for tenant_id in {r["tenant_id"] for r in rows}:
            notify_after_commit(conn, event_topic(tenant_id))


def event_topic(tenant_id: str) -> str:
    """What :func:`gateway.storage.db.notify_after_commit` announces for a tenant's new events."""
    return f"events:{tenant_id}"


# --- idempotency -------------------------------------------------------------------------------


async def get_idempotent(conn: AsyncConnection, tenant_id: str, key: str) -> dict[str, Any] | None:
    q = sa.select(idempotency_keys).where(
        idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


_IDEMPOTENT_MANY = sa.select(idempotency_keys).where(
    idempotency_keys.c.tenant_id == sa.bindparam("t_id"),
    idempotency_keys.c.key.in_(sa.bindparam("keys", expanding=True)),
)


async def get_idempotent_many(
    conn: AsyncConnection, tenant_id: str, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """:func:`get_idempotent` for many keys of one tenant: the stored rows by key."""
    if not keys:
        return {}
    rows = await fetch(conn, _IDEMPOTENT_MANY, {"t_id": tenant_id, "keys": sorted(set(keys))})
    return {r["key"]: r for r in rows}


async def put_idempotent_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Store several finished answers at once (rows as for the idempotency_keys table)."""
    if rows:
        await insert(conn, idempotency_keys, rows)


async def put_idempotent(
    conn: AsyncConnection,
    tenant_id: str,
    key: str,
    request_hash: str,
    status_code: int,
    response: dict[str, Any],
    now: datetime,
) -> None:
    await conn.execute(
        sa.insert(idempotency_keys).values(
            tenant_id=tenant_id,
            key=key,
            request_hash=request_hash,
            status_code=status_code,
            response=response,
            created_at=now,
        )
    )


async def update_idempotent(
    conn: AsyncConnection, tenant_id: str, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await conn.execute(
        sa.update(idempotency_keys)
        .where(idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key)
        .values(status_code=status_code, response=response)
    )
