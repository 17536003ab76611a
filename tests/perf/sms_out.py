"""Benchmark: outbound SMS through the HTTP API into the test SMSC, with the daemon in its own process.

    .venv/bin/python tests/perf/sms_out.py [--backend sqlite|postgresql|both] [--messages 20000]

Creates a fresh database, starts `gateway run` (window 50, no tps limit) against tests/smsc.py
running in this process, creates one tenant and N contacts, then POSTs N single-part messages to
distinct contacts from `--concurrency` client tasks. Prints one JSON line per backend:
API accepts/s, submit_sm/s at the SMSC, end-to-end messages/s (first accept to last submit_sm),
p50/p99 latency from the 202 to the submit_sm at the SMSC, the daemon's CPU seconds per 1,000
messages and its peak RSS. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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

from smsc import SmscSimulator  # noqa: E402
from sqlalchemy import text  # noqa: E402

from gateway.storage.db import make_engine  # noqa: E402
from gateway.storage.migrate import upgrade  # noqa: E402

PG_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TOKEN = "bench-admin-token-0123456789"


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(user CPU seconds, system CPU seconds, peak RSS MiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
    hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return user, system, hwm


async def run(
    backend: str, n: int, concurrency: int, window: int, receipts: bool, profile: str | None = None
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    schema = ""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir}/gateway.sqlite3"
    else:
        url, schema = PG_URL, f"gw_bench_{secrets.token_hex(4)}"
    await upgrade(url, pg_schema=schema or None)
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
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/gateway"),
        "run",
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GATEWAY_DAEMON__LOG_FORMAT": "json", "GATEWAY_DAEMON__LOG_LEVEL": "INFO"},
    )
    try:
        assert proc.stderr is not None
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError("daemon exited")
                rec = json.loads(line)
                if rec.get("msg") == "gateway started":
                    port = rec["http_port"]
        asyncio.create_task(_drain(proc.stderr))  # noqa: RUF006 - ends with the process
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

            await _bounded(put, n, concurrency)
            spy = None
            if profile:
                spy = await asyncio.create_subprocess_exec(
                    str(ROOT / ".venv/bin/py-spy"),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "-o",
                    profile,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            user0, sys0, _ = proc_stats(proc.pid)
            accepted: dict[str, float] = {}
            loop = asyncio.get_running_loop()

            async def send(i: int) -> None:
                async with http.post(
                    f"{base}/v1/messages",
                    json={"contact_id": f"c{i}", "channels": ["sms"], "text": f"bench {i}"},
                    headers=auth,
                ) as r:
                    assert r.status == 202, await r.text()
                accepted[f"bench {i}"] = loop.time()

            t0 = loop.time()
            await _bounded(send, n, concurrency)
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
            if spy is not None:
                spy.send_signal(2)
                await asyncio.wait_for(spy.wait(), 30)
        arrive = [s.received_at for s in submits]
        lat = sorted(max(0.0, s.received_at - accepted[s.text]) for s in submits if s.text in accepted)
        return {
            "bench": "sms_out",
            "backend": backend,
            "messages": n,
            "window": window,
            "receipts": receipts,
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
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
        await sim.stop()
        if schema:
            engine = make_engine(PG_URL, null_pool=True)
            async with engine.begin() as c:
                await c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            await engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


async def _bounded(fn: Any, n: int, concurrency: int) -> None:
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await fn(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--receipts", action="store_true", help="the SMSC also sends delivery receipts")
    p.add_argument("--profile", help="py-spy the daemon during the send phase into this file (raw stacks)")
    args = p.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for b in backends:
        print(
            json.dumps(
                asyncio.run(run(b, args.messages, args.concurrency, args.window, args.receipts, args.profile))
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
