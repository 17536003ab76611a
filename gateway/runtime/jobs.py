"""Job runner wiring: the handlers the components registered, run by one JobRunner (the outbox)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.runtime.base import JobHandler, Wiring, log
from gateway.services.jobrunner import JobRunner

__all__ = ["start_jobs"]


async def start_jobs(w: Wiring, runner: JobRunner, handlers: Mapping[str, JobHandler]) -> None:
    """Register every handler and run the runner. Started after the channels, so at shutdown it
    stops (in-flight jobs finish or are cancelled at the deadline) before they close."""
    for kind, handler in handlers.items():
        runner.register(kind, handler)

    def late() -> None:
        log.warning(
            "jobs still running at the shutdown deadline; cancelled, they will be re-claimed",
            extra={"in_flight": runner.in_flight},
        )

    task = w.background("jobrunner", runner.run, on_deadline=late)

    async def ready() -> tuple[bool, dict[str, Any]]:
        return not task.done(), {"in_flight": runner.in_flight, "kinds": sorted(handlers)}

    w.ctx.ready_checks["jobs"] = ready
