"""What the in-process daemon tests share: running a Runtime, an HTTP client for its API, polling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from gateway.runtime import Runtime


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
