"""Public ids of rows we create (``msg_…``, ``thr_…``, ``ten_…``): time-ordered, then random.

``PREFIX_`` + 12 hex digits of Unix milliseconds + 12 random hex digits (48 bits from the OS).
Ids made later sort later (within a millisecond their order is random), so a new row's primary
key, and every index that starts with such an id (a message's thread, a job's or a part's
message), grows at its right edge instead of at a random page: on SQLite that made the inserts of
the SMS accept path markedly cheaper (docs/decisions.md). The id tells when the row was made, which
the API shows anyway (``created_at``); it grants nothing: every lookup is scoped to the tenant.
"""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"
