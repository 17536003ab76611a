"""The unit-of-work database handle on both engines: commit before return, failures isolated."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.db import Database
from gateway.storage.migrate import current_revision, head_revision
from gateway.storage.tables import sender_numbers

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def _count(db: Database) -> int:
    async def q(conn: AsyncConnection) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(sender_numbers))).scalar_one()

    return await db.read(q)


async def test_schema_is_at_head(db_target) -> None:
    assert await current_revision(db_target.url, pg_schema=db_target.pg_schema) == head_revision()


async def test_concurrent_writes_commit_and_a_failing_unit_is_rolled_back_alone(db: Database) -> None:
    def insert(n: int, fail: bool = False):
        async def unit(conn: AsyncConnection) -> int:
            await conn.execute(
                sa.insert(sender_numbers).values(e164=f"+4850000{n:04d}", active=True, created_at=NOW)
            )
            if fail:
                raise ValueError(f"unit {n} refused")
            return n

        return unit

    results = await asyncio.gather(
        *(db.write(insert(n, fail=(n % 10 == 3))) for n in range(200)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, ValueError)]
    assert len(failed) == 20
    assert await _count(db) == 180
    if db.group_commit:
        assert db.batches < 200  # units that arrived together shared a transaction


async def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    async def unit(conn: AsyncConnection) -> datetime:
        await conn.execute(sa.insert(sender_numbers).values(e164="+48500000001", active=True, created_at=NOW))
        return (await conn.execute(sa.select(sender_numbers.c.created_at))).scalar_one()

    assert await db.write(unit) == NOW


async def test_write_after_close_is_refused(db_target) -> None:
    db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    await db.close()
    with pytest.raises(RuntimeError):
        await db.write(lambda conn: asyncio.sleep(0))


_NUMBERS = sa.select(sender_numbers.c.e164, sender_numbers.c.active, sender_numbers.c.created_at).order_by(
    sender_numbers.c.e164
)
_DEACTIVATE = sa.update(sender_numbers).where(sender_numbers.c.e164 == sa.bindparam("n")).values(active=False)
_PUT_NUMBER = sa.insert(sender_numbers)


async def test_prebuilt_statements_give_the_same_rows_inside_the_writer_and_outside(db: Database) -> None:
    """fetch/run take a raw sqlite3 path inside the SQLite writer: the rows, types (aware datetimes,
    booleans) and row counts must be what SQLAlchemy gives everywhere else."""
    from gateway.storage.db import fetch, fetch_one, run

    async def put(conn: AsyncConnection) -> tuple[int, int]:
        for n in ("+48500000001", "+48500000002"):
            await run(conn, _PUT_NUMBER, {"e164": n, "active": True, "created_at": NOW})
        return await run(conn, _DEACTIVATE, {"n": "+48500000002"}), await run(
            conn, _DEACTIVATE, {"n": "none"}
        )

    assert await db.write(put) == (1, 0)
    written = await db.write(lambda conn: fetch(conn, _NUMBERS))
    read = await db.read(lambda conn: fetch(conn, _NUMBERS))
    assert (
        written
        == read
        == [
            {"e164": "+48500000001", "active": True, "created_at": NOW},
            {"e164": "+48500000002", "active": False, "created_at": NOW},
        ]
    )
    assert written[0]["created_at"].tzinfo is not None
    assert await db.write(lambda conn: fetch_one(conn, _NUMBERS.where(sa.false()))) is None


_NUMBERS_IN = _NUMBERS.where(
    sender_numbers.c.e164.in_(sa.bindparam("ns", expanding=True)),
    sender_numbers.c.active.in_(sa.bindparam("states", expanding=True)),
)
_SET_ACTIVE = sa.update(sender_numbers).where(sender_numbers.c.e164 == sa.bindparam("n"))


async def test_in_lists_and_executemany_give_the_same_results_inside_the_writer_and_outside(
    db: Database,
) -> None:
    """IN lists (any length, empty too) and executemany through the raw path match SQLAlchemy's."""
    from gateway.storage.db import fetch, run, run_many

    numbers = [f"+4850000{i:04d}" for i in range(30)]
    await db.write(
        lambda conn: run_many(
            conn, _PUT_NUMBER, [{"e164": n, "active": True, "created_at": NOW} for n in numbers]
        )
    )
    await db.write(
        lambda conn: run_many(conn, _SET_ACTIVE, [{"n": n, "active": False} for n in numbers[::3]])
    )
    for ns, states in [
        (numbers, [True]),
        (numbers[:7], [True, False]),
        (tuple(numbers[5:9]), {False}),
        ([], [True]),
        (numbers, []),
        (["+1"], [True, False]),
    ]:
        params = {"ns": ns, "states": states}
        written = await db.write(lambda conn, p=params: fetch(conn, _NUMBERS_IN, p))  # type: ignore[misc]
        read = await db.read(lambda conn, p=params: fetch(conn, _NUMBERS_IN, p))  # type: ignore[misc]
        assert written == read
        assert [r["e164"] for r in written] == sorted(
            n for n in ns if n in numbers and (numbers.index(n) % 3 != 0) in set(states)
        )
    activate = sa.update(sender_numbers).where(sender_numbers.c.e164.in_(sa.bindparam("ns", expanding=True)))
    changed = await db.write(lambda conn: run(conn, activate, {"ns": numbers[:4], "active": True}))
    assert changed == 4


