"""The job runner: claims due jobs from the durable queue and runs their handlers.

One :class:`JobRunner` per process (or per group of kinds). Its loop:

- claims a batch (only kinds it has handlers for) when it has room: at most
  ``max(batch_size, concurrency)`` jobs are held at once, and it claims again once at least half a
  batch of room is free, so claims stay batched while handlers keep running;
- runs the handlers concurrently, at most ``concurrency`` at a time; a :class:`BatchHandler` gets all
  the jobs of its kind from one claim in one call instead (no task per job);
- settles finished jobs in batches: successes with one :meth:`JobQueue.complete`, failures with one
  :meth:`JobQueue.retry_or_fail_many` (a handler raising :class:`PermanentJobError` is not retried;
  any other exception is, with the queue's backoff, until the job's attempts run out);
- renews the leases of the jobs it still holds every ``lease_seconds / 2``;
- sleeps ``poll_interval`` only after a claim came back empty; :meth:`wake` cuts the sleep short
  (call it after enqueueing work for this process).

Stopping: once ``stop`` is set it claims nothing more, waits for the jobs in flight, settles them and
returns. The caller bounds that wait (``asyncio.timeout`` around :meth:`run`); when it cancels the
runner, unfinished handlers are cancelled and their jobs are *not* completed: they stay ``running``
and another claim takes them after the lease expires, so no job is lost (it may run twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.services.errors import PermanentJobError
from gateway.storage.jobs import Job, JobQueue

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True)
class BatchHandler:
    """A handler for the jobs of its kind that one claim brought, all in one call: ``run(jobs)``
    returns one outcome per job, in order: None (done) or the exception the job failed with (retried
    like a raising :data:`Handler`; :class:`PermanentJobError` fails it). Raising fails every job of
    the call alike. Not bounded by the runner's ``concurrency``: the claim already is."""

    run: Callable[[list[Job]], Awaitable[list[Exception | None]]]


#: How long a cancelled runner still tries to record the successes it already has.
SETTLE_ON_CANCEL_SECONDS = 2.0


