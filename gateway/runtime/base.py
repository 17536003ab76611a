"""What the core (``core.py``) and every component's wiring module share.

Kept apart from ``core.py`` so the component modules never import the core (which imports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.config import Config
from gateway.http.context import ApiContext
from gateway.services.jobrunner import BatchHandler

#: One logger for the whole package, named as it was when the runtime was one module: operators
#: filter the JSON lines' ``logger`` field, and splitting the file must not change what they see.
log = logging.getLogger("gateway.runtime")

#: A job handler (``JobRunner.register``): called with the job, raising retries it; or a
#: ``BatchHandler`` for all the jobs of its kind that one claim brought.
JobHandler = Callable[..., Awaitable[None]] | BatchHandler
#: A background loop: runs until the event is set (``Runtime._background``).
BackgroundRun = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do (exit code 1)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class Background(Protocol):
    """``Runtime._background`` bound to the start-up stack: start ``run(stop)`` as a task, stopped
    at shutdown before whatever was started earlier (the stack unwinds in reverse)."""

    def __call__(
        self, name: str, run: BackgroundRun, *, on_deadline: Callable[[], None] | None = None
    ) -> asyncio.Task[None]: ...


@dataclass(frozen=True)
class Wiring:
    """What every component's start function needs from the core.

    ``stack`` is the daemon's AsyncExitStack: a component registers its teardown right after its
    set-up finished, so teardown runs if and only if set-up did, in reverse start order."""

    config: Config
    clock: Callable[[], datetime]
    stack: contextlib.AsyncExitStack
    ctx: ApiContext
    background: Background