async def test_hot_path_insert_raises_the_same_integrity_error_everywhere(db: Database) -> None:
    """insert() takes raw driver paths (sqlite3 in the writer, asyncpg on PostgreSQL): a constraint
    violation must still be SQLAlchemy's IntegrityError, which callers catch, and roll back alone."""
    from gateway.storage.db import insert

    row = {"e164": "+48500000009", "active": True, "created_at": NOW}
    await db.write(lambda conn: insert(conn, sender_numbers, row))

    async def twice(conn: AsyncConnection) -> None:
        await insert(conn, sender_numbers, {**row, "e164": "+48500000010"})
        await insert(conn, sender_numbers, row)

    with pytest.raises(sa.exc.IntegrityError):
        await db.write(twice)
    assert await _count(db) == 1  # the unit's first insert went with it


async def test_write_outcome_retries_a_failed_unit(db: Database) -> None:
    """Recording what already went out (a submit_sm taken, a mail relayed) survives a transient
    database error: the atomic unit runs again instead of the job being failed and resent."""
    from gateway.storage.db import insert

    tries = 0

    async def unit(conn: AsyncConnection) -> int:
        nonlocal tries
        tries += 1
        await insert(conn, sender_numbers, {"e164": "+48500000011", "active": True, "created_at": NOW})
        if tries == 1:
            raise ConnectionError("database went away for a moment")
        return tries

    assert await db.write_outcome(unit, delay=0.01) == 2
    assert await _count(db) == 1  # the failed try left nothing behind


async def test_migrated_indexes_are_the_tables_indexes(db: Database) -> None:
    """What the migrations built has the indexes gateway/storage/tables.py declares, partial ones
    included (alembic's comparison of the live schema with the metadata)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gateway.storage.tables import metadata

    def diff(sync_conn: sa.Connection) -> list[Any]:
        found = compare_metadata(MigrationContext.configure(sync_conn), metadata)
        return [d for d in found if isinstance(d, tuple) and d[0] in ("add_index", "remove_index")]

    async with db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ("sms_parts", "smsc_message_key = 'AB12'"),
        ("sms_parts", "smsc_message_key IN ('AB12', 'AB13')"),
        ("parked_receipts", "smsc_message_key IN ('AB12', 'AB13')"),
        ("messages", "email_message_id IN ('<a@b>', '<c@d>')"),
        ("messages", "tenant_id = 't' AND inbound_key = 'k'"),
        ("idempotency_keys", "created_at < '2026-11-17 12:00:00'"),
    ],
)
async def test_receipt_and_dedupe_lookups_go_through_an_index(db: Database, table: str, where: str) -> None:
    """A delivery receipt finds its part by the SMSC's id without reading the whole table; the
    retention purge finds old idempotency keys the same way."""

    async def plan(conn: AsyncConnection) -> str:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # the tables are empty
            rows = await conn.execute(sa.text(f"EXPLAIN SELECT * FROM {table} WHERE {where}"))
            return " ".join(r[0] for r in rows)
        rows = await conn.execute(sa.text(f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE {where}"))
        return " ".join(str(r[-1]) for r in rows)

    async with db.engine.begin() as conn:
        found = await plan(conn)
    if db.dialect == "postgresql":
        assert "Index Cond" in found and "Seq Scan" not in found, found
    else:
        assert "USING INDEX" in found and "SCAN" not in found, found
