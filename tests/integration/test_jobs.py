"""The durable job queue and the job runner, on SQLite and PostgreSQL, with a hand-moved clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.services.errors import PermanentJobError
from gateway.services.jobrunner import BatchHandler, JobRunner
from gateway.storage import jobs as jobs_module
from gateway.storage.db import Database
from gateway.storage.jobs import Job, JobQueue, RetryPolicy, cancel_for_message, enqueue
from gateway.storage.tables import jobs as jobs_table

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LEASE = 30.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_queue(db: Database, clock: Clock, **kw: Any) -> JobQueue:
    kw.setdefault("policy", RetryPolicy(base_seconds=10, max_seconds=100, max_attempts=3))
    kw.setdefault("lease_seconds", LEASE)
    kw.setdefault("rand", lambda: 0.5)
    return JobQueue(db, clock=clock, **kw)


async def add(
    db: Database, clock: Clock, n: int = 1, *, kind: str = "t", max_attempts: int = 3, **kw: Any
) -> list[int]:
    async def unit(conn: AsyncConnection) -> list[int]:
        now = clock()
        return [
            await enqueue(conn, kind, {"n": i}, now=now, max_attempts=max_attempts, **kw) for i in range(n)
        ]

    return await db.write(unit)


async def statuses(db: Database) -> dict[int, str]:
    async def unit(conn: AsyncConnection) -> dict[int, str]:
        return dict((await conn.execute(sa.select(jobs_table.c.id, jobs_table.c.status))).all())

    return await db.read(unit)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Poll ``check`` (usually a database query) until it holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the condition lives in the database
            await asyncio.sleep(0.02)


# --- RetryPolicy (pure) ------------------------------------------------------------------------------


def test_retry_policy_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(base_seconds=5, max_seconds=60, jitter="none")
    assert [p.delay(n, 0.3) for n in (1, 2, 3, 4, 5, 100)] == [5, 10, 20, 40, 60, 60]
    equal = RetryPolicy(base_seconds=5, max_seconds=60)
    assert equal.delay(3, 0.0) == 10 and equal.delay(3, 0.999999) == pytest.approx(20)
    full = RetryPolicy(base_seconds=5, max_seconds=60, jitter="full")
    assert full.delay(3, 0.0) == 0 and full.delay(3, 0.5) == 10
    with pytest.raises(ValueError):
        RetryPolicy(base_seconds=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# --- enqueue -------------------------------------------------------------------------------------------


async def test_enqueue_commits_and_rolls_back_with_the_callers_unit(db: Database, clock: Clock) -> None:
    async def failing(conn: AsyncConnection) -> None:
        await enqueue(conn, "sms.submit", {"to": "+48500000001"}, now=clock(), max_attempts=3)
        raise RuntimeError("the message insert failed")

    with pytest.raises(RuntimeError):
        await db.write(failing)
    assert await statuses(db) == {}

    later = T0 + timedelta(hours=2)
    (job_id,) = await add(db, clock, message_id="msg_1", tenant_id="ten_1", run_at=later)
    row = await make_queue(db, clock).get(job_id)
    assert row is not None
    assert row["status"] == "queued" and row["attempts"] == 0 and row["max_attempts"] == 3
    assert row["run_at"] == later and row["created_at"] == T0
    assert row["payload"] == {"n": 0} and row["message_id"] == "msg_1" and row["tenant_id"] == "ten_1"
    assert await make_queue(db, clock).get(job_id + 1000) is None

    async def bad_kind(conn: AsyncConnection) -> None:
        await enqueue(conn, "x" * 33, {}, now=clock(), max_attempts=3)

    with pytest.raises(ValueError):
        await db.write(bad_kind)


async def test_the_sqlite_fast_insert_stores_exactly_what_core_stores(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    warsaw = timezone(timedelta(hours=2))
    when = datetime(2026, 11, 24, 14, 0, 0, 123456, tzinfo=warsaw)
    payload = {"text": "Zażółć gęślą jaźń €", "parts": [1, 2], "nested": {"ok": True, "none": None}}

    async def unit(conn: AsyncConnection) -> int:
        return await enqueue(
            conn, "sms.submit", payload, now=when, run_at=when + timedelta(seconds=1.5),
            message_id="msg_1", tenant_id="ten_1", max_attempts=4,
        )  # fmt: skip

    fast_id = await db.write(unit)
    monkeypatch.setattr(jobs_module, "_FAST_SQLITE_INSERT", False)
    core_id = await db.write(unit)

    async def raw(conn: AsyncConnection) -> dict[int, tuple[Any, ...]]:
        cols = "kind, payload, status, attempts, max_attempts, run_at, lease_until, locked_by, last_error, "
        cols += "message_id, tenant_id, created_at, updated_at"
        result = await conn.exec_driver_sql(f"SELECT id, {cols} FROM jobs")  # as stored, no type processing
        return {row[0]: tuple(row[1:]) for row in result}

    stored = await db.read(raw)
    assert stored[fast_id] == stored[core_id]
    q = make_queue(db, Clock(when + timedelta(seconds=2)))
    claimed = await q.claim("w", 5)
    assert [j.id for j in claimed] == [fast_id, core_id]
    assert all(j.payload == payload and j.run_at == when + timedelta(seconds=1.5) for j in claimed)


# --- claim -------------------------------------------------------------------------------------------


async def test_claim_takes_due_jobs_in_order_and_respects_run_at(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock, lease_seconds=600)
    soon = await add(db, clock, 3)
    (later,) = await add(db, clock, run_at=T0 + timedelta(seconds=60))

    first = await q.claim("w1", 2)
    assert [j.id for j in first] == soon[:2]
    job = first[0]
    assert (job.attempts, job.max_attempts, job.kind, job.payload, job.run_at) == (1, 3, "t", {"n": 0}, T0)
    row = await q.get(job.id)
    assert row is not None
    assert (row["status"], row["locked_by"]) == ("running", "w1")
    assert row["lease_until"] == T0 + timedelta(minutes=10)

    assert [j.id for j in await q.claim("w1", 10)] == soon[2:]  # the scheduled one is not due
    assert await q.claim("w1", 10) == []
    clock.advance(59.9)
    assert await q.claim("w1", 10) == []
    clock.advance(0.1)
    assert [j.id for j in await q.claim("w1", 10)] == [later]
    assert await q.claim("w1", 0) == []


async def test_claim_only_takes_the_kinds_asked_for(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    (sms,) = await add(db, clock, kind="sms.submit")
    (mail,) = await add(db, clock, kind="email.send")
    assert await q.claim("w", 10, kinds=[]) == []
    assert [j.id for j in await q.claim("w", 10, kinds={"email.send", "webhook.post"})] == [mail]
    assert [j.id for j in await q.claim("w", 10, kinds=None)] == [sms]


async def test_concurrent_claimers_never_get_the_same_job(db: Database, db_target: Any, clock: Clock) -> None:
    ids = await add(db, clock, 400)
    # A second Database: on SQLite two writers contend for the file lock as two processes would.
    other_db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        qa, qb = make_queue(db, clock), make_queue(other_db, clock)
        got: dict[str, list[int]] = {"a1": [], "a2": [], "b1": [], "b2": []}

        async def drain(name: str, q: JobQueue) -> None:
            while batch := await q.claim(name, 15):
                got[name] += [j.id for j in batch]

        # Two claim loops per queue object, all four in flight at once.
        await asyncio.gather(drain("a1", qa), drain("b1", qb), drain("a2", qa), drain("b2", qb))
    finally:
        await other_db.close()
    everything = [i for taken in got.values() for i in taken]
    assert sorted(everything) == ids  # all taken, none twice
    assert len(set(everything)) == len(everything)
    if db.dialect == "postgresql":
        # Both really ran side by side. (On SQLite one writer may hold the file lock throughout: the
        # other's busy handler sleeps and retries, so a share is not guaranteed, only exclusivity.)
        assert got["a1"] + got["a2"] and got["b1"] + got["b2"]


# --- settling ------------------------------------------------------------------------------------------


async def test_complete_only_by_the_holder(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    await add(db, clock, 3)
    jobs = await q.claim("w1", 3)
    assert await q.complete(jobs, "w2") == 0
    assert await q.complete([], "w1") == 0
    assert await q.complete([j.id for j in jobs[:2]], "w1") == 2
    assert await q.complete(jobs, "w1") == 1  # the two done ones are not counted again
    assert set((await statuses(db)).values()) == {"done"}
    assert await q.counts() == {"queued": 0, "running": 0, "done": 3, "failed": 0, "cancelled": 0}


async def test_retry_backs_off_then_fails_after_max_attempts(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)  # base 10 s, equal jitter with rand 0.5: 7.5 s, 15 s, ...
    (job_id,) = await add(db, clock, max_attempts=3)

    (job,) = await q.claim("w", 1)
    assert await q.retry_or_fail(job, "w", "smsc timeout") == "queued"
    row = await q.get(job_id)
    assert row is not None
    assert (row["status"], row["run_at"], row["last_error"], row["locked_by"], row["lease_until"]) == (
        "queued",
        T0 + timedelta(seconds=7.5),
        "smsc timeout",
        None,
        None,
    )
    clock.advance(7)
    assert await q.claim("w", 1) == []
    clock.advance(0.5)
    (job,) = await q.claim("w", 1)
    assert job.attempts == 2
    assert await q.retry_or_fail(job, "w", "smsc timeout again") == "queued"
    assert (await q.get(job_id) or {})["run_at"] == clock.now + timedelta(seconds=15)
    clock.advance(15)
    (job,) = await q.claim("w", 1)
    assert job.attempts == 3
    assert await q.retry_or_fail(job, "w", "x" * 5000) == "failed"
    row = await q.get(job_id)
    assert row is not None and row["status"] == "failed" and row["last_error"] == "x" * 2000
    clock.advance(10_000)
    assert await q.claim("w", 1) == []


async def test_retry_with_explicit_delay_and_permanent_errors(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    await add(db, clock, 2, max_attempts=5)
    a, b = await q.claim("w", 2)
    assert await q.retry_or_fail(a, "w", "Retry-After: 120", delay=120) == "queued"
    assert (await q.get(a.id) or {})["run_at"] == T0 + timedelta(seconds=120)
    assert await q.retry_or_fail(b, "w", "number does not exist", retryable=False) == "failed"
    assert await q.retry_or_fail(b, "w", "again") == "lost"  # no longer ours (not running)
    assert (await q.get(b.id) or {})["last_error"] == "number does not exist"


async def test_expired_lease_is_reclaimed_and_the_old_worker_cannot_overwrite(
    db: Database, clock: Clock
) -> None:
    q = make_queue(db, clock)
    (job_id,) = await add(db, clock)
    (mine,) = await q.claim("w1", 1)
    clock.advance(LEASE)  # lease_until == now: not expired yet
    assert await q.claim("w2", 1) == []
    clock.advance(0.001)
    (theirs,) = await q.claim("w2", 1)
    assert theirs.id == job_id and theirs.attempts == 2

    assert await q.complete([mine], "w1") == 0
    assert await q.retry_or_fail(mine, "w1", "late failure") == "lost"
    assert await q.extend_lease([job_id], "w1") == 0
    row = await q.get(job_id)
    assert row is not None and (row["status"], row["locked_by"], row["last_error"]) == ("running", "w2", None)

    assert await q.complete([theirs], "w2") == 1
    assert await q.complete([mine], "w1") == 0
    row = await q.get(job_id)
    assert row is not None and (row["status"], row["locked_by"], row["attempts"]) == ("done", "w2", 2)


async def test_extend_lease_keeps_the_job(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    await add(db, clock)
    (job,) = await q.claim("w1", 1)
    clock.advance(20)
    assert await q.extend_lease([job], "w1") == 1
    assert (await q.get(job.id) or {})["lease_until"] == clock.now + timedelta(seconds=LEASE)
    clock.advance(20)  # 40 s after the claim, 20 s after the renewal
    assert await q.claim("w2", 1) == []
    assert await q.extend_lease([], "w1") == 0


async def test_a_job_that_keeps_killing_its_worker_ends_failed(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    (poison,) = await add(db, clock, max_attempts=2)
    (fine,) = await add(db, clock, max_attempts=2)
    assert [j.id for j in await q.claim("w1", 1)] == [poison]
    clock.advance(LEASE + 1)  # w1 died
    assert [j.id for j in await q.claim("w2", 1)] == [poison]
    clock.advance(LEASE + 1)  # w2 died too: attempts are used up
    assert [j.id for j in await q.claim("w3", 5)] == [fine]
    row = await q.get(poison)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert row["last_error"] == "lease expired after 2 attempts"
    clock.advance(LEASE + 1)  # w3 died holding `fine` (its 1st attempt): it is simply taken again
    assert [(j.id, j.attempts) for j in await q.claim("w4", 5)] == [(fine, 2)]
    assert (await q.get(poison) or {})["status"] == "failed"


async def test_cancel_for_message_cancels_only_queued_jobs(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    running, queued = await add(db, clock, 2, message_id="msg_a")
    (other,) = await add(db, clock, message_id="msg_b")
    assert [j.id for j in await q.claim("w", 1)] == [running]

    async def unit(conn: AsyncConnection) -> int:
        return await cancel_for_message(conn, "msg_a", now=clock())

    assert await db.write(unit) == 1
    assert await statuses(db) == {running: "running", queued: "cancelled", other: "queued"}
    assert await db.write(unit) == 0
    assert [j.id for j in await q.claim("w", 5)] == [other]


async def test_purge_deletes_old_finished_jobs(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    _done, failed, queued = await add(db, clock, 3)
    a, b, _ = await q.claim("w", 3)
    await q.complete([a], "w")
    await q.retry_or_fail(b, "w", "no", retryable=False)
    assert await q.purge(T0) == 0  # updated_at == T0 is not before T0
    clock.advance(1)
    assert await q.purge(clock.now) == 1
    assert set(await statuses(db)) == {failed, queued}
    with pytest.raises(ValueError):
        await q.purge(clock.now, statuses=("queued",))


# --- JobRunner -----------------------------------------------------------------------------------------


def make_runner(q: JobQueue, handlers: dict[str, Any], **kw: Any) -> JobRunner:
    kw.setdefault("worker_id", "runner-1")
    kw.setdefault("batch_size", 50)
    kw.setdefault("concurrency", 20)
    kw.setdefault("poll_interval", 0.05)
    return JobRunner(q, handlers, **kw)


@contextlib.asynccontextmanager
async def running(runner: JobRunner, stop_timeout: float = 10.0) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(stop_timeout):
            await task


async def test_runner_drains_500_jobs_each_once(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    ids = await add(db, clock, 500)
    (other_kind,) = await add(db, clock, kind="nobody.handles")
    seen: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        await asyncio.sleep(0)
        seen[job.id] += 1

    runner = make_runner(q, {"t": handle})
    async with running(runner):
        await eventually(lambda: _count_is(q, "done", 500))
    assert sorted(seen) == ids and set(seen.values()) == {1}
    assert (runner.claimed, runner.completed) == (500, 500)
    assert (runner.retried, runner.failed, runner.lost) == (0, 0, 0)
    assert (await statuses(db))[other_kind] == "queued"


async def _count_is(q: JobQueue, status: str, n: int) -> bool:
    return (await q.counts())[status] == n


async def test_runner_retries_transient_errors_and_fails_permanent_ones(
    db: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gateway.services.jobrunner")  # 70+ expected tracebacks
    q = make_queue(db, clock)
    ids = await add(db, clock, 500, max_attempts=3)
    permanent = {i for i in ids if i % 7 == 0}
    flaky = {i for i in ids if i % 11 == 0} - permanent  # fail their first attempt only
    calls: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        calls[job.id] += 1
        if job.id in permanent:
            raise PermanentJobError("recipient rejected")
        if job.id in flaky and job.attempts == 1:
            raise ConnectionError("smsc went away")

    runner = make_runner(q, {"t": handle})
    async with running(runner):
        await eventually(lambda: _count_is(q, "queued", len(flaky)))
        await eventually(lambda: _count_is(q, "running", 0))
        clock.advance(3600)  # past every backoff
        runner.wake()
        await eventually(lambda: _count_is(q, "done", 500 - len(permanent)))
    assert await q.counts() == {
        "queued": 0,
        "running": 0,
        "done": 500 - len(permanent),
        "failed": len(permanent),
        "cancelled": 0,
    }
    assert all(calls[i] == (2 if i in flaky else 1) for i in ids)
    assert (runner.completed, runner.failed) == (500 - len(permanent), len(permanent))
    assert runner.retried == len(flaky)
    row = await q.get(min(permanent))
    assert row is not None and row["last_error"] == "PermanentJobError: recipient rejected"
    assert row["attempts"] == 1
    row = await q.get(min(flaky))
    assert row is not None and row["last_error"] == "ConnectionError: smsc went away" and row["attempts"] == 2


async def test_runner_stop_waits_for_in_flight_jobs_and_claims_nothing_more(
    db: Database, clock: Clock
) -> None:
    q = make_queue(db, clock)
    ids = await add(db, clock, 5)
    started: list[int] = []
    release = asyncio.Event()

    async def handle(job: Job) -> None:
        started.append(job.id)
        await release.wait()

    runner = make_runner(q, {"t": handle}, batch_size=10, concurrency=10)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await eventually(lambda: _true(len(started) == 5))
    stop.set()
    late = await add(db, clock, 3)
    runner.wake()
    await asyncio.sleep(0.2)
    assert not task.done()  # still waiting for the handlers
    release.set()
    async with asyncio.timeout(10):
        await task
    st = await statuses(db)
    assert [st[i] for i in ids] == ["done"] * 5
    assert [st[i] for i in late] == ["queued"] * 3
    assert runner.in_flight == 0


async def _true(value: bool) -> bool:
    return value


async def test_runner_cancelled_at_shutdown_leaves_jobs_for_another_worker(
    db: Database, clock: Clock
) -> None:
    q = make_queue(db, clock)
    ids = await add(db, clock, 4)
    quick = ids[:2]
    started: list[int] = []

    async def handle(job: Job) -> None:
        started.append(job.id)
        if job.id not in quick:
            await asyncio.Event().wait()  # hangs until cancelled

    runner = make_runner(q, {"t": handle}, batch_size=10, concurrency=10)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await eventually(lambda: _true(len(started) == 4))
    stop.set()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await task
    assert task.done()
    st = await statuses(db)
    assert [st[i] for i in quick] == ["done", "done"]
    assert [st[i] for i in ids[2:]] == ["running", "running"]  # not completed, not lost

    clock.advance(LEASE + 1)
    retaken = await q.claim("runner-2", 10)
    assert [(j.id, j.attempts) for j in retaken] == [(i, 2) for i in ids[2:]]


async def test_batch_handler_gets_each_claim_in_one_call_and_files_outcomes_per_job(
    db: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gateway.services.jobrunner")
    q = make_queue(db, clock)
    ids = await add(db, clock, 120, max_attempts=3)
    (single,) = await add(db, clock, kind="single")
    permanent = {i for i in ids if i % 7 == 0}
    flaky = {i for i in ids if i % 11 == 0} - permanent  # fail their first attempt only
    calls: list[list[int]] = []
    singles: list[int] = []

    async def run(jobs: list[Job]) -> list[Exception | None]:
        calls.append([j.id for j in jobs])
        await asyncio.sleep(0)
        outcomes: list[Exception | None] = []
        for job in jobs:
            if job.id in permanent:
                outcomes.append(PermanentJobError("recipient rejected"))
            elif job.id in flaky and job.attempts == 1:
                outcomes.append(ConnectionError("smsc went away"))
            else:
                outcomes.append(None)
        return outcomes

    async def handle_single(job: Job) -> None:
        singles.append(job.id)

    runner = make_runner(q, {"t": BatchHandler(run), "single": handle_single}, batch_size=50)
    async with running(runner):
        await eventually(lambda: _count_is(q, "queued", len(flaky)))
        await eventually(lambda: _count_is(q, "running", 0))
        clock.advance(3600)  # past every backoff
        runner.wake()
        await eventually(lambda: _count_is(q, "done", 121 - len(permanent)))
    # One call per claim (at most batch_size jobs), every job in exactly one call per attempt.
    assert all(len(c) <= 50 for c in calls) and len(calls) < len(ids)
    handled = Counter(i for c in calls for i in c)
    assert all(handled[i] == (2 if i in flaky else 1) for i in ids)
    assert singles == [single]
    assert (runner.completed, runner.failed, runner.retried) == (
        121 - len(permanent),
        len(permanent),
        len(flaky),
    )
    row = await q.get(min(permanent))
    assert row is not None and row["status"] == "failed"
    assert row["last_error"] == "PermanentJobError: recipient rejected"


async def test_a_batch_handler_that_raises_fails_its_jobs_alike_and_they_are_retried(
    db: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="gateway.services.jobrunner")
    q = make_queue(db, clock)
    ids = await add(db, clock, 10, max_attempts=3)
    attempts: Counter[int] = Counter()

    async def run(jobs: list[Job]) -> list[Exception | None]:
        for job in jobs:
            attempts[job.id] += 1
        if jobs[0].attempts == 1:
            raise OSError("database went away")
        return [None] * len(jobs)

    runner = make_runner(q, {"t": BatchHandler(run)})
    async with running(runner):

        async def all_failed_once() -> bool:
            rows = [await q.get(i) for i in ids]
            return all(r is not None and r["status"] == "queued" and r["attempts"] == 1 for r in rows)

        await eventually(all_failed_once)
        row = await q.get(ids[0])
        assert row is not None and row["last_error"] == "OSError: database went away"
        clock.advance(3600)
        runner.wake()
        await eventually(lambda: _count_is(q, "done", 10))
    assert set(attempts.values()) == {2}


async def test_a_batch_cancelled_at_shutdown_leaves_its_jobs_for_another_worker(
    db: Database, clock: Clock
) -> None:
    q = make_queue(db, clock)
    ids = await add(db, clock, 3)
    started = asyncio.Event()

    async def run(jobs: list[Job]) -> list[Exception | None]:
        started.set()
        await asyncio.Event().wait()  # hangs until cancelled
        return [None] * len(jobs)

    runner = make_runner(q, {"t": BatchHandler(run)}, batch_size=10, concurrency=10)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    async with asyncio.timeout(10):
        await started.wait()
    stop.set()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await task
    assert task.done() and runner.in_flight == 0
    assert [(await statuses(db))[i] for i in ids] == ["running"] * 3
    clock.advance(LEASE + 1)
    assert [j.id for j in await q.claim("runner-2", 10)] == ids


async def test_runner_wake_cuts_the_poll_sleep_short(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock)
    handled = asyncio.Event()

    async def handle(job: Job) -> None:
        handled.set()

    runner = make_runner(q, {"t": handle}, poll_interval=60)
    async with running(runner):
        await asyncio.sleep(0.1)  # its first claim found nothing: now sleeping 60 s
        await add(db, clock)
        runner.wake()
        async with asyncio.timeout(5):
            await handled.wait()


async def test_runner_renews_leases_of_long_jobs(db: Database, clock: Clock) -> None:
    q = make_queue(db, clock, lease_seconds=0.2)  # renewed every 0.1 s of real time
    (job_id,) = await add(db, clock)
    release = asyncio.Event()
    started = asyncio.Event()

    async def handle(job: Job) -> None:
        started.set()
        await release.wait()

    runner = make_runner(q, {"t": handle})
    async with running(runner):
        async with asyncio.timeout(5):
            await started.wait()
        clock.advance(100)  # the original lease is long gone, but the runner renews it

        async def renewed() -> bool:
            row = await q.get(job_id)
            return row is not None and row["lease_until"] == clock.now + timedelta(seconds=0.2)

        await eventually(renewed, within=5)
        assert await q.claim("someone-else", 5) == []
        release.set()
        await eventually(lambda: _count_is(q, "done", 1))
