"""Benchmark: outbound SMS through the HTTP API into the test SMSC, with the daemon in its own process.

    .venv/bin/python tests/perf/sms_out.py [--backend sqlite|postgresql|both] [--messages 20000]
        [--idempotency] [--receipts] [--rate 2000]

Creates a fresh database, starts `gateway run` (window 50, no tps limit) against tests/smsc.py
running in this process, creates one tenant and N contacts, then POSTs N single-part messages to
distinct contacts from `--concurrency` client tasks, flat out or, with `--rate`, at a steady
offered load (the latencies are then the gateway's own, not the queue a flat-out run builds).
Prints one JSON line per backend: API accepts/s, submit_sm/s at the SMSC, end-to-end messages/s
(first accept to last submit_sm), p50/p99 latency from the 202 to the submit_sm at the SMSC, the
daemon's CPU seconds per 1,000 messages and its peak RSS. Bounded: every wait has a deadline.
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


async def run(
    backend: str,
    n: int,
    concurrency: int,
    window: int,
    receipts: bool,
    profile: str | None = None,
    idempotency: bool = False,
    rate: float | None = None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    url, schema = await fresh_database(backend, workdir)
    sim = SmscSimulator(system_id="gw", password="secret")
    sim.receipts = receipts
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
pool = ["+48500000001", "+48500000002", "+48500000003", "+48500000004"]
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
window = {window}
tps = 0
"""
    )
    proc, port, _log = await start_daemon(config)
    try:
        await sim.wait_bound(1, timeout=10)
        base = f"http://127.0.0.1:{port}"
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as http:
            async with http.post(
                f"{base}/v1/tenants",
                json={"name": "Bench", "sms_credits": n * 2},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                tenant = await resp.json()
            auth = {"Authorization": f"Bearer {tenant['api_key']}"}
            numbers = [f"+48600{i:06d}" for i in range(n)]

            async def put(i: int) -> None:
                async with http.put(
                    f"{base}/v1/contacts/c{i}", json={"name": f"c{i}", "phones": [numbers[i]]}, headers=auth
                ) as r:
                    assert r.status == 201, await r.text()

            await bounded(put, n, concurrency)
            spy = await start_profiler(proc.pid, profile)
            user0, sys0, _ = proc_stats(proc.pid)
            accepted: dict[str, float] = {}
            loop = asyncio.get_running_loop()

            async def send(i: int) -> None:
                async with http.post(
                    f"{base}/v1/messages",
                    json={
                        "contact_id": f"c{i}",
                        "channels": ["sms"],
                        "text": f"bench {i}",
                        **({"idempotency_key": f"bench-{i}"} if idempotency else {}),
                    },
                    headers=auth,
                ) as r:
                    assert r.status == 202, await r.text()
                accepted[f"bench {i}"] = loop.time()

            t0 = loop.time()
            await bounded(send, n, concurrency, rate)
            t_accepted = loop.time()
            submits = await sim.wait_submits(n, timeout=max(60.0, n / 50))
            t_done = loop.time()
            user1, sys1, rss = proc_stats(proc.pid)
            async with http.get(f"{base}/metrics") as r:
                metrics_text = await r.text()
            commits = next(
                (
                    float(line.split()[-1])
                    for line in metrics_text.splitlines()
                    if line.startswith("gateway_db_group_commits ")
                ),
                None,
            )
            await stop_profiler(spy)
        arrive = [s.received_at for s in submits]
        lat = sorted(max(0.0, s.received_at - accepted[s.text]) for s in submits if s.text in accepted)
        return {
            "bench": "sms_out",
            "backend": backend,
            "messages": n,
            "window": window,
            "receipts": receipts,
            "idempotency_keys": idempotency,
            "offered_rate_per_s": rate,
            "api_accepts_per_s": round(n / (t_accepted - t0)),
            "smsc_submit_sm_per_s": round(n / (max(arrive) - min(arrive))) if n > 1 else None,
            "end_to_end_msgs_per_s": round(n / (t_done - t0)),
            "latency_p50_ms": round(statistics.median(lat) * 1000, 1),
            "latency_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1),
            "cpu_s_per_1000": round((user1 - user0 + sys1 - sys0) / n * 1000, 3),
            "cpu_user_s_per_1000": round((user1 - user0) / n * 1000, 3),
            "cpu_sys_s_per_1000": round((sys1 - sys0) / n * 1000, 3),
            "peak_rss_mb": round(rss, 1),
            "db_group_commits": commits,
        }
    finally:
        await stop_daemon(proc)
        await sim.stop()
        await drop_database(schema)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--receipts", action="store_true", help="the SMSC also sends delivery receipts")
    p.add_argument("--profile", help="py-spy the daemon during the send phase into this file (raw stacks)")
    p.add_argument("--idempotency", action="store_true", help="every request carries an idempotency_key")
    p.add_argument(
        "--rate", type=float, help="offer this many requests per second (default: as fast as the API answers)"
    )
    args = p.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for b in backends:
        print(
            json.dumps(
                asyncio.run(
                    run(
                        b,
                        args.messages,
                        args.concurrency,
                        args.window,
                        args.receipts,
                        args.profile,
                        args.idempotency,
                        args.rate,
                    )
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
