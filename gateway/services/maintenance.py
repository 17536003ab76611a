"""Housekeeping so tables do not grow forever: finished jobs, stray parked receipts, old
idempotency keys. Each pass deletes in bounded chunks (one short transaction each), so it never
holds the SQLite write lock for long."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.storage import retention
from gateway.storage.db import Database
from gateway.storage.jobs import JobQueue

log = logging.getLogger(__name__)

CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class Retention:
    done_jobs: timedelta  # done and cancelled jobs ("failed" ones stay for operators)
    idempotency_keys: timedelta  # how long a repeated request is recognised
    parked_receipts: timedelta  # receipts for parts we never recorded


class Maintenance:
    def __init__(self, db: Database, queue: JobQueue, clock: Callable[[], datetime], keep: Retention) -> None:
        self.db = db
        self.queue = queue
        self.clock = clock
        self.keep = keep
        self.purged: dict[str, int] = {"jobs": 0, "idempotency_keys": 0, "parked_receipts": 0}

    async def run_once(self) -> dict[str, int]:
        """One pass; returns how many rows of each kind went."""
        now = self.clock()
        done: dict[str, int] = {}
        done["jobs"] = await self._drain(lambda: self.queue.purge(now - self.keep.done_jobs, limit=CHUNK))
        done["idempotency_keys"] = await self._drain(
            lambda: self.db.write(
                lambda c: retention.purge_idempotency_keys(c, now - self.keep.idempotency_keys, CHUNK)
            )
        )
        done["parked_receipts"] = await self._drain(
            lambda: self.db.write(
                lambda c: retention.purge_parked_receipts(c, now - self.keep.parked_receipts, CHUNK)
            )
        )
        for kind, n in done.items():
            self.purged[kind] += n
        if any(done.values()):
            log.info("housekeeping", extra=done)
        return done

    @staticmethod
    async def _drain(step: Callable[[], Awaitable[int]]) -> int:
        total = 0
        for _ in range(100):  # bounded: at most 100 chunks a pass, the rest next time
            n = await step()
            total += n
            if n < CHUNK:
                break
        return total