class JobRunner:
    """Runs ``handlers[job.kind](job)`` for claimed jobs until ``stop`` is set.

    Counters for /metrics: ``claimed``, ``completed``, ``retried`` (requeued with backoff), ``failed``
    (given up), ``lost`` (outcome not recorded because the lease had passed to another worker),
    ``errors`` (database calls of the loop itself that raised).
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler | BatchHandler],
        *,
        worker_id: str,
        batch_size: int,
        concurrency: int,
        poll_interval: float,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or poll_interval <= 0:
            raise ValueError("batch_size and concurrency must be >= 1, poll_interval > 0")
        self.queue = queue
        self.handlers = dict(handlers)
        self.worker_id = worker_id
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.window = max(batch_size, concurrency)
        self.claimed = 0
        self.completed = 0
        self.retried = 0
        self.failed = 0
        self.lost = 0
        self.errors = 0
        self._kinds = sorted(self.handlers)
        self._sem = asyncio.Semaphore(concurrency)
        self._signal = asyncio.Event()  # anything happened: wake(), stop, a handler finished
        self._woken = False
        self._inflight: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._succeeded: list[Job] = []
        self._errored: list[tuple[Job, str, bool]] = []

    def register(self, kind: str, handler: Handler | BatchHandler) -> None:
        """Add a handler before :meth:`run` starts (components register theirs as they start)."""
        self.handlers[kind] = handler
        self._kinds = sorted(self.handlers)

    @property
    def in_flight(self) -> int:
        """Jobs claimed by this runner and not settled yet."""
        return len(self._inflight)

    def wake(self) -> None:
        """Claim now instead of at the end of the current poll sleep (new work was enqueued)."""
        self._woken = True
        self._signal.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then finish the jobs in flight and return."""
        watcher = asyncio.create_task(self._watch(stop), name=f"jobrunner-stop-{self.worker_id}")
        loop = asyncio.get_running_loop()
        half_lease = self.queue.lease_seconds / 2
        next_claim = 0.0  # loop time before which we do not poll (after an empty claim)
        next_extend = loop.time() + half_lease
        try:
            while True:
                self._signal.clear()
                await self._settle()
                now = loop.time()
                if now >= next_extend:
                    await self._extend()
                    next_extend = now + half_lease
                if stop.is_set():
                    if not self._inflight:
                        break
                else:
                    if self._woken:
                        self._woken = False
                        next_claim = 0.0
                    room = self.window - len(self._inflight)
                    wanted = min(self.batch_size, room)
                    enough = not self._inflight or wanted >= max(1, self.batch_size // 2)
                    if wanted > 0 and enough and now >= next_claim:
                        got = await self._claim(wanted)
                        if got == wanted and len(self._inflight) < self.window:
                            continue  # probably more due: claim again right away
                        if got == 0:
                            next_claim = loop.time() + self.poll_interval
                deadline = next_extend
                if not stop.is_set() and next_claim > loop.time():
                    deadline = min(deadline, next_claim)
                await self._wait(deadline - loop.time())
        except asyncio.CancelledError:
            await self._abandon()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # --- the pieces of the loop ---------------------------------------------------------------------

    async def _watch(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._signal.set()

    async def _wait(self, seconds: float) -> None:
        if seconds <= 0 or self._signal.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._signal.wait()

    async def _claim(self, limit: int) -> int:
        try:
            jobs = await self.queue.claim(self.worker_id, limit, self._kinds)
        except Exception:
            self.errors += 1
            log.exception("job claim failed; retrying after poll_interval")
            return 0
        self.claimed += len(jobs)
        by_kind: dict[str, list[Job]] = {}
        for job in jobs:
            by_kind.setdefault(job.kind, []).append(job)
        for kind, group in by_kind.items():
            handler = self.handlers[kind]
            if isinstance(handler, BatchHandler):
                task = asyncio.create_task(self._execute_batch(handler, group), name=f"jobs-{kind}")
                self._inflight.update((job.id, (job, task)) for job in group)
                continue
            for job in group:
                task = asyncio.create_task(self._execute(handler, job), name=f"job-{job.id}-{kind}")
                self._inflight[job.id] = (job, task)
        return len(jobs)

    async def _execute(self, handler: Handler, job: Job) -> None:
        try:
            async with self._sem:
                await handler(job)
        except asyncio.CancelledError:
            # Not finished: leave it 'running'; after the lease expires another claim retries it.
            self._inflight.pop(job.id, None)
            raise
        except Exception as exc:
            self._outcome(job, exc)
        else:
            self._outcome(job, None)
        self._signal.set()

    async def _execute_batch(self, handler: BatchHandler, jobs: list[Job]) -> None:
        try:
            outcomes = await handler.run(jobs)
            if len(outcomes) != len(jobs):
                raise AssertionError(f"a batch handler gave {len(outcomes)} outcomes for {len(jobs)} jobs")
        except asyncio.CancelledError:
            for job in jobs:
                self._inflight.pop(job.id, None)
            raise
        except Exception as exc:
            outcomes = [exc] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            self._outcome(job, outcome)
        self._signal.set()

    def _outcome(self, job: Job, error: Exception | None) -> None:
        """File a finished job for :meth:`_settle`: done, or failed with ``error``."""
        if error is None:
            self._succeeded.append(job)
        elif isinstance(error, PermanentJobError):
            self._errored.append((job, f"{type(error).__name__}: {error}", False))
        else:
            log.warning(
                "job %s (%s) attempt %s/%s raised",
                job.id,
                job.kind,
                job.attempts,
                job.max_attempts,
                exc_info=error,
                extra={"job_id": job.id, "job_kind": job.kind},
            )
            self._errored.append((job, f"{type(error).__name__}: {error}", True))

    async def _settle(self) -> None:
        """Record finished jobs: successes in one call, failures in another."""
        if self._succeeded:
            batch, self._succeeded = self._succeeded, []
            try:
                done = await self.queue.complete(batch, self.worker_id)
            except Exception:
                self.errors += 1
                log.exception("completing %d jobs failed; will try again", len(batch))
                self._succeeded[:0] = batch
            else:
                self.completed += done
                if done < len(batch):
                    self.lost += len(batch) - done
                    log.warning("%d of %d completed jobs were no longer ours", len(batch) - done, len(batch))
                for job in batch:
                    self._inflight.pop(job.id, None)
        if self._errored:
            failures, self._errored = self._errored, []
            try:
                outcomes = await self.queue.retry_or_fail_many(
                    [(job, error, retryable, None) for job, error, retryable in failures], self.worker_id
                )
            except Exception:
                self.errors += 1
                log.exception("recording %d job failures failed; will try again", len(failures))
                self._errored[:0] = failures
                return
            for (job, error, _retryable), outcome in zip(failures, outcomes, strict=True):
                self._inflight.pop(job.id, None)
                if outcome == "queued":
                    self.retried += 1
                elif outcome == "failed":
                    self.failed += 1
                    log.error(
                        "job %s (%s) failed after %s attempt(s): %s",
                        job.id,
                        job.kind,
                        job.attempts,
                        error,
                        extra={"job_id": job.id, "job_kind": job.kind},
                    )
                else:
                    self.lost += 1

    async def _extend(self) -> None:
        if not self._inflight:
            return
        try:
            await self.queue.extend_lease(list(self._inflight), self.worker_id)
        except Exception:
            self.errors += 1
            log.exception("extending leases failed")

    async def _abandon(self) -> None:
        """Cancelled: stop the handlers (their jobs stay leased) and try briefly to record successes."""
        tasks = list({task for _job, task in self._inflight.values()})  # a batch's jobs share one
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._errored.clear()  # failures simply run again after the lease; do not block shutdown
        if self._succeeded:
            started = time.monotonic()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(SETTLE_ON_CANCEL_SECONDS):
                    await self._settle()
            log.info("recorded finished jobs on cancel in %.3fs", time.monotonic() - started)
        self._inflight.clear()
