"""Benchmark: inbound SMS (MO replies) from the test SMSC into the daemon running in its own process.

    .venv/bin/python tests/perf/sms_in.py [--backend sqlite|postgresql|both] [--replies 20000]
        [--assignments 2000] [--window 50] [--profile FILE]

Creates a fresh database, starts `gateway run` against tests/smsc.py running in this process, creates
one tenant with N contacts and sends each one SMS through the API (so N pool assignments exist, the
way production makes them), waits until the SMSC has them all, then injects the replies as MO
deliver_sm (single-part GSM texts, each different, spread evenly over the assignments) keeping at
most ``--window`` of them unanswered, as an SMSC's window does. Prints one JSON line per backend:
stored replies/s (first deliver_sm to last deliver_sm_resp; the resp comes only after the commit),
p50/p99 from deliver_sm to deliver_sm_resp, the daemon's CPU seconds per 1,000 replies, its peak RSS,
and a check that every reply is in the database exactly once. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
# tests/perf/queue.py would shadow the stdlib queue module (aiosqlite imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from perf_support import (  # noqa: E402
    TOKEN,
    bounded,
    drop_database,
    fresh_database,
    proc_stats,
    start_daemon,
    start_profiler,
    stop_daemon,
    stop_profiler,
)
from smsc import SmscSimulator  # noqa: E402

from gateway.storage.db import make_engine  # noqa: E402
from gateway.storage.tables import drops, messages  # noqa: E402

POOL = ["+48500000001", "+48500000002", "+48500000003", "+48500000004"]


class TimedSmsc(SmscSimulator):
    """The test SMSC, also noting when each deliver_sm_resp arrived (event-loop time)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.resp_at: dict[int, float] = {}

    def _on_deliver_resp(self, conn: Any, command_id: int, status: int, seq: int) -> None:
        self.resp_at[seq] = asyncio.get_running_loop().time()
        super()._on_deliver_resp(conn, command_id, status, seq)


async def run(
    backend: str, n: int, assignments: int, window: int, profile: str | None = None
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-in-"))
    url, schema = await fresh_database(backend, workdir)
    sim = TimedSmsc(system_id="gw", password="secret", record=False)
    sim.receipts = False
    await sim.start()
    config = workdir / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
schema = "{schema}"
[http]
port = 0
admin_token = "{TOKEN}"
[storage]
data_dir = "{workdir / "data"}"
[sms]
pool = {json.dumps(POOL)}
allowed_regions = ["PL"]
[queue]
poll_interval_seconds = 0.05
batch_size = 200
[daemon]
log_level = "WARNING"
[[smpp.connectors]]
name = "bench"
host = "127.0.0.1"
port = {sim.port}
system_id = "gw"
password = "secret"
window = 50
tps = 0
"""
    )
    proc, port, drain = await start_daemon(config)
    try:
        await sim.wait_bound(1, timeout=10)
        base = f"http://127.0.0.1:{port}"
        numbers = [f"+48600{i:06d}" for i in range(assignments)]
        senders: dict[str, str] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            async with http.post(
                f"{base}/v1/tenants",
                json={"name": "Bench", "sms_credits": assignments * 2},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                tenant = await resp.json()
            auth = {"Authorization": f"Bearer {tenant['api_key']}"}

            async def setup(i: int) -> None:
                body = {"name": f"c{i}", "phones": [numbers[i]]}
                async with http.put(f"{base}/v1/contacts/c{i}", json=body, headers=auth) as r:
                    assert r.status == 201, await r.text()
                body = {"contact_id": f"c{i}", "channels": ["sms"], "text": f"Czy odbierze Pan rower? ({i})"}
                async with http.post(f"{base}/v1/messages", json=body, headers=auth) as r:
                    assert r.status == 202, await r.text()
                    senders[numbers[i]] = (await r.json())["messages"][0]["sms"]["sender"]

            await bounded(setup, assignments, 64)
        await sim.wait_until(lambda: sim.accepted_count >= assignments, 120, "outbound submits")

        spy = await start_profiler(proc.pid, profile)
        loop = asyncio.get_running_loop()
        user0, sys0, _ = proc_stats(proc.pid)
        sent_at: dict[int, float] = {}
        t0 = loop.time()
        for k in range(n):
            customer = numbers[k % assignments]
            if k - len(sim.deliver_resps) >= window:
                await sim.wait_until(lambda k=k: k - len(sim.deliver_resps) < window, 60, "window slot")
            text = f"Tak, bede jutro o {k % 24}:00 (odpowiedz {k})"
            seq = await sim.mo_text(customer.lstrip("+"), senders[customer].lstrip("+"), text)
            sent_at[seq] = loop.time()
        await sim.wait_deliver_resps(n, timeout=max(60.0, n / 100))
        t_done = loop.time()
        user1, sys1, rss = proc_stats(proc.pid)
        await stop_profiler(spy)
        errors = sum(1 for _, status in sim.deliver_resps if status != 0)
        lat = sorted(sim.resp_at[s] - t for s, t in sent_at.items() if s in sim.resp_at)
        stored, dropped = await _count(url, schema)
        return {
            "bench": "sms_in",
            "backend": backend,
            "replies": n,
            "assignments": assignments,
            "window": window,
            "stored_replies_per_s": round(n / (t_done - t0)),
            "latency_p50_ms": round(statistics.median(lat) * 1000, 1),
            "latency_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1),
            "cpu_s_per_1000": round((user1 - user0 + sys1 - sys0) / n * 1000, 3),
            "cpu_user_s_per_1000": round((user1 - user0) / n * 1000, 3),
            "cpu_sys_s_per_1000": round((sys1 - sys0) / n * 1000, 3),
            "peak_rss_mb": round(rss, 1),
            "stored": stored,
            "dropped": dropped,
            "error_resps": errors,
        }
    finally:
        await stop_daemon(proc)
        drain.cancel()
        await sim.stop()
        await drop_database(schema)
        shutil.rmtree(workdir, ignore_errors=True)


async def _count(url: str, schema: str) -> tuple[int, int]:
    """Inbound messages stored and drop records, read back from the database."""
    engine = make_engine(url, null_pool=True, pg_schema=schema or None)
    try:
        async with engine.connect() as c:
            stored = (
                await c.execute(sa.select(sa.func.count()).where(messages.c.direction == "inbound"))
            ).scalar_one()
            dropped = (await c.execute(sa.select(sa.func.count()).select_from(drops))).scalar_one()
    finally:
        await engine.dispose()
    return int(stored), int(dropped)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--replies", type=int, default=20000)
    p.add_argument("--assignments", type=int, default=2000)
    p.add_argument("--window", type=int, default=50, help="deliver_sm the SMSC keeps unanswered at most")
    p.add_argument("--profile", help="py-spy the daemon during the MO phase into this file (raw stacks)")
    args = p.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for b in backends:
        result = asyncio.run(run(b, args.replies, args.assignments, args.window, args.profile))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
