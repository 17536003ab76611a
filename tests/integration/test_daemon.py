"""`gateway run` as a real process: sd_notify, HTTP, SIGHUP reload, SIGTERM drain; and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import DbTarget
from harness import GATEWAY, START_TIMEOUT, daemon

from gateway.config import load
from gateway.runtime import Runtime
from gateway.storage import jobs as jobqueue
from gateway.storage.db import Database

TOKEN = "daemon-test-admin-token-42"


def write_config(path: Path, target: DbTarget, *, token: str = TOKEN, extra: str = "") -> Path:
    path.write_text(
        f"""
[database]
url = "{target.url}"
schema = "{target.pg_schema or ""}"
[http]
host = "127.0.0.1"
port = 0
admin_token = "{token}"
[storage]
data_dir = "{path.parent / "data"}"
[sms]
pool = ["+48500000001", "+48500000002"]
[daemon]
shutdown_timeout_seconds = 10
{extra}
"""
    )
    return path


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    # A short path: AF_UNIX paths are limited to 108 bytes and pytest's tmp_path can be long.
    directory = tempfile.mkdtemp(prefix="gwn", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()
    os.unlink(os.path.join(directory, "notify"))
    os.rmdir(directory)


async def next_notify(sock: socket.socket, want: str, timeout: float = START_TIMEOUT) -> list[str]:
    """Datagrams received until one contains ``want`` (e.g. READY=1)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            data = (await loop.sock_recv(sock, 4096)).decode()
            seen.append(data)
            if want in data.splitlines():
                return seen


async def test_daemon_lifecycle(db_target: DbTarget, tmp_path: Path, notify_socket: socket.socket) -> None:
    config = write_config(tmp_path / "gateway.toml", db_target)
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    async with daemon(config, env) as d, aiohttp.ClientSession() as http:
        await next_notify(notify_socket, "READY=1")
        await next_notify(notify_socket, "WATCHDOG=1", timeout=5)
        async with http.get(f"{d.url}/readyz") as resp:
            assert resp.status == 200
        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{d.url}/v1/tenants", json={"name": "Daemon Test"}, headers=admin) as resp:
            assert resp.status == 201

        # SIGHUP: a new admin token takes effect without a restart; the old one stops working
        write_config(config, db_target, token="rotated-admin-token-0042")
        d.proc.send_signal(signal.SIGHUP)
        await d.wait_log("config reloaded")
        async with http.get(f"{d.url}/v1/tenants/x", headers=admin) as resp:
            assert resp.status == 401
        async with http.get(
            f"{d.url}/v1/tenants/x", headers={"Authorization": "Bearer rotated-admin-token-0042"}
        ) as resp:
            assert resp.status == 404

        # SIGHUP with a broken file: rejected, the daemon keeps running with what it had
        config.write_text("[http]\nprot = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        rejected = await d.wait_log("reload rejected: config invalid; keeping the running config")
        assert "http.prot" in rejected["error"]
        async with http.get(f"{d.url}/healthz") as resp:
            assert resp.status == 200

        d.proc.send_signal(signal.SIGTERM)
        await next_notify(notify_socket, "STOPPING=1", timeout=10)
        assert await asyncio.wait_for(d.proc.wait(), 15) == 0
        await d.wait_log("gateway stopped", timeout=5)


async def test_sigterm_lets_a_running_job_finish(db_target: DbTarget, tmp_path: Path) -> None:
    """In-process: the shutdown waits for the handler in flight and records its job as done."""
    cfg = load(
        write_config(tmp_path / "g.toml", db_target, extra="[queue]\npoll_interval_seconds = 0.05"), {}
    )
    finished: list[int] = []

    async def slow(job: jobqueue.Job) -> None:
        await asyncio.sleep(0.5)
        finished.append(job.id)

    runtime = Runtime(config=cfg, config_path=None, environ={})
    runtime.job_handlers["test.slow"] = slow
    task = asyncio.create_task(runtime.run())
    started = asyncio.create_task(runtime.started.wait())
    await asyncio.wait([task, started], timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped the start
    assert runtime.started.is_set()
    assert runtime.db is not None
    now = runtime.clock()
    job_id = await runtime.db.write(
        lambda conn: jobqueue.enqueue(conn, "test.slow", {}, now=now, max_attempts=3)
    )
    async with asyncio.timeout(10):
        while True:  # wait until the runner holds it
            queue = jobqueue.JobQueue(
                runtime.db, clock=runtime.clock, policy=jobqueue.RetryPolicy(), lease_seconds=60
            )
            row = await queue.get(job_id)
            if row and row["status"] == "running":
                break
            await asyncio.sleep(0.02)
    runtime.stop.set()
    await asyncio.wait_for(task, 15)
    assert finished == [job_id]
    db = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    try:
        queue = jobqueue.JobQueue(db, clock=runtime.clock, policy=jobqueue.RetryPolicy(), lease_seconds=60)
        row = await queue.get(job_id)
        assert row is not None and row["status"] == "done"
    finally:
        await db.close()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_tenant_create_and_check_config(db_target: DbTarget, tmp_path: Path) -> None:
    config = write_config(tmp_path / "g.toml", db_target)
    rc, out, err = await run_cli("tenant", "create", "Warsztat Nowak", "--prefix", "nowak", "-c", str(config))
    assert rc == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["id"].startswith("ten_")
    assert lines["mailbox"] == "nowak@mail.example.com"
    assert lines["api_key"].startswith("gwk_")
    rc, out, err = await run_cli("tenant", "create", "Other", "--prefix", "nowak", "-c", str(config))
    assert rc == 2 and "mailbox_prefix" in err

    rc, out, _ = await run_cli("check-config", "-c", str(config), env={"GATEWAY_RELAY__PASSWORD": "s3cret"})
    assert rc == 0
    shown = json.loads(out)
    assert shown["http"]["admin_token"] == "***" and shown["relay"]["password"] == "***"
    assert TOKEN not in out and "s3cret" not in out


async def test_cli_refuses_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'eighty'\n")
    rc, _, err = await run_cli("run", "-c", str(bad))
    assert rc == 2 and "http.port" in err and len(err.strip().splitlines()) == 1
    rc, _, err = await run_cli("check-config", env={"GATEWAY_HTTP__PORT": "-1"})
    assert rc == 2 and "GATEWAY_HTTP__PORT" in err
    exposed = tmp_path / "exposed.toml"
    exposed.write_text('[http]\nhost = "0.0.0.0"\nadmin_token = "change-me-admin-token"\n')
    rc, _, err = await run_cli("run", "-c", str(exposed))
    assert rc == 2 and "admin_token" in err
    rc, _, err = await run_cli("frobnicate")
    assert rc == 2


async def test_run_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/empty.sqlite3"\n[http]\nport = 0\n')
    rc, _, err = await run_cli("run", "-c", str(config))
    assert rc == 1 and "gateway migrate" in err
    rc, out, err = await run_cli("migrate", "-c", str(config))
    assert rc == 0 and "revision" in out
