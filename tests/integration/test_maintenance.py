"""Housekeeping deletes what has served its purpose, and nothing younger or still useful."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from conftest import FakeClock

from gateway.services.maintenance import Maintenance, Retention
from gateway.storage import jobs
from gateway.storage.db import Database
from gateway.storage.tables import idempotency_keys, parked_receipts, tenants

KEEP = Retention(
    done_jobs=timedelta(days=7), idempotency_keys=timedelta(days=7), parked_receipts=timedelta(days=7)
)


async def test_old_rows_go_and_young_or_failed_ones_stay(db: Database, clock: FakeClock) -> None:
    queue = jobs.JobQueue(db, clock=clock, policy=jobs.RetryPolicy(), lease_seconds=60)

    async def seed(conn: sa.ext.asyncio.AsyncConnection) -> None:
        now = clock()
        await conn.execute(
            sa.insert(tenants).values(
                id="ten_1",
                name="T",
                sms_sender_mode="pool",
                attachments_save=False,
                attachments_quota_bytes=0,
                attachments_used_bytes=0,
                sms_credits=0,
                created_at=now,
                updated_at=now,
            )
        )
        for key in ("old", "young"):
            await conn.execute(
                sa.insert(idempotency_keys).values(
                    tenant_id="ten_1", key=key, request_hash="h", status_code=202, response={}, created_at=now
                )
            )
        await conn.execute(
            sa.insert(parked_receipts).values(
                connector="c", smsc_message_key="k", receipt={}, received_at=now
            )
        )
        for _ in range(3):
            await jobs.enqueue(conn, "test", {}, now=now, max_attempts=1)

    await db.write(seed)
    claimed = await queue.claim("w", 3)
    await queue.complete(claimed[:2], "w")
    await queue.retry_or_fail(claimed[2], "w", "boom", retryable=False)  # failed: kept for operators
    clock.advance(days=8)

    async def young(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await conn.execute(
            sa.update(idempotency_keys).where(idempotency_keys.c.key == "young").values(created_at=clock())
        )

    await db.write(young)
    done = await Maintenance(db, queue, clock, KEEP).run_once()
    assert done == {"jobs": 2, "idempotency_keys": 1, "parked_receipts": 1}
    assert {k: n for k, n in (await queue.counts()).items() if n} == {"failed": 1}
    left = await db.read(lambda conn: _keys(conn))
    assert left == ["young"]


async def _keys(conn: sa.ext.asyncio.AsyncConnection) -> list[str]:
    return list((await conn.execute(sa.select(idempotency_keys.c.key))).scalars())


async def test_attachment_files_no_row_refers_to_go_once_old(
    db: Database, clock: FakeClock, tmp_path
) -> None:
    """Files are written before the transaction that refers to them: housekeeping deletes a file only
    when no attachment row refers to it and it is older than the grace period (a crash, or a message
    refused after its files were written, leaves such files)."""
    import os
    import time

    from gateway.storage.attachment_files import AttachmentFiles
    from gateway.storage.tables import attachments, messages, threads

    files = AttachmentFiles(tmp_path / "attachments")
    kept = await files.put(b"referenced by a stored attachment")
    orphan = await files.put(b"left behind by a refused message")
    young = await files.put(b"its transaction has not committed yet")
    stale_tmp = files.path_for(kept).parent / ".tmp-crashed"
    stale_tmp.write_bytes(b"half")
    hour_ago = time.time() - 2 * 3600
    for path in (files.path_for(kept), files.path_for(orphan), stale_tmp):
        os.utime(path, (hour_ago, hour_ago))

    async def seed(conn: sa.ext.asyncio.AsyncConnection) -> None:
        now = clock()
        await conn.execute(
            sa.insert(tenants).values(
                id="ten_1", name="T", sms_sender_mode="pool", attachments_save=True,
                attachments_quota_bytes=10**6, attachments_used_bytes=0, sms_credits=0,
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
        await conn.execute(
            sa.insert(threads).values(
                id="thr_1", tenant_id="ten_1", token="t1", created_at=now, last_message_at=now
            )
        )
        await conn.execute(
            sa.insert(messages).values(
                id="msg_1", tenant_id="ten_1", thread_id="thr_1", direction="inbound", channel="email",
                status="received", created_at=now, updated_at=now,
            )
        )  # fmt: skip
        await conn.execute(
            sa.insert(attachments).values(
                id="att_1", tenant_id="ten_1", message_id="msg_1", filename="a.pdf",
                content_type="application/pdf", size_bytes=33, sha256=kept, stored=True, created_at=now,
            )
        )  # fmt: skip

    await db.write(seed)
    queue = jobs.JobQueue(db, clock=clock, policy=jobs.RetryPolicy(), lease_seconds=60)
    clock.now = datetime.now(UTC)  # file times are real time
    done = await Maintenance(db, queue, clock, KEEP, files=files).run_once()
    assert done["attachment_files"] == 1
    assert files.path_for(kept).is_file() and files.path_for(young).is_file()
    assert not files.path_for(orphan).exists() and not stale_tmp.exists()
    # Writing bytes that are stored already makes the file young again: an in-flight message keeps it.
    os.utime(files.path_for(kept), (hour_ago, hour_ago))
    await files.put(b"referenced by a stored attachment")
    assert files.path_for(kept).stat().st_mtime > hour_ago + 3600
