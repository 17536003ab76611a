"""What the in-process daemon tests share: running a Runtime, an HTTP client for its API, polling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.runtime import Runtime

if TYPE_CHECKING:
    from conftest import DbTarget

POOL = ["+48500000001", "+48500000002"]
GATEWAY = [sys.executable, "-m", "gateway"]
START_TIMEOUT = 20.0


class Daemon:
    """A ``gateway run`` process; its JSON log lines are read as they come (a full pipe would
    block the daemon) and kept in ``lines``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.port: int | None = None
        self.lines: list[dict[str, Any]] = []
        self._seen = 0  # wait_log looks at the lines after the last one it returned
        self._more = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = {"raw": raw.decode(errors="replace")}
            self.lines.append(line if isinstance(line, dict) else {"raw": line})
            self._more.set()
        self._more.set()

    async def wait_log(self, msg: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The next log line (after the one this returned last) whose ``msg`` is ``msg``."""
        async with asyncio.timeout(timeout):
            while True:
                while self._seen < len(self.lines):
                    line = self.lines[self._seen]
                    self._seen += 1
                    if line.get("msg") == msg:
                        return line
                if self.reader.done():
                    raise AssertionError(f"daemon exited before logging {msg!r}: {self.lines[-5:]}")
                self._more.clear()
                await self._more.wait()

    async def kill(self) -> None:
        """SIGKILL it if it still runs; wait for it and for the rest of its log."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_gateway(config: Path, env: Mapping[str, str], *, timeout: float = START_TIMEOUT) -> Daemon:
    """``gateway run -c config`` as a child process (JSON logs, the default), returned once it
    logged "gateway started"; killed if it does not within ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        "run",
        "-c",
        str(config),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    d = Daemon(proc)
    try:
        started = await d.wait_log("gateway started", timeout)
    except BaseException:
        await d.kill()
        raise
    d.port = int(started["http_port"])
    return d


@contextlib.asynccontextmanager
async def daemon(config: Path, env: Mapping[str, str]) -> AsyncIterator[Daemon]:
    """:func:`start_gateway` until the block ends (then killed, if it is still running)."""
    d = await start_gateway(config, env)
    try:
        yield d
    finally:
        await d.kill()


@contextlib.asynccontextmanager
async def running(runtime: Runtime, start_timeout: float = 20) -> AsyncIterator[Runtime]:
    """Run the daemon in this loop until the block ends; a failed start raises its error."""
    task = asyncio.create_task(runtime.run())
    started = asyncio.create_task(runtime.started.wait())
    await asyncio.wait([task, started], timeout=start_timeout, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()
    try:
        yield runtime
    finally:
        runtime.stop.set()
        await asyncio.wait_for(task, 20)


def toml_keys(keys: Mapping[str, Any]) -> str:
    """``key = value`` lines (JSON strings, numbers, booleans and arrays are valid TOML values)."""
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())


def config_head(target: DbTarget, tmp_path: Path, token: str | None = None) -> str:
    """The start of every in-process daemon's TOML: the test database, HTTP on port 0 (with the
    admin token, if any) and data under ``tmp_path``."""
    admin = "" if token is None else f'admin_token = "{token}"\n'
    return f"""
[database]
url = "{target.url}"
schema = "{target.pg_schema or ""}"
[http]
port = 0
{admin}[storage]
data_dir = "{tmp_path / "data"}"
"""


def daemon_config(
    target: DbTarget,
    tmp_path: Path,
    *,
    token: str,
    smsc_port: int | None,
    sms: Mapping[str, Any] | None = None,
    queue: Mapping[str, Any] | None = None,
    connector: Mapping[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """Write ``tmp_path/gateway.toml`` for an in-process daemon: the test database, HTTP on port 0,
    the two-number SMS pool, a fast queue, and connector "main" bound to the test SMSC on
    ``smsc_port`` (none if None). ``sms``/``queue``/``connector`` add or override keys of those
    tables; ``extra`` is more TOML appended at the end (it must open its own tables)."""
    smpp = ""
    if smsc_port is not None:
        main = {"name": "main", "host": "127.0.0.1", "port": smsc_port, "system_id": "gw"}
        smpp = "[[smpp.connectors]]\n" + toml_keys(
            {**main, "password": "secret", "tps": 0, **(connector or {})}
        )
    path = tmp_path / "gateway.toml"
    path.write_text(
        config_head(target, tmp_path, token)
        + f"""[sms]
{toml_keys({"pool": POOL, "allowed_regions": ["PL"], **(sms or {})})}
[queue]
{toml_keys({"poll_interval_seconds": 0.05, **(queue or {})})}
[daemon]
shutdown_timeout_seconds = 5
{smpp}
{extra}
"""
    )
    return path


def self_signed_cert(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """(cert.pem, key.pem) in ``directory``: a self-signed CA certificate for ``host`` and 127.0.0.1,
    which a client can trust as its own CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def h(auth: dict[str, str]) -> dict[str, str]:
    """Just the Authorization header of a tenant handle (which also carries its id, secret…)."""
    return {"Authorization": auth["Authorization"]}


class ApiClient:
    """Calls the running daemon's HTTP API."""

    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, admin_token: str) -> None:
        self.runtime = runtime
        self.http = http
        self.base = f"http://127.0.0.1:{runtime.http_port}"
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    async def call(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            return resp.status, await resp.json()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15) -> None:
    """Poll ``check`` (a database or API read) until it holds; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - the condition is a database/API read
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} after {timeout}s") from None
