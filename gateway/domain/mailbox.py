"""Mailbox prefix rules: ``PREFIX@mail_domain`` is a tenant's address (SPEC 1, 2.3)."""

from __future__ import annotations

import re
import unicodedata

PREFIX_RE = re.compile(r"[a-z0-9-]{3,32}")

#: Role mailboxes that must reach the operator, never a tenant (RFC 2142 §3-5, RFC 5321 §4.5.1),
#: and ``bounce``: the local part of our VERP return paths (``bounce+TOKEN@``, gateway.domain.email_ids).
RESERVED_PREFIXES = frozenset(
    {
        "postmaster",
        "abuse",
        "hostmaster",
        "webmaster",
        "security",
        "noc",
        "mailer-daemon",
        "root",
        "admin",
        "bounce",
    }
)


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a mailbox prefix, or None when it can."""
    if not PREFIX_RE.fullmatch(prefix):
        return "must be 3-32 characters of a-z, 0-9 and '-'"
    if prefix.startswith("-") or prefix.endswith("-"):
        return "must not start or end with '-'"
    if prefix in RESERVED_PREFIXES:
        return "is reserved for the mail system (RFC 2142 role mailboxes, bounce addresses)"
    return None


def prefix_from_name(name: str) -> str:
    """A prefix suggestion from a tenant name: 'Serwis Łódź 24' -> 'serwis-lodz-24'."""
    decomposed = unicodedata.normalize("NFKD", name.replace("ł", "l").replace("Ł", "L"))
    ascii_only = decomposed.encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_only).strip("-")[:32].strip("-")
    if len(slug) < 3:
        slug = (slug + "-box").strip("-") if slug else "tenant"
    if slug in RESERVED_PREFIXES:
        slug = f"{slug}-box"
    return slug


def split_recipient(local_part: str) -> tuple[str, str | None]:
    """``prefix+token`` -> (prefix, token); sub-addressing per RFC 5233."""
    prefix, sep, token = local_part.partition("+")
    return prefix.lower(), (token or None) if sep else None
