"""DKIM verification (RFC 6376) of every signature on a message, with dkimpy doing the cryptography
and our :class:`Resolver` doing the DNS.

dkimpy's ``verify`` checks one signature (the first unless told otherwise) and does its own,
blocking, DNS. So, per message:

1. the header section alone is parsed and each DKIM-Signature's tags are checked (dkimpy's
   ``verify_headerprep``), up to ``max_signatures`` of them (RFC 6376 §6.1 lets a verifier limit the
   work it does for one message; signatures past the limit are not reported);
2. the keys (``s._domainkey.d``, §3.6.2.1) are fetched through the Resolver, concurrently, each
   name once, and parsed (dkimpy's ``evaluate_pk``);
3. each signature is verified by dkimpy with a ``dnsfunc`` that only hands back the key fetched in
   step 2 — dkimpy never touches the network.

Step 3 is CPU work (canonicalising and hashing the body once per signature). For messages up to
``inline_bytes`` it runs on the event loop (about a millisecond for a normal mail); above that it
runs in a worker thread so one big attachment does not stall every other session.

Results (RFC 8601 §2.7.1): ``pass``; ``fail`` (bad signature, body hash mismatch); ``neutral``
(a signature whose tags are unusable, or rsa-sha1, which RFC 8301 §3.1 says not to verify with);
``temperror`` (the key lookup failed); ``permerror`` (no key, an unusable or too small key,
RFC 8301 §3.2: under 1024 bits).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]

from gateway.domain.mailauth import DkimResult
from gateway.mailauth.resolver import DnsTempError, Resolver

__all__ = ["DEFAULT_INLINE_BYTES", "DEFAULT_MAX_SIGNATURES", "verify_dkim"]

log = logging.getLogger(__name__)
_dkimpy_log = logging.getLogger("gateway.mailauth.dkimpy")  # dkimpy's own messages, kept apart

DEFAULT_MAX_SIGNATURES = 10
DEFAULT_INLINE_BYTES = 512 * 1024
MIN_KEY_BITS = 1024  # RFC 8301 §3.2
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_TAG = re.compile(rb"(?:^|;)\s*([ds])\s*=\s*([^;]*)")


@dataclass(frozen=True, slots=True)
class _Sig:
    index: int  # position among the DKIM-Signature fields, topmost first (dkimpy's idx)
    domain: str
    selector: str
    key_name: str | None  # None: decided without a key (see ``early``)
    early: str | None = None  # a result reached before any DNS (unusable tags, rsa-sha1)


async def verify_dkim(
    raw: bytes,
    resolver: Resolver,
    *,
    max_signatures: int = DEFAULT_MAX_SIGNATURES,
    inline_bytes: int = DEFAULT_INLINE_BYTES,
) -> tuple[DkimResult, ...]:
    """One :class:`DkimResult` per DKIM-Signature (topmost first, at most ``max_signatures``);
    an empty tuple for an unsigned message."""
    sigs = _signatures(raw, max_signatures)
    if not sigs:
        return ()
    names = sorted({s.key_name for s in sigs if s.key_name is not None})
    fetched = await asyncio.gather(*(_fetch_key(resolver, n) for n in names))
    keys = dict(zip(names, fetched, strict=True))
    if len(raw) > inline_bytes:
        return await asyncio.to_thread(_verify_all, raw, sigs, keys)
    return _verify_all(raw, sigs, keys)


_DKIM_FIELD = re.compile(rb"(?im)^dkim-signature\s*:")


def _signatures(raw: bytes, limit: int) -> list[_Sig]:
    """Step 1: the DKIM-Signature fields of the header section and what their tags allow."""
    end = _HEADER_END.search(raw)
    head = raw[: end.end()] if end else raw
    if not _DKIM_FIELD.search(head):
        # Unsigned (most mail from people): dkimpy's parse of the whole header section would find
        # nothing, and cost more than the rest of the verification (tests/perf/smtp_in.py). A field
        # name starts its line (RFC 5322 §2.2; continuation lines start with WSP).
        return []
    try:
        d = dkim.DKIM(head, logger=_dkimpy_log)
    except Exception:  # dkimpy's parser raises assorted types (IndexError, …) on hostile headers
        log.debug("dkim: header section not parseable", exc_info=True)
        return [_Sig(0, "", "", None, "permerror")] if _DKIM_FIELD.search(head) else []
    fields = [value for name, value in d.headers if name.lower() == b"dkim-signature"][:limit]
    sigs: list[_Sig] = []
    for idx, value in enumerate(fields):
        domain, selector = _lenient_ds(value)
        try:
            prep = d.verify_headerprep(idx)
        except Exception as exc:  # ValidationError, MessageFormatError, and dkimpy's own bugs
            log.debug("dkim: signature %d unusable: %s", idx, exc)
            sigs.append(_Sig(idx, domain, selector, None, "neutral"))
            continue
        tags = prep[0]
        domain = _text(tags[b"d"]).lower()
        selector = _text(tags[b"s"])
        if tags.get(b"a", b"").lower() == b"rsa-sha1":
            sigs.append(_Sig(idx, domain, selector, None, "neutral"))
            continue
        sigs.append(_Sig(idx, domain, selector, f"{selector}._domainkey.{domain}"))
    return sigs


def _lenient_ds(value: bytes) -> tuple[str, str]:
    """d= and s= of a signature too broken for dkimpy, so the header can still name it."""
    found = {m.group(1).decode(): _text(m.group(2)).strip() for m in _TAG.finditer(value)}
    return found.get("d", "").lower()[:253], found.get("s", "")[:63]


def _text(value: bytes) -> str:
    return re.sub(r"\s+", "", value.decode("utf-8", "replace"))


async def _fetch_key(resolver: Resolver, name: str) -> bytes | str:
    """The key record's text as bytes, or a result word when there is none to use."""
    try:
        texts = await resolver.txt(name)
    except DnsTempError as exc:
        log.info("dkim: key lookup failed", extra={"dns_name": name, "reason": exc.reason})
        return "temperror"
    if not texts:
        return "permerror"  # no key record (RFC 6376 §6.1.2: PERMFAIL, key unavailable)
    # §3.6.2.2 leaves several records undefined; the first is used.
    record = texts[0].encode("utf-8", "replace")
    try:
        dkim.evaluate_pk(name.encode(), record)
    except Exception as exc:  # KeyFormatError, binascii.Error, NaClNotFoundError, …
        log.info("dkim: unusable key record", extra={"dns_name": name, "reason": str(exc)})
        return "permerror"
    return record


