"""The one place that builds everything and runs the daemon (``gateway run``).

Start-up order: database (checked to be at the migration head), services, then the components
(SMPP, email, IMAP, jobs, maintenance, webhooks, HTTP), each registered on an AsyncExitStack right
after it started, so teardown runs if and only if its set-up finished. Signals only set flags
(SIGTERM/SIGINT: stop, SIGHUP: reload); shutdown is ordinary code: tell systemd STOPPING, stop
accepting, let in-flight work finish within ``[daemon] shutdown_timeout_seconds``, cancel the rest
(a cancelled job is not lost: its lease expires and it is claimed again), close the database.

Layout: ``core.py`` holds ``Runtime`` (the stack, signals, SIGHUP reload, sd_notify, the drain,
``_background``); each component's wiring is a start function in its own module (``smpp.py``,
``email.py``, ``imap.py``, ``jobs.py``, ``maintenance.py``, ``webhooks.py``, ``http.py``), taking a
``Wiring`` (``base.py``: config, clock, stack, API context, background starter) and returning what
the runtime keeps. Only the core decides the order.
"""

from gateway.runtime.base import StartupError, utc_now
from gateway.runtime.core import RESTART_ONLY, Runtime

__all__ = ["RESTART_ONLY", "Runtime", "StartupError", "utc_now"]
