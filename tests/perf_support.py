"""What the benchmarks in tests/perf share: a fresh database, the daemon as its own process, the
profiler, /proc figures and a bounded load loop. (Lives in tests/, which the benchmarks put on
sys.path, because tests/perf/queue.py would shadow the stdlib queue module there.)"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness import start_gateway
from sqlalchemy import text

from gateway.storage.db import make_engine
from gateway.storage.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TOKEN = "bench-admin-token-0123456789"


def tool(name: str) -> str | None:
    """A Postfix test program (smtp-sink, smtp-source): on PATH or in /usr/sbin, else None."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)


SMTP_SINK = tool("smtp-sink")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, proc: asyncio.subprocess.Process, what: str) -> None:
    """Until ``port`` accepts a connection (15 s at most); fails early if ``proc`` exited."""
    async with asyncio.timeout(15):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode})")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def start_sink(port: int) -> tuple[asyncio.subprocess.Process, str]:
    """An SMTP server on ``port`` that accepts every message and throws it away: Postfix's
    smtp-sink, or tests/smtp_sink.py without Postfix. Returns the process and which one it is."""
    if SMTP_SINK:
        # -u: the user to run as after binding (root would otherwise switch to "postfix");
        # 256: the listen backlog.
        user = "postfix" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        args = [SMTP_SINK, "-u", user, f"127.0.0.1:{port}", "256"]
        kind = "postfix smtp-sink"
    else:
        args = [sys.executable, str(ROOT / "tests" / "smtp_sink.py"), "--port", str(port)]
        kind = "tests/smtp_sink.py"
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await wait_port(port, proc, "the sink")
    return proc, kind


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def fresh_database(backend: str, workdir: Path) -> tuple[str, str]:
    """(url, PostgreSQL schema or "") of a newly migrated database for one run."""
    if backend == "sqlite":
        url, schema = f"sqlite+aiosqlite:///{workdir}/gateway.sqlite3", ""
    else:
        url, schema = PG_URL, f"gw_bench_{secrets.token_hex(4)}"
    await upgrade(url, pg_schema=schema or None)
    return url, schema


async def drop_database(schema: str) -> None:
    """Remove a run's PostgreSQL schema (the SQLite file goes with the work directory)."""
    if not schema:
        return
    engine = make_engine(PG_URL, null_pool=True)
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await engine.dispose()


async def start_daemon(config: Path) -> tuple[asyncio.subprocess.Process, int, asyncio.Task[None]]:
    """``gateway run -c config`` with JSON logs at INFO; returns once it logged "gateway started"
    (30 s at most): the process, its HTTP port, and the task that keeps reading its log."""
    env = {"GATEWAY_DAEMON__LOG_FORMAT": "json", "GATEWAY_DAEMON__LOG_LEVEL": "INFO"}
    d = await start_gateway(config, env, timeout=30)
    assert d.port is not None
    return d.proc, d.port, d.reader


async def stop_daemon(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def start_profiler(pid: int, out: str | None) -> asyncio.subprocess.Process | None:
    """py-spy (raw stacks, 200 Hz) on ``pid`` into ``out``; None when no file was asked for."""
    if not out:
        return None
    return await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
        "-o", out, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stop_profiler(spy: asyncio.subprocess.Process | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        await asyncio.wait_for(spy.wait(), 30)


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


async def bounded(
    fn: Callable[[int], Awaitable[None]], n: int, concurrency: int, rate: float | None = None
) -> None:
    """``fn(0) … fn(n-1)`` from ``concurrency`` tasks at most; with ``rate``, ``fn(i)`` starts no
    sooner than ``i / rate`` seconds after the first (a steady offered load instead of flat out)."""
    it = iter(range(n))
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def worker() -> None:
        for i in it:
            if rate:
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await fn(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
