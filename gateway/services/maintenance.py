"""Housekeeping so tables and disk do not grow forever: finished jobs, stray parked receipts, old
idempotency keys, attachment files no row refers to. Each pass deletes in bounded chunks (one short
transaction each), so it never holds the SQLite write lock for long."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.storage import retention
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.db import Database
from gateway.storage.jobs import JobQueue

log = logging.getLogger(__name__)

CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class Retention:
    done_jobs: timedelta  # done and cancelled jobs ("failed" ones stay for operators)
    idempotency_keys: timedelta  # how long a repeated request is recognised
    parked_receipts: timedelta  # receipts for parts we never recorded
    #: An attachment file no row refers to is deleted once it is this old: younger ones may belong
    #: to a message whose transaction has not committed yet (files are written first).
    orphan_files: timedelta = timedelta(hours=1)


class Maintenance:
    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        clock: Callable[[], datetime],
        keep: Retention,
        files: AttachmentFiles | None = None,
    ) -> None:
        self.db = db
        self.queue = queue
        self.clock = clock
        self.keep = keep
        self.files = files
        self.purged: dict[str, int] = {
            "jobs": 0,
            "idempotency_keys": 0,
            "parked_receipts": 0,
            "attachment_files": 0,
        }

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
        if self.files is not None:
            done["attachment_files"] = await self._sweep_files(self.files, now - self.keep.orphan_files)
        for kind, n in done.items():
            self.purged[kind] += n
        if any(done.values()):
            log.info("housekeeping", extra=done)
        return done

    async def _sweep_files(self, files: AttachmentFiles, before: datetime) -> int:
        """Delete attachment files older than ``before`` that no attachment row refers to."""
        cutoff = before.timestamp()
        # Bounded: a pass looks at this many old files at most (in directory order); the rest, if
        # ever there are that many, next time.
        old = await asyncio.to_thread(files.candidates, cutoff, 100 * CHUNK)
        removed = 0
        for start in range(0, len(old), 500):
            chunk = old[start : start + 500]
            kept = await self.db.read(functools.partial(retention.referenced_attachments, hashes=chunk))
            for digest in chunk:
                if digest not in kept:
                    # Checked again right before the unlink: a put of the same bytes refreshes it.
                    removed += await asyncio.to_thread(files.remove, digest, cutoff)
        return removed

    @staticmethod
    async def _drain(step: Callable[[], Awaitable[int]]) -> int:
        total = 0
        for _ in range(100):  # bounded: at most 100 chunks a pass, the rest next time
            n = await step()
            total += n
            if n < CHUNK:
                break
        return total
