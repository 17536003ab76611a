"""Database.write_batched on both engines: concurrent items share one unit, each caller gets its
own outcome after the commit, and a unit that fails as a whole is retried item by item."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage import jobs
from gateway.storage.db import Database
from gateway.storage.tables import jobs as jobs_table

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Refused(Exception):
    pass


class Batcher:
    """Writes one job per item named "ok…"; "refuse…" is that item's own error; "explode" makes
    the whole unit raise after writing the others (as a database error would)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, conn: AsyncConnection, items: list[Any]) -> list[Any]:
        self.calls.append(list(items))
        outcomes: list[Any] = []
        rows = []
        for name in items:
            if name.startswith("refuse"):
                outcomes.append(Refused(name))
                continue
            rows.append(jobs.job_row("test.batched", {"name": name}, now=NOW, max_attempts=1))
            outcomes.append(f"done {name}")
        await jobs.enqueue_rows(conn, rows)
        if "explode" in items:
            raise RuntimeError("the unit failed")
        return outcomes


async def _written(db: Database) -> list[str]:
    async def q(conn: AsyncConnection) -> list[str]:
        rows = await conn.execute(sa.select(jobs_table.c.payload).where(jobs_table.c.kind == "test.batched"))
        return sorted(r[0]["name"] for r in rows)

    return await db.read(q)


async def test_items_written_together_each_caller_gets_its_outcome(db: Database) -> None:
    fn = Batcher()
    names = ["ok1", "refuse1", "ok2", "ok3", "refuse2"]
    outcomes = await asyncio.gather(*(db.write_batched(fn, n) for n in names), return_exceptions=True)
    assert outcomes[0] == "done ok1" and outcomes[2] == "done ok2" and outcomes[3] == "done ok3"
    assert isinstance(outcomes[1], Refused) and str(outcomes[1]) == "refuse1"
    assert isinstance(outcomes[4], Refused)
    assert fn.calls == [names]  # one unit for all of them, in arrival order
    assert await _written(db) == ["ok1", "ok2", "ok3"]  # committed before the callers heard back


async def test_a_failing_unit_is_run_again_item_by_item(db: Database) -> None:
    fn = Batcher()
    names = ["ok1", "explode", "ok2"]
    outcomes = await asyncio.gather(*(db.write_batched(fn, n) for n in names), return_exceptions=True)
    assert outcomes[0] == "done ok1" and outcomes[2] == "done ok2"
    assert isinstance(outcomes[1], RuntimeError)
    assert fn.calls[0] == names and sorted(map(tuple, fn.calls[1:])) == [("explode",), ("ok1",), ("ok2",)]
    # The failed unit's writes were undone; the retried items' writes are there once each.
    assert await _written(db) == ["ok1", "ok2"]


async def test_a_lone_item_and_a_refused_one(db: Database) -> None:
    fn = Batcher()
    assert await db.write_batched(fn, "ok") == "done ok"
    with pytest.raises(Refused):
        await db.write_batched(fn, "refuse")
    assert await _written(db) == ["ok"]


async def test_many_callers_over_time_all_committed(db: Database) -> None:
    fn = Batcher()

    async def caller(i: int) -> Any:
        await asyncio.sleep((i % 7) * 0.002)
        return await db.write_batched(fn, f"ok{i:03d}")

    outcomes = await asyncio.gather(*(caller(i) for i in range(300)))
    assert outcomes == [f"done ok{i:03d}" for i in range(300)]
    assert await _written(db) == [f"ok{i:03d}" for i in range(300)]
    assert len(fn.calls) < 300  # they did share units


async def test_items_handed_over_before_close_are_committed(db_target: Any) -> None:
    db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    fn = Batcher()
    calls = [asyncio.create_task(db.write_batched(fn, f"ok{i}")) for i in range(20)]
    await asyncio.sleep(0)  # they are queued (not yet run) when close() starts
    await db.close()
    assert [await c for c in calls] == [f"done ok{i}" for i in range(20)]
    again = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        assert await _written(again) == sorted(f"ok{i}" for i in range(20))
    finally:
        await again.close()
