"""Job queue benchmark (not collected by pytest).

    .venv/bin/python tests/perf/queue.py [--backend sqlite|postgresql|both] [--jobs 50000] [--workers 2]

For each backend: a fresh database (a SQLite file in a temporary directory, or a PostgreSQL schema
``gw_perf_<random>`` dropped afterwards) migrated to head; then

1. enqueue: N jobs, one ``db.write`` unit per job, from 50 concurrent tasks (the shape of API requests:
   each unit commits before its caller goes on; on SQLite concurrent units are group-committed);
2. drain: ``claim(200)`` / ``complete()`` cycles from one or two asyncio workers until nothing is due.

Prints one JSON line per backend: {"bench": "queue", "backend", "jobs", "enqueue_jobs_per_s",
"drain_jobs_per_s", "peak_rss_mb", "group_commit_batches"}. ``peak_rss_mb`` is the process high-water
mark so far (with ``both`` the second line includes the first run). ``group_commit_batches`` counts the
SQLite writer's transactions over both phases (0 on PostgreSQL, which has no group commit).
PostgreSQL comes from ``GATEWAY_TEST_PG_URL`` (default: the local test database).
"""

from __future__ import annotations

import os
import sys

# This file is called queue.py: drop its directory from sys.path so it cannot shadow the stdlib module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))  # the project root

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection  # noqa: E402

from gateway.storage.db import Database, make_engine  # noqa: E402
from gateway.storage.jobs import JobQueue, RetryPolicy, enqueue  # noqa: E402
from gateway.storage.migrate import upgrade  # noqa: E402

PG_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
ENQUEUERS = 50
CLAIM_BATCH = 200


def _now() -> datetime:
    return datetime.now(UTC)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


async def _enqueue_all(db: Database, jobs: int) -> float:
    async def producer(worker: int) -> None:
        for n in range(worker, jobs, ENQUEUERS):
            message_id = f"msg_{n:08d}"

            async def unit(conn: AsyncConnection, message_id: str = message_id) -> int:
                payload = {"message_id": message_id, "to": "+48500100200", "part": 1}
                return await enqueue(
                    conn, "sms.submit", payload, now=_now(), message_id=message_id, max_attempts=8
                )

            await db.write(unit)

    started = time.perf_counter()
    await asyncio.gather(*(producer(w) for w in range(ENQUEUERS)))
    return time.perf_counter() - started


async def _drain_all(db: Database, workers: int) -> tuple[float, int]:
    queue = JobQueue(db, clock=_now, policy=RetryPolicy(), lease_seconds=60)
    drained = 0

    async def worker(name: str) -> None:
        nonlocal drained
        while batch := await queue.claim(name, CLAIM_BATCH):
            done = await queue.complete(batch, name)
            drained += done  # not `drained += await …`: that reads `drained` before the await

    started = time.perf_counter()
    await asyncio.gather(*(worker(f"bench-{w}") for w in range(workers)))
    return time.perf_counter() - started, drained


async def bench(backend: str, jobs: int, workers: int) -> dict[str, object]:
    tmp: tempfile.TemporaryDirectory[str] | None = None
    schema: str | None = None
    if backend == "sqlite":
        tmp = tempfile.TemporaryDirectory(prefix="gw_perf_")
        url = f"sqlite+aiosqlite:///{Path(tmp.name) / 'bench.sqlite3'}"
    else:
        url, schema = PG_URL, f"gw_perf_{secrets.token_hex(4)}"
    try:
        await upgrade(url, pg_schema=schema)
        db = await Database.open(url, pg_schema=schema)
        try:
            enqueue_s = await _enqueue_all(db, jobs)
            drain_s, drained = await _drain_all(db, workers)
            counts = await JobQueue(db, clock=_now, policy=RetryPolicy(), lease_seconds=60).counts()
            if drained != jobs or counts["done"] != jobs:
                raise SystemExit(f"{backend}: drained {drained}, counts {counts}, expected {jobs} done")
            batches = db.batches
        finally:
            await db.close()
    finally:
        if schema:
            engine = make_engine(url, null_pool=True)
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await engine.dispose()
        if tmp is not None:
            tmp.cleanup()
    return {
        "bench": "queue",
        "backend": backend,
        "jobs": jobs,
        "enqueue_jobs_per_s": round(jobs / enqueue_s),
        "drain_jobs_per_s": round(jobs / drain_s),
        "peak_rss_mb": _peak_rss_mb(),
        "group_commit_batches": batches,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, choices=[1, 2], default=2, help="asyncio drain workers")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(json.dumps(await bench(backend, args.jobs, args.workers)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
