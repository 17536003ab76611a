"""Public ids of rows we create (``msg_…``, ``thr_…``, ``ten_…``): time-ordered, then random.

``PREFIX_`` + 12 hex digits of Unix milliseconds + 12 random hex digits (48 bits from the OS,
fetched 512 ids' worth at a time: one getrandom(2) per id was a measurable share of the send path).
Ids made later sort later (within a millisecond their order is random), so a new row's primary
key, and every index that starts with such an id (a message's thread, a job's or a part's
message), grows at its right edge instead of at a random page: on SQLite that made the inserts of
the SMS accept path markedly cheaper (docs/decisions.md). The id tells when the row was made, which
the API shows anyway (``created_at``); it grants nothing: every lookup is scoped to the tenant.
"""

from __future__ import annotations

import os
import threading
import time

_AHEAD = 512  # ids' worth of randomness read at once
_lock = threading.Lock()
_pool = ""  # hex digits not handed out yet
_pos = 0


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{_random_hex12()}"


def _random_hex12() -> str:
    global _pool, _pos
    with _lock:
        if _pos >= len(_pool):
            _pool, _pos = os.urandom(6 * _AHEAD).hex(), 0
        digits = _pool[_pos : _pos + 12]
        _pos += 12
    return digits


def _forget_after_fork() -> None:
    global _pool, _pos
    _pool, _pos = "", 0  # a forked child must not hand out its parent's next ids


os.register_at_fork(after_in_child=_forget_after_fork)
