"""The unit-of-work database handle on both engines: commit before return, failures isolated."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

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
