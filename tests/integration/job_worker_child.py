"""A job worker in its own OS process, driven by tests/integration/test_jobs_processes.py.

Run as ``python tests/integration/job_worker_child.py MODE --url URL [--schema S] [options]``:

- ``drain``: run a :class:`JobRunner` whose handler appends each job id to ``--out`` (flushed before the
  runner completes the job), until no job is queued or running; then print the runner's counters as
  one JSON line. With ``--ready``/``--go`` it first creates the ready file and waits for the go file,
  so several children start draining together.
- ``hold``: claim one batch with lease ``--lease``, write the ids to ``--out``, create ``--ready``, then
  sleep until killed (a worker that dies mid-batch).
- ``enqueue``: enqueue jobs one unit of work at a time and print each id once ``db.write`` returned,
  until killed (durability of an acknowledged enqueue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.services.jobrunner import JobRunner
from gateway.storage.db import Database
from gateway.storage.jobs import Job, JobQueue, RetryPolicy, enqueue


def _clock() -> datetime:
    return datetime.now(UTC)


def _write_ids(path: str, jobs: list[Job]) -> None:
    Path(path).write_text("".join(f"{job.id}\n" for job in jobs), encoding="ascii")


def _touch(path: str) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)  # appears atomically


async def _wait_for_file(path: str, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - another process's file
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise SystemExit(f"timed out waiting for {path}") from None


async def drain(args: argparse.Namespace, db: Database) -> None:
    queue = JobQueue(db, clock=_clock, policy=RetryPolicy(), lease_seconds=args.lease)
    # Blocking writes on purpose: an id is in the file before the runner can complete its job.
    out = open(args.out, "a", encoding="ascii")  # noqa: SIM115, ASYNC230 - closed in finally

    async def handle(job: Job) -> None:
        out.write(f"{job.id}\n")
        out.flush()  # on disk (page cache) before the runner's complete() for this job

    runner = JobRunner(
        queue,
        {"test.job": handle},
        worker_id=args.worker_id,
        batch_size=args.batch,
        concurrency=args.concurrency,
        poll_interval=args.poll,
    )
    if args.ready:
        _touch(args.ready)
        await _wait_for_file(args.go, 30)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + args.timeout
    try:
        while not task.done():
            counts = await queue.counts()
            if counts["queued"] == 0 and counts["running"] == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit("drain timed out")
            await asyncio.sleep(0.1)
        stop.set()
        async with asyncio.timeout(30):
            await task
    finally:
        out.close()
    counters = {k: getattr(runner, k) for k in ("claimed", "completed", "retried", "failed", "lost")}
    print(json.dumps(counters), flush=True)


async def hold(args: argparse.Namespace, db: Database) -> None:
    queue = JobQueue(db, clock=_clock, policy=RetryPolicy(), lease_seconds=args.lease)
    jobs = await queue.claim(args.worker_id, args.batch)
    _write_ids(args.out, jobs)
    _touch(args.ready)
    await asyncio.sleep(3600)  # "handling" the batch until the parent kills us


async def enqueue_forever(args: argparse.Namespace, db: Database) -> None:
    n = 0
    while True:
        n += 1

        async def unit(conn: AsyncConnection, n: int = n) -> int:
            return await enqueue(conn, "test.job", {"n": n}, now=_clock(), max_attempts=3)

        job_id = await db.write(unit)
        sys.stdout.write(f"{job_id}\n")
        sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["drain", "hold", "enqueue"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema", default=None)
    parser.add_argument("--out")
    parser.add_argument("--ready")
    parser.add_argument("--go")
    parser.add_argument("--worker-id", default=f"child-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    db = await Database.open(args.url, pg_schema=args.schema or None)
    try:
        await {"drain": drain, "hold": hold, "enqueue": enqueue_forever}[args.mode](args, db)
    finally:
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
