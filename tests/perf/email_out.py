"""Benchmark: outbound email through the HTTP API to Postfix's smtp-sink, the daemon in its own process.

    .venv/bin/python tests/perf/email_out.py [--backend sqlite|postgresql|both] [--messages 10000]
                                             [--signing on|off|both] [--connections 8]

Per run: a fresh database, `smtp-sink` (Debian package postfix; falls back to tests/smtp_sink.py in a
separate process when it is missing) on a loopback port, `gateway run` relaying to it (DKIM key from
`gateway dkim-keygen` when signing is on), one tenant with N contacts; then one message to each
contact about its order (a context; `--no-context` leaves it out), POSTed from `--concurrency`
client tasks. Prints one JSON line per run: API accepts/s,
relayed/s (first to last message the relay accepted, from the daemon's counters, polled every
20 ms), end-to-end msgs/s, the daemon's CPU seconds per 1,000 messages and its peak RSS.
Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
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
    free_port,
    fresh_database,
    proc_stats,
    start_daemon,
    start_profiler,
    start_sink,
    stop_daemon,
    stop_process,
    stop_profiler,
)

_SENT = re.compile(r'^gateway_email_relay\{result="sent"\} ([0-9.e+]+)$', re.M)
_FAILED = re.compile(r'^gateway_email_relay\{result="(?:failed|deferred)"\} ([0-9.e+]+)$', re.M)


async def keygen(workdir: Path) -> Path:
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/gateway"),
        "dkim-keygen",
        "--out",
        str(workdir / "dkim"),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "GATEWAY_SMTP__MAIL_DOMAIN": "mail.bench.example"},
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0
    return workdir / "dkim" / "gateway.private"


async def run(
    backend: str,
    n: int,
    concurrency: int,
    connections: int,
    signing: bool,
    context: bool = True,
    profile: str | None = None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-email-"))
    url, schema = await fresh_database(backend, workdir)
    sink_port = free_port()
    sink, sink_kind = await start_sink(sink_port)
    key_file = await keygen(workdir) if signing else ""
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
[smtp]
mail_domain = "mail.bench.example"
message_id_secret = "{secrets.token_hex(16)}"
[relay]
host = "127.0.0.1"
port = {sink_port}
starttls = false
connections = {connections}
[dkim]
private_key_file = "{key_file}"
[queue]
poll_interval_seconds = 0.05
batch_size = 200
[daemon]
log_level = "WARNING"
"""
    )
    proc, port, _log = await start_daemon(config)
    try:
        base = f"http://127.0.0.1:{port}"
        conn = aiohttp.TCPConnector(limit=concurrency + 2)
        async with aiohttp.ClientSession(connector=conn) as http:
            async with http.post(
                f"{base}/v1/tenants",
                json={"name": "Bench Łódź"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                tenant = await resp.json()
            auth = {"Authorization": f"Bearer {tenant['api_key']}"}

            async def put(i: int) -> None:
                contact = {"name": f"Klient {i}", "emails": [f"customer{i}@example.com"]}
                async with http.put(f"{base}/v1/contacts/c{i}", json=contact, headers=auth) as r:
                    assert r.status == 201, await r.text()

            await bounded(put, n, concurrency)
            loop = asyncio.get_running_loop()
            spy = await start_profiler(proc.pid, profile)
            user0, sys0, _ = proc_stats(proc.pid)

            async def send(i: int) -> None:
                body = {
                    "contact_id": f"c{i}",
                    "channels": ["email"],
                    "subject": f"Zamówienie {i} gotowe",
                    "text": f"Dzień dobry,\nzamówienie {i} czeka na odbiór.\nPozdrawiamy",
                }
                if context:
                    body["context"] = {"type": "order", "id": str(i)}
                async with http.post(f"{base}/v1/messages", json=body, headers=auth) as r:
                    assert r.status == 202, await r.text()

            async def relayed() -> tuple[float, float]:
                async with http.get(f"{base}/metrics") as r:
                    body = await r.text()
                sent = _SENT.search(body)
                other = sum(float(m) for m in _FAILED.findall(body))
                return (float(sent.group(1)) if sent else 0.0), other

            first_relay: list[float] = []

            async def watch() -> float:
                async with asyncio.timeout(max(120.0, n / 20)):
                    while True:
                        sent, other = await relayed()
                        if sent and not first_relay:
                            first_relay.append(loop.time())
                        if sent + other >= n:
                            if other:
                                raise RuntimeError(f"{other:.0f} messages failed or were deferred")
                            return loop.time()
                        await asyncio.sleep(0.02)

            t0 = loop.time()
            watcher = asyncio.create_task(watch())
            await bounded(send, n, concurrency)
            t_accepted = loop.time()
            t_done = await watcher
            user1, sys1, rss = proc_stats(proc.pid)
            await stop_profiler(spy)
        return {
            "bench": "email_out",
            "backend": backend,
            "signing": "dkim rsa-sha256" if signing else "off",
            "sink": sink_kind,
            "messages": n,
            "relay_connections": connections,
            "context": context,
            "api_accepts_per_s": round(n / (t_accepted - t0)),
            "relayed_per_s": round(n / (t_done - first_relay[0])),
            "end_to_end_msgs_per_s": round(n / (t_done - t0)),
            "cpu_s_per_1000": round((user1 - user0 + sys1 - sys0) / n * 1000, 3),
            "peak_rss_mb": round(rss, 1),
        }
    finally:
        await stop_daemon(proc)
        await stop_process(sink)
        await drop_database(schema)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--connections", type=int, default=8, help="[relay] connections")
    p.add_argument("--signing", choices=["on", "off", "both"], default="both")
    p.add_argument("--profile", help="py-spy the daemon during the send phase into this file (raw stacks)")
    p.add_argument(
        "--no-context",
        dest="context",
        action="store_false",
        help="send without a context (default: each message names its order, as a shop's notices do)",
    )
    args = p.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    signings = [True, False] if args.signing == "both" else [args.signing == "on"]
    for b in backends:
        for signing in signings:
            result = asyncio.run(
                run(b, args.messages, args.concurrency, args.connections, signing, args.context, args.profile)
            )
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
