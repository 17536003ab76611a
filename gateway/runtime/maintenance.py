"""Housekeeping wiring: purge done jobs, idempotency keys and stray receipts past their retention."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from prometheus_client import Gauge

from gateway.runtime.base import Wiring, log
from gateway.services.maintenance import Maintenance, Retention
from gateway.storage.attachment_files import AttachmentFiles
from gateway.storage.jobs import JobQueue

__all__ = ["start_maintenance"]


def start_maintenance(w: Wiring, queue: JobQueue) -> None:
    cfg = w.config.queue
    ctx = w.ctx
    maintenance = Maintenance(
        ctx.db,
        queue,
        w.clock,
        Retention(
            done_jobs=timedelta(days=cfg.keep_done_days),
            idempotency_keys=timedelta(days=cfg.keep_idempotency_days),
            # Receipts whose part never appeared: an SMSC's stray, or for a message we never sent.
            parked_receipts=timedelta(days=7),
        ),
        files=AttachmentFiles(Path(w.config.storage.data_dir) / "attachments"),
    )

    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await maintenance.run_once()
            except Exception:  # a database hiccup: log it, try again next round
                log.exception("housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.maintenance_seconds)

    w.background("maintenance", loop)
    purged = Gauge(
        "gateway_purged_rows", "Rows deleted by housekeeping since start", ["kind"], registry=ctx.registry
    )

    async def refresh() -> None:
        for kind, n in maintenance.purged.items():
            purged.labels(kind).set(n)

    ctx.metrics_refreshers.append(refresh)
