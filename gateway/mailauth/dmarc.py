"""Finding the DMARC record for a From domain (RFC 7489 §6.6.3); the evaluation itself is pure and
lives in gateway.domain.mailauth.dmarc_evaluate."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.domain.mailauth import DmarcRecord, PublicSuffixOf, organizational_domain, pick_dmarc_record
from gateway.mailauth.resolver import DnsTempError, Resolver

__all__ = ["DmarcLookup", "find_dmarc"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DmarcLookup:
    record: DmarcRecord | None
    org_fallback: bool  # the record is the organizational domain's, not the From domain's own
    temperror: bool
    queried: tuple[str, ...]  # the _dmarc names looked up (logs, tests)


async def find_dmarc(resolver: Resolver, from_domain: str, public_suffix: PublicSuffixOf) -> DmarcLookup:
    """``_dmarc.<From domain>``; when that has no usable record, ``_dmarc.<organizational domain>``
    (§6.6.3 steps 1-3). Several v=DMARC1 records at one name count as none there (step 4)."""
    queried: list[str] = []
    org = organizational_domain(from_domain, public_suffix)
    for name, fallback in ((from_domain, False), (org, True)):
        if fallback and org == from_domain:
            break
        qname = f"_dmarc.{name}"
        queried.append(qname)
        try:
            texts = await resolver.txt(qname)
        except DnsTempError as exc:
            log.info("dmarc: lookup failed", extra={"dns_name": qname, "reason": exc.reason})
            return DmarcLookup(None, fallback, True, tuple(queried))
        record = pick_dmarc_record(texts)
        if record is not None:
            return DmarcLookup(record, fallback, False, tuple(queried))
    return DmarcLookup(None, False, False, tuple(queried))
