"""The one small DNS interface sender verification uses (issue 6), and its two implementations.

Every lookup SPF, DKIM and DMARC need goes through :class:`Resolver`, so tests (and offline use)
swap in a :class:`DictResolver` and the daemon uses :class:`DnsResolver` (dnspython's asyncio
resolver, bounded by a per-query lifetime). The contract, which the evaluators depend on:

- an answer: the records (TXT strings of one record joined, RFC 7208 §3.3 / RFC 6376 §3.6.2.2);
- NXDOMAIN or NODATA: an empty list. Both are "void" lookups for SPF (RFC 7208 §4.6.4);
- SERVFAIL, a timeout, no reachable server: :class:`DnsTempError` (the ``temperror`` results).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

__all__ = ["DictResolver", "DnsResolver", "DnsTempError", "Resolver"]


class DnsTempError(Exception):
    """A lookup that may succeed later (SERVFAIL, timeout). ``name``/``rdtype`` say which."""

    def __init__(self, name: str, rdtype: str, reason: str) -> None:
        super().__init__(f"{rdtype} {name}: {reason}")
        self.name = name
        self.rdtype = rdtype
        self.reason = reason


class Resolver(Protocol):
    async def txt(self, name: str) -> list[str]: ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs, exchanges without the trailing dot; a null MX (RFC 7505,
        exchange ".") is left out."""
        ...


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


class DictResolver:
    """Records from a dict: ``{"example.com": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"],
    "MX": [(10, "mx.example.com")]}}``. Names are case-insensitive, a trailing dot is ignored.
    Names in ``tempfail`` raise :class:`DnsTempError` for every type. Every query is appended to
    ``queries`` as (type, name), so tests can count lookups."""

    def __init__(
        self,
        records: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
        *,
        tempfail: Collection[str] = (),
    ) -> None:
        self.records: dict[str, dict[str, list[Any]]] = {}
        for name, types in (records or {}).items():
            for rdtype, values in types.items():
                self.add(name, rdtype, *values)
        self.tempfail = {_key(n) for n in tempfail}
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rdtype: str, *values: Any) -> None:
        self.records.setdefault(_key(name), {}).setdefault(rdtype.upper(), []).extend(values)

    def _get(self, name: str, rdtype: str) -> list[Any]:
        self.queries.append((rdtype, _key(name)))
        if _key(name) in self.tempfail:
            raise DnsTempError(name, rdtype, "SERVFAIL (DictResolver tempfail)")
        return list(self.records.get(_key(name), {}).get(rdtype, []))

    async def txt(self, name: str) -> list[str]:
        return [str(v) for v in self._get(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [str(v) for v in self._get(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(v) for v in self._get(name, "AAAA")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        pairs = [(int(p), _key(str(x))) for p, x in self._get(name, "MX")]
        return [(p, x) for p, x in pairs if x]


class DnsResolver:
    """dnspython's asyncio resolver (never a blocking lookup on the loop).

    ``nameservers`` empty: the system's /etc/resolv.conf. ``timeout`` bounds one whole lookup,
    retries and servers included (dnspython's ``lifetime``), so a verification costs at most a
    known number of such waits. Answers are kept in dnspython's LRU cache (honouring TTLs): a busy
    sender's keys and policies are looked up once, not per message.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        port: int = 53,
        timeout: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
        self._resolver.port = port
        self._resolver.timeout = min(2.0, timeout)  # per server try; lifetime bounds the total
        self._resolver.lifetime = timeout
        self._resolver.cache = dns.resolver.LRUCache(cache_size)

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(_key(name)), rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.NoAnswer:
            return []
        except (dns.resolver.YXDOMAIN, dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
            return []  # no such name can exist
        except dns.resolver.NoNameservers as exc:  # every server answered SERVFAIL/REFUSED or failed
            raise DnsTempError(name, rdtype, f"no server answered: {exc}") from None
        except dns.exception.Timeout:
            raise DnsTempError(name, rdtype, "timed out") from None
        except dns.exception.DNSException as exc:
            raise DnsTempError(name, rdtype, f"{type(exc).__name__}: {exc}") from None
        return list(answer.rrset or [])

    async def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in await self._query(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in await self._query(name, "AAAA")]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        pairs = [
            (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
            for r in await self._query(name, "MX")
        ]
        return [(p, x) for p, x in pairs if x and x != "."]
