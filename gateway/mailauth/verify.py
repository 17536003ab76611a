"""The sender verifier the inbound-email pipeline calls once per message (issue 6 anti-spoofing):
SPF for the envelope sender and DKIM for every signature, concurrently, then DMARC for the From
domain. Implements gateway.domain.ports.SenderVerifier."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from gateway.domain.mailauth import (
    AuthVerdict,
    DkimResult,
    PublicSuffixOf,
    dmarc_evaluate,
    normalize_domain,
)
from gateway.mailauth.dkim_verify import DEFAULT_INLINE_BYTES, DEFAULT_MAX_SIGNATURES, verify_dkim
from gateway.mailauth.dmarc import DmarcLookup, find_dmarc
from gateway.mailauth.resolver import Resolver
from gateway.mailauth.spf import SpfResult, check_spf

__all__ = ["MailVerifier", "psl_public_suffix"]

log = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")

_psl: PublicSuffixOf | None = None


def psl_public_suffix() -> PublicSuffixOf:
    """The Public Suffix List bundled with the ``publicsuffixlist`` package (loaded once; about
    10 k rules). Its ``publicsuffix`` with ``accept_unknown`` gives the default "*" rule for
    unknown TLDs, as the PSL algorithm says."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        psl = PublicSuffixList()
        _psl = psl.publicsuffix
    return _psl


#: An SPF check's result, the domain it was for and its scope (``mailfrom`` / ``helo``).
_SpfOutcome = tuple[SpfResult, str | None, str]
#: Entries per result cache; a full cache starts again empty (a flood of new senders costs lookups,
#: never memory).
CACHE_SIZE = 10_000


def _put(cache: dict[_K, _V], key: _K, value: _V) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value


class MailVerifier:
    """SPF + DKIM + DMARC over one :class:`Resolver`.

    ``timeout`` bounds each of the SPF and DKIM checks as a whole (RFC 7208 §4.6.4 suggests at
    least 20 s for SPF): past it the check is ``temperror``. ``sample`` draws pct= samples
    (RFC 7489 §6.6.4); tests pass a constant.

    SPF results (per client IP, envelope sender and HELO: everything the evaluation reads besides
    DNS) and DMARC record lookups (per From domain) are kept for ``cache_seconds``: a busy
    correspondent's messages are evaluated once, not each time (the DNS answers themselves are
    cached by the resolver, but re-evaluating them cost more than the DNS, tests/perf/smtp_in.py).
    A result is at most that much older than the DNS it came from; temporary errors are never kept.
    0 turns the cache off.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        public_suffix: PublicSuffixOf | None = None,
        max_signatures: int = DEFAULT_MAX_SIGNATURES,
        inline_bytes: int = DEFAULT_INLINE_BYTES,
        timeout: float = 20.0,
        sample: Callable[[], float] = random.random,
        cache_seconds: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.cache_seconds = cache_seconds
        self.monotonic = monotonic
        self._spf_cache: dict[tuple[str | None, str, str | None], tuple[float, _SpfOutcome]] = {}
        self._dmarc_cache: dict[str, tuple[float, DmarcLookup]] = {}
        self.public_suffix = public_suffix or psl_public_suffix()
        self.max_signatures = max_signatures
        self.inline_bytes = inline_bytes
        self.timeout = timeout
        self.sample = sample

    async def verify(
        self,
        raw: bytes,
        *,
        mail_from: str,
        helo: str | None,
        client_ip: str | None,
        from_domain: str | None,
    ) -> AuthVerdict:
        spf_task = self._spf(mail_from=mail_from, helo=helo, client_ip=client_ip)
        dkim_task = self._dkim(raw)
        (spf, spf_domain, scope), dkim_results = await asyncio.gather(spf_task, dkim_task)
        norm_from = normalize_domain(from_domain)
        lookup: DmarcLookup | None = None
        if norm_from is not None:
            lookup = await self._dmarc(norm_from)
        outcome = dmarc_evaluate(
            from_domain=norm_from,
            record=lookup.record if lookup else None,
            record_is_org_fallback=lookup.org_fallback if lookup else False,
            record_temperror=lookup.temperror if lookup else False,
            spf=spf.result,
            spf_domain=spf_domain,
            dkim=dkim_results,
            public_suffix=self.public_suffix,
            sample=self.sample(),
        )
        dmarc = outcome.result
        if from_domain and norm_from is None:
            dmarc = "permerror"  # a From domain that is no domain name cannot be evaluated
        verdict = AuthVerdict(
            from_domain=norm_from or (from_domain or None),
            spf=spf.result,
            spf_domain=spf_domain,
            dkim=dkim_results,
            dmarc=dmarc,
            dmarc_policy=outcome.policy,
            aligned_pass=outcome.aligned_pass,
            spf_scope=scope,
            dmarc_published_policy=outcome.published_policy,
        )
        log.debug(
            "sender verified",
            extra={
                "from_domain": verdict.from_domain,
                "spf": spf.result,
                "spf_reason": spf.reason,
                "dkim": [d.result for d in dkim_results],
                "dmarc": dmarc,
                "aligned": outcome.aligned_pass,
            },
        )
        return verdict

    async def _dmarc(self, from_domain: str) -> DmarcLookup:
        now = self.monotonic()
        cached = self._dmarc_cache.get(from_domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with asyncio.timeout(self.timeout):
                lookup = await find_dmarc(self.resolver, from_domain, self.public_suffix)
        except TimeoutError:
            return DmarcLookup(None, False, True, ())
        if self.cache_seconds > 0 and not lookup.temperror:
            _put(self._dmarc_cache, from_domain, (now + self.cache_seconds, lookup))
        return lookup

    async def _spf(self, *, mail_from: str, helo: str | None, client_ip: str | None) -> _SpfOutcome:
        key = (client_ip, mail_from, helo)
        now = self.monotonic()
        cached = self._spf_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        outcome = await self._check_spf(mail_from=mail_from, helo=helo, client_ip=client_ip)
        if self.cache_seconds > 0 and outcome[0].result != "temperror":
            _put(self._spf_cache, key, (now + self.cache_seconds, outcome))
        return outcome

    async def _check_spf(self, *, mail_from: str, helo: str | None, client_ip: str | None) -> _SpfOutcome:
        try:
            async with asyncio.timeout(self.timeout):
                return await check_spf(self.resolver, client_ip=client_ip, mail_from=mail_from, helo=helo)
        except TimeoutError:
            bare = mail_from.strip().strip("<>")
            domain, scope = (bare.rpartition("@")[2], "mailfrom") if bare else (helo, "helo")
            return SpfResult("temperror", "SPF evaluation timed out"), normalize_domain(domain), scope

    async def _dkim(self, raw: bytes) -> tuple[DkimResult, ...]:
        try:
            async with asyncio.timeout(self.timeout):
                return await verify_dkim(
                    raw, self.resolver, max_signatures=self.max_signatures, inline_bytes=self.inline_bytes
                )
        except TimeoutError:
            return (DkimResult("", "", "temperror"),)