def _verify_all(raw: bytes, sigs: list[_Sig], keys: Mapping[str, bytes | str]) -> tuple[DkimResult, ...]:
    """Step 3 (CPU only): dkimpy verifies each signature with the key we fetched."""
    try:
        d = dkim.DKIM(raw, logger=_dkimpy_log, minkey=MIN_KEY_BITS)
    except Exception:  # parsed fine in step 1, so only a broken body could get here
        return tuple(DkimResult(s.domain, s.selector, "permerror") for s in sigs)
    results: list[DkimResult] = []
    for sig in sigs:
        key = keys.get(sig.key_name) if sig.key_name else None
        if sig.early is not None or not isinstance(key, bytes):
            word = sig.early or (key if isinstance(key, str) else "permerror")
            results.append(DkimResult(sig.domain, sig.selector, word))
            continue

        def dnsfunc(name: bytes, timeout: int = 5, _key: bytes = key) -> bytes:
            return _key

        try:
            ok = d.verify(idx=sig.index, dnsfunc=dnsfunc)
            word = "pass" if ok else "fail"
        except dkim.ValidationError:
            word = "fail"  # the tags were checked in step 1: this is the body hash (§6.1.3)
        except dkim.KeyFormatError:
            word = "permerror"  # a key under 1024 bits, or one that does not fit the signature
        except Exception as exc:  # dkimpy raises several types for hostile input
            log.debug("dkim: verification error: %s", exc)
            word = "permerror"
        results.append(DkimResult(sig.domain, sig.selector, word))
    return tuple(results)
