"""Reading a peer's IP address the one way every listener and check needs it. Pure, stdlib only."""

from __future__ import annotations

import ipaddress

__all__ = ["IpAddress", "parse_ip"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IpAddress | None:
    """``text`` as an address, or None when it is none: surrounding blanks and ``[]`` dropped, an
    IPv6 zone (``%eth0``) dropped, and an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a
    dual-stack socket reports for an IPv4 client) read as the IPv4 address it is."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
