"""The durable outbox / job queue (SQLAlchemy Core, SQLite and PostgreSQL).

A job is a row in ``jobs``. It is written by :func:`enqueue` *inside the caller's unit of work*, so it
commits (or rolls back) together with the rows it is about, e.g. the message to send. Workers take
jobs with :meth:`JobQueue.claim` under a time-limited lease and report back with
:meth:`JobQueue.complete` or :meth:`JobQueue.retry_or_fail`.

State machine (``status``)::

    queued --claim--> running --complete--> done
      ^                  |  \\--retry_or_fail (attempts left, retryable)--> queued (run_at = now + backoff)
      |                  |   \\-retry_or_fail (no attempts left / permanent)--> failed
      |                  |--lease expired, attempts left--> running again (claimed by another worker)
      |                  \\--lease expired, attempts exhausted--> failed ("lease expired after N attempts")
    queued --cancel_for_message--> cancelled

Guarantees and conventions:

- At least once: a job is ``done`` only after a worker said so while still holding it. A worker that
  dies (crash, ``kill -9``, cancelled at shutdown) leaves its jobs ``running``; when the lease runs out
  another claim takes them again. Handlers must therefore be idempotent or detect duplicates.
- Exclusive: PostgreSQL claims with ``SELECT … FOR UPDATE SKIP LOCKED`` (in a materialized CTE, so the
  locked set is computed exactly once) and ``UPDATE … RETURNING``, so concurrent workers never take the
  same job; on SQLite the single writer lock serialises claimers (claims go through ``db.write``).
- Fencing: ``complete`` / ``retry_or_fail`` / ``extend_lease`` only touch rows that are still
  ``running`` *and* ``locked_by`` the calling worker, so a worker that lost its lease (and whose job
  was re-claimed) cannot overwrite the new owner's outcome.
- ``attempts`` counts claims. It is incremented when a job is claimed, so a job that keeps crashing
  its worker still uses up attempts and ends ``failed`` instead of looping forever (poison jobs).
- Every timestamp comes from the injected clock (aware UTC), never from the database server, so
  tests can move time and both engines compare the same values.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage.db import Database, fetch, insert, run
from gateway.storage.tables import UTCDateTime, jobs

__all__ = [
    "STATUSES",
    "Job",
    "JobQueue",
    "RetryOutcome",
    "RetryPolicy",
    "cancel_for_message",
    "enqueue",
]

STATUSES = ("queued", "running", "done", "failed", "cancelled")
#: Longest ``last_error`` kept (tracebacks or remote error pages can be huge).
MAX_ERROR_CHARS = 2000
_KIND_MAX = jobs.c.kind.type.length  # type: ignore[attr-defined]
#: Insert through gateway.storage.db.insert (raw sqlite3 inside the SQLite writer, with the columns'
#: own bind processors); tests switch it off to compare with what SQLAlchemy Core stores.
_FAST_SQLITE_INSERT = True

RetryOutcome = Literal["queued", "failed", "lost"]

_J = jobs
_RETURNED = (
    _J.c.id,
    _J.c.kind,
    _J.c.payload,
    _J.c.attempts,
    _J.c.max_attempts,
    _J.c.run_at,
    _J.c.message_id,
    _J.c.tenant_id,
)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job as a worker sees it. ``attempts`` already counts the current attempt (1 = first)."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    run_at: datetime
    message_id: str | None
    tenant_id: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for failed attempts.

    After attempt ``n`` (1-based) the ceiling is ``min(max_seconds, base_seconds * 2 ** (n - 1))``.
    With ``jitter="equal"`` (the default) the delay is uniform in ``[ceiling / 2, ceiling]``: retries
    from many jobs that failed together (a remote outage) spread out, yet never come back almost at once.
    ``jitter="full"`` is uniform in ``[0, ceiling]`` (the most spreading, but may retry immediately);
    ``jitter="none"`` is the ceiling itself. ``max_attempts`` is the default callers pass to
    :func:`enqueue`; the queue itself honours each job's stored ``max_attempts``.
    """

    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    max_attempts: int = 8
    jitter: Literal["equal", "full", "none"] = "equal"

    def __post_init__(self) -> None:
        if self.base_seconds <= 0 or self.max_seconds < self.base_seconds:
            raise ValueError("RetryPolicy needs 0 < base_seconds <= max_seconds")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.jitter not in ("equal", "full", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")

    def delay(self, attempts: int, rand: float) -> float:
        """Seconds to wait after ``attempts`` attempts failed; ``rand`` is uniform in [0, 1)."""
        exponent = min(max(attempts, 1) - 1, 60)  # 2**60 * base is past any sane max_seconds
        ceiling = min(self.max_seconds, self.base_seconds * 2.0**exponent)
        if self.jitter == "equal":
            return ceiling / 2 + rand * ceiling / 2
        if self.jitter == "full":
            return rand * ceiling
        return ceiling


# --- statements built once; SQLAlchemy caches their compiled form per dialect ----------------------

_INSERT = sa.insert(_J)

_CANCEL = (
    sa.update(_J)
    .where(_J.c.message_id == sa.bindparam("m_id"), _J.c.status == "queued")
    .values(status="cancelled", updated_at=sa.bindparam("now", type_=UTCDateTime()))
)


def _owned(ids: Collection[int], worker_id: str) -> list[sa.ColumnElement[bool]]:
    return [_J.c.id.in_(list(ids)), _J.c.locked_by == worker_id, _J.c.status == "running"]


def job_row(
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    run_at: datetime | None = None,
    message_id: str | None = None,
    tenant_id: str | None = None,
    max_attempts: int,
) -> dict[str, Any]:
    """A ``queued`` job's row, for :func:`enqueue` or, several at once, :func:`enqueue_rows`."""
    if not kind or len(kind) > _KIND_MAX:
        raise ValueError(f"job kind must be 1..{_KIND_MAX} characters: {kind!r}")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    return {
        "kind": kind,
        "payload": payload,
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_at": run_at if run_at is not None else now,
        "message_id": message_id,
        "tenant_id": tenant_id,
        "created_at": now,
        "updated_at": now,
    }


async def enqueue_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Add the jobs :func:`job_row` made, in one statement (as :func:`enqueue`: in the caller's unit)."""
    if rows:
        await insert(conn, _J, rows)


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    run_at: datetime | None = None,
    message_id: str | None = None,
    tenant_id: str | None = None,
    max_attempts: int,
) -> int:
    """Add a ``queued`` job in the caller's transaction (call it inside ``db.write``); return its id.

    ``run_at`` is when it becomes due (a scheduled ``send_at``); default ``now``. Nobody sees the job
    before the caller's unit of work commits, and it vanishes if that unit fails.
    """
    values = job_row(
        kind,
        payload,
        now=now,
        run_at=run_at,
        message_id=message_id,
        tenant_id=tenant_id,
        max_attempts=max_attempts,
    )
    if _FAST_SQLITE_INSERT:
        job_id = await insert(conn, _J, values)
        if job_id is not None:
            return job_id
    result = await conn.execute(_INSERT, values)
    return int(result.inserted_primary_key[0])  # type: ignore[index]


async def cancel_for_message(conn: AsyncConnection, message_id: str, *, now: datetime) -> int:
    """Cancel the message's jobs that no worker holds yet (``queued``), in the caller's transaction.

    Returns how many were cancelled. A job already ``running`` is not stopped (its worker may be
    talking to the remote side right now); the caller decides what a late outcome means.
    """
    result = await conn.execute(_CANCEL, {"m_id": message_id, "now": now})
    return result.rowcount


def _claim_statement(expired: bool, with_kinds: bool) -> Any:
    """Claim due jobs (prebuilt: a claim runs for every batch of work). ``expired``: running jobs whose
    lease ran out and that have attempts left; else queued jobs whose time has come."""
    now: sa.BindParameter[datetime] = sa.bindparam("b_now", type_=UTCDateTime())
    where: list[sa.ColumnElement[bool]] = (
        [_J.c.status == "running", _J.c.lease_until < now, _J.c.attempts < _J.c.max_attempts]
        if expired
        else [_J.c.status == "queued", _J.c.run_at <= now]
    )
    if with_kinds:
        where.append(_J.c.kind.in_(sa.bindparam("b_kinds", expanding=True)))
    picked = (
        sa.select(_J.c.id)
        .where(*where)
        .order_by(_J.c.run_at, _J.c.id)
        .limit(sa.bindparam("b_lim", type_=sa.Integer))
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("picked")
        # Locked rows must be chosen exactly once; a re-scanned subquery could lock a second set.
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        sa.update(_J)
        .where(_J.c.id.in_(sa.select(picked.c.id)))
        .values(
            status="running",
            lease_until=sa.bindparam("b_lease"),
            locked_by=sa.bindparam("b_worker"),
            attempts=_J.c.attempts + 1,
            updated_at=now,
        )
        .returning(*_RETURNED)
    )


_CLAIM = {
    (expired, kinds): _claim_statement(expired, kinds) for expired in (True, False) for kinds in (True, False)
}


def _fail_exhausted_statement() -> Any:
    now: sa.BindParameter[datetime] = sa.bindparam("b_now", type_=UTCDateTime())
    victims = (
        sa.select(_J.c.id)
        .where(_J.c.status == "running", _J.c.lease_until < now, _J.c.attempts >= _J.c.max_attempts)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("exhausted")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    message = sa.literal("lease expired after ") + sa.cast(_J.c.attempts, sa.String) + sa.literal(" attempts")
    return (
        sa.update(_J)
        .where(_J.c.id.in_(sa.select(victims.c.id)))
        .values(status="failed", last_error=message, lease_until=None, updated_at=now)
    )


_FAIL_EXHAUSTED = _fail_exhausted_statement()
_COMPLETE = (
    sa.update(_J)
    .where(
        _J.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        _J.c.locked_by == sa.bindparam("b_worker"),
        _J.c.status == "running",
    )
    .values(status="done", lease_until=None, updated_at=sa.bindparam("b_now", type_=UTCDateTime()))
)


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        payload=row["payload"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        run_at=row["run_at"],
        message_id=row["message_id"],
        tenant_id=row["tenant_id"],
    )


def _ids(items: Iterable[Job] | Iterable[int]) -> list[int]:
    return [item.id if isinstance(item, Job) else int(item) for item in items]


class JobQueue:
    """Claiming and settling jobs for workers. All writes go through ``db.write`` (group commit on SQLite).

    ``clock`` returns aware UTC "now"; ``lease_seconds`` is how long a claim is exclusive unless
    :meth:`extend_lease` renews it; ``rand`` feeds the backoff jitter (inject for tests).
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime],
        policy: RetryPolicy,
        lease_seconds: float,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.db = db
        self.clock = clock
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.rand = rand
        self._lease = timedelta(seconds=lease_seconds)

    # --- claiming ---------------------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, kinds: Collection[str] | None = None) -> list[Job]:
        """Take up to ``limit`` due jobs for ``worker_id`` (one transaction); return them by run_at, id.

        Due means ``queued`` with ``run_at <= now``, or ``running`` with an expired lease (its worker is
        presumed dead). Jobs whose lease expired are taken first (they are the oldest work), then
        queued ones. Each claimed job gets ``status='running'``, ``locked_by=worker_id``,
        ``lease_until=now+lease`` and ``attempts+1``. Before that, the same transaction fails every
        expired-lease job that has no attempts left (of any kind), so a job that kills its worker
        ends ``failed`` with ``last_error='lease expired after N attempts'``.
        ``kinds`` restricts claiming to those kinds (``None``: any kind).
        """
        if limit <= 0:
            return []
        kind_list = sorted(set(kinds)) if kinds is not None else None
        if kind_list is not None and not kind_list:
            return []

        async def unit(conn: AsyncConnection) -> list[Job]:
            now = self.clock()
            lease_until = now + self._lease
            await self._fail_exhausted(conn, now)
            claimed = await self._claim_where(
                conn,
                True,  # expired leases first: the oldest work
                limit,
                kind_list,
                now,
                lease_until,
                worker_id,
            )
            if len(claimed) < limit:
                claimed += await self._claim_where(
                    conn,
                    False,
                    limit - len(claimed),
                    kind_list,
                    now,
                    lease_until,
                    worker_id,
                )
            return claimed

        return await self.db.write(unit)

    async def _fail_exhausted(self, conn: AsyncConnection, now: datetime) -> None:
        await conn.execute(_FAIL_EXHAUSTED, {"b_now": now})

    async def _claim_where(
        self,
        conn: AsyncConnection,
        expired: bool,
        limit: int,
        kinds: list[str] | None,
        now: datetime,
        lease_until: datetime,
        worker_id: str,
    ) -> list[Job]:
        params: dict[str, Any] = {"b_now": now, "b_lim": limit, "b_lease": lease_until, "b_worker": worker_id}
        if kinds is not None:
            params["b_kinds"] = kinds
        rows = await fetch(conn, _CLAIM[(expired, kinds is not None)], params)
        found = [_job(r) for r in rows]
        found.sort(key=lambda j: (j.run_at, j.id))  # RETURNING order is unspecified
        return found

    # --- settling ---------------------------------------------------------------------------------

    async def complete(self, jobs: Sequence[Job] | Sequence[int], worker_id: str) -> int:
        """Mark the given jobs ``done`` where this worker still holds them; return how many changed."""
        ids = _ids(jobs)
        if not ids:
            return 0

        async def unit(conn: AsyncConnection) -> int:
            return await run(conn, _COMPLETE, {"b_ids": ids, "b_worker": worker_id, "b_now": self.clock()})

        return await self.db.write(unit)

    async def retry_or_fail(
        self,
        job: Job,
        worker_id: str,
        error: str,
        *,
        retryable: bool = True,
        delay: float | None = None,
    ) -> RetryOutcome:
        """Record a failed attempt: ``'queued'`` again after a backoff, or ``'failed'`` for good.

        Failed for good when not ``retryable`` or when the attempt just made was the last
        (``job.attempts >= job.max_attempts``). ``delay`` overrides the policy's backoff (e.g. the
        remote's Retry-After). ``error`` is stored in ``last_error`` (truncated). Returns ``'lost'``
        and changes nothing when the worker no longer holds the job (its lease expired and someone
        else claimed it).
        """
        (outcome,) = await self.retry_or_fail_many([(job, error, retryable, delay)], worker_id)
        return outcome

    async def retry_or_fail_many(
        self,
        failures: Sequence[tuple[Job, str, bool, float | None]],
        worker_id: str,
    ) -> list[RetryOutcome]:
        """:meth:`retry_or_fail` for several ``(job, error, retryable, delay)`` in one transaction."""
        if not failures:
            return []
        # (job id, new status, backoff or None, error)
        plans: list[tuple[int, RetryOutcome, timedelta | None, str]] = []
        for job, error, retryable, delay in failures:
            if not retryable or job.attempts >= job.max_attempts:
                plans.append((job.id, "failed", None, error[:MAX_ERROR_CHARS]))
                continue
            seconds = delay if delay is not None else self.policy.delay(job.attempts, self.rand())
            plans.append((job.id, "queued", timedelta(seconds=max(seconds, 0.0)), error[:MAX_ERROR_CHARS]))

        async def unit(conn: AsyncConnection) -> list[RetryOutcome]:
            now = self.clock()
            outcomes: list[RetryOutcome] = []
            for job_id, status, backoff, error in plans:
                values: dict[str, Any] = {
                    "status": status,
                    "last_error": error,
                    "lease_until": None,
                    "updated_at": now,
                }
                if backoff is not None:  # back to the queue: nobody holds it until it is due again
                    values["run_at"] = now + backoff
                    values["locked_by"] = None
                result = await conn.execute(
                    sa.update(_J).where(*_owned([job_id], worker_id)).values(**values)
                )
                outcomes.append(status if result.rowcount else "lost")
            return outcomes

        return await self.db.write(unit)

    async def extend_lease(self, job_ids: Sequence[Job] | Sequence[int], worker_id: str) -> int:
        """Renew the lease (now + lease_seconds) of jobs this worker still holds; return how many."""
        ids = _ids(job_ids)
        if not ids:
            return 0

        async def unit(conn: AsyncConnection) -> int:
            now = self.clock()
            result = await conn.execute(
                sa.update(_J)
                .where(*_owned(ids, worker_id))
                .values(lease_until=now + self._lease, updated_at=now)
            )
            return result.rowcount

        return await self.db.write(unit)

    # --- inspection and housekeeping ----------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero if none), for /metrics."""

        async def unit(conn: AsyncConnection) -> dict[str, int]:
            rows = await conn.execute(sa.select(_J.c.status, sa.func.count()).group_by(_J.c.status))
            found = dict.fromkeys(STATUSES, 0)
            for status, n in rows:
                found[status] = n
            return found

        return await self.db.read(unit)

    async def get(self, job_id: int) -> dict[str, Any] | None:
        """The whole row of one job as a dict (timestamps aware UTC), or None."""

        async def unit(conn: AsyncConnection) -> dict[str, Any] | None:
            row = (await conn.execute(sa.select(_J).where(_J.c.id == job_id))).first()
            return dict(row._mapping) if row is not None else None

        return await self.db.read(unit)

    async def purge(
        self,
        before: datetime,
        *,
        statuses: Collection[str] = ("done", "cancelled"),
        limit: int = 10_000,
    ) -> int:
        """Delete up to ``limit`` finished jobs last updated before ``before``; return how many.

        Call periodically so the table does not grow forever; ``failed`` jobs are kept by default
        for operators to inspect.
        """
        bad = set(statuses) - {"done", "failed", "cancelled"}
        if bad:
            raise ValueError(f"only finished jobs can be purged, not {sorted(bad)}")

        async def unit(conn: AsyncConnection) -> int:
            old = (
                sa.select(_J.c.id)
                .where(_J.c.status.in_(sorted(statuses)), _J.c.updated_at < before)
                .limit(limit)
                .scalar_subquery()
            )
            result = await conn.execute(sa.delete(_J).where(_J.c.id.in_(old)))
            return result.rowcount

        return await self.db.write(unit)
