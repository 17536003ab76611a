"""Garbage-collector settings for the daemon process, applied once it has started.

Measured on the SMS send path (``tests/perf/sms_out.py``, 20,000 messages): with CPython's defaults
the cyclic collector took about 13 % of the daemon's CPU and found almost nothing to free (170
objects in 20,000 requests: our steady-state work makes no reference cycles; reference counting
frees it). Two things made it cost that much:

- every full (generation 2) collection walked everything the process had built at start-up: modules,
  SQLAlchemy's tables and compiled statements, pydantic's validators; about 100 ms each, 14 times;
- the thousands of requests in flight survive the young generations, so the collector ran often.

So, once started: one collection, then :func:`gc.freeze` moves what start-up built to the permanent
generation (never scanned again; it lives as long as the process anyway), and generation 0 is
collected every ``GEN0_THRESHOLD`` net new container objects instead of 700. Cycles made later are
still found and freed; the collector simply runs less often. Only ``gateway run`` calls this: it
changes the whole interpreter, which a test process shares with everything else.
"""

from __future__ import annotations

import gc

#: Net container allocations between generation-0 collections (CPython's default is 700).
GEN0_THRESHOLD = 10_000


def tune_after_start() -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
