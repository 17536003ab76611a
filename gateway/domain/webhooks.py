"""Webhook rules without I/O: the signature, which addresses a webhook may reach, the retry schedule.

Signature (README "Conversations, events and webhooks"): ``Gateway-Timestamp`` is the POST's Unix time
in seconds, ``Gateway-Signature`` is ``v1=`` + hex HMAC-SHA256 over ``timestamp + "." + body`` keyed
with the tenant's webhook secret. The timestamp is inside the MAC so a captured request cannot be
replayed later with a fresh timestamp; the ``v1=`` label leaves room for a second scheme (or two
signatures during a secret rotation, comma-separated) without breaking receivers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

SIGNATURE_HEADER = "Gateway-Signature"
TIMESTAMP_HEADER = "Gateway-Timestamp"
EVENT_ID_HEADER = "Gateway-Event-Id"
SIGNATURE_SCHEME = "v1"
#: How far a receiver should let the timestamp drift from its own clock (seconds).
DEFAULT_TOLERANCE_SECONDS = 300

#: Resolves a host name to IP address strings (host, port) -> ["192.0.2.1", ...]. Injected so tests
#: decide what a name resolves to (ARCHITECTURE rule 2); the daemon uses getaddrinfo.
Resolver = Callable[[str, int], Awaitable[list[str]]]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Gateway-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does (the README shows the same in a few lines): the timestamp is recent
    and one of the ``v1=`` signatures matches, compared in constant time."""
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(
        hmac.compare_digest(expected.encode(), candidate.strip().encode())
        for candidate in signature_header.split(",")
    )


# --- where a webhook may go (SSRF) ---------------------------------------------------------------

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the well-known prefix embeds an IPv4 address


def address_problem(ip: str) -> str | None:
    """Why a webhook must not connect to ``ip`` (``loopback``, ``private``, …), or None when it is a
    public unicast address. An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64)
    is judged by the IPv4 address, which is where the packets end up."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not_an_address"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or (addr.sixtofour if addr.sixtofour else None)
        if embedded is None and addr.teredo is not None:
            embedded = addr.teredo[1]  # (server, client): the client is the far end
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(str(embedded))
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link_local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_private:
        return "private"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return "private"
    if addr.is_reserved or not addr.is_global:
        return "not_public"  # e.g. 100.64.0.0/10 (carrier-grade NAT), 192.0.0.0/24
    return None


def url_problem(url: str) -> str | None:
    """A syntactic check of a webhook URL: absolute http(s) with a host and a valid port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if port == 0:
        return "port 0 cannot be connected to"
    if any(ch.isspace() for ch in url):
        return "must not contain white space"
    return None


def ip_literal(host: str) -> str | None:
    """``host`` as an IP address string when it is one (``[::1]`` -> ``::1``), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


# --- when to try again -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff with equal jitter, bounded by a window counted from the event's time.

    The window starts when the event happened, not at its first attempt: an event is delivered
    within ``window`` of the change it reports or given up. So an endpoint that was down for days
    does not leave a backlog that then takes days more to work through, one 24-hour wait at a time.
    """

    base: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    window: timedelta = timedelta(hours=24)

    def next_attempt(self, attempts: int, event_at: datetime, now: datetime, rand: float) -> datetime | None:
        """When to try again after ``attempts`` failed attempts (``rand`` uniform in [0, 1)), or None
        when the window has passed: the event is then failed for good."""
        deadline = event_at + self.window
        if now >= deadline:
            return None
        exponent = min(max(attempts, 1) - 1, 40)
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2.0**exponent)
        # Equal jitter: many tenants that failed together (our own network blip) spread out, yet
        # none comes back almost at once.
        delay = timedelta(seconds=ceiling / 2 + rand * ceiling / 2)
        return min(now + delay, deadline)  # one last attempt right at the deadline
