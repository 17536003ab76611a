"""Sender rules: sticky pool numbers and alphanumeric headers (SPEC 1, 2.5).

Allocation rule (what makes SMS replies routable): a (pool number, customer number) pair belongs
to at most one tenant while its last use is within the reply window. A tenant keeps the number it
used for a customer (sticky, so the customer sees one thread); when it writes to a customer for the
first time it takes a number that no other tenant holds for that customer; which of the free
numbers is a stable hash of the customer number, so customers spread evenly over the pool without
counting assignments (a count per request grows with the customer base).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class Holding:
    """An existing assignment of ``sender`` for the customer in question."""

    sender: str
    tenant_id: str
    last_used_at: datetime


@dataclass(frozen=True, slots=True)
class Allocation:
    sender: str
    #: True when an expired holding of another tenant is taken over (its row is reassigned).
    takes_over: bool


def allocate(
    *,
    tenant_id: str,
    pool: Sequence[str],
    holdings: Sequence[Holding],
    customer: str,
    now: datetime,
    reply_window: timedelta,
) -> Allocation | None:
    """The number ``tenant_id`` should use for a customer, given who holds which number for them.

    ``pool`` is the active pool; ``holdings`` every assignment for this customer (any tenant).
    None: no number is free.
    """
    active = set(pool)
    for h in holdings:
        if h.tenant_id == tenant_id and h.sender in active:
            return Allocation(h.sender, takes_over=False)  # sticky
    busy = {h.sender for h in holdings if h.tenant_id != tenant_id and now - h.last_used_at <= reply_window}
    expired = {h.sender for h in holdings if h.sender not in busy}
    free = [n for n in pool if n not in busy]
    if not free:
        return None
    digest = hashlib.blake2b(customer.encode(), digest_size=8).digest()
    best = sorted(free)[int.from_bytes(digest, "big") % len(free)]
    return Allocation(best, takes_over=best in expired)
