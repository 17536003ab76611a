"""Recipient address checks that need the network (kept out of the services: they take a resolver)."""

from __future__ import annotations

import asyncio

from email_validator import EmailNotValidError, validate_email


async def check_deliverability(address: str) -> str | None:
    """None when the address's domain can receive mail (MX, else A/AAAA, RFC 5321 §5.1), else why
    not. email-validator resolves through dnspython, which blocks: it runs in a worker thread."""
    try:
        await asyncio.to_thread(validate_email, address, check_deliverability=True)
    except EmailNotValidError as exc:
        return str(exc)
    return None
