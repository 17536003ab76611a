"""Shutdown helper shared by the services that record outcomes in background tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)


async def finish_or_cancel(tasks: Collection[asyncio.Task[Any]], timeout: float, what: str) -> None:
    """Let ``tasks`` finish within ``timeout`` seconds; cancel (and wait for) those still running
    then, with a warning naming ``what`` they were doing."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=timeout)
    if pending:
        log.warning("%s still running at the shutdown deadline", what, extra={"tasks": len(pending)})
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
