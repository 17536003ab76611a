"""The verifier's result caches (tests/perf/smtp_in.py, docs/benchmarks.md "Inbound email"): SPF per
(client IP, envelope sender, HELO) and DMARC lookups per From domain are reused for
``cache_seconds``, never past it, and temporary errors are never kept."""

from __future__ import annotations

from gateway.mailauth import DictResolver, MailVerifier

RAW = b"From: jan@a.com\r\nTo: x@mx.test\r\nSubject: hi\r\nMessage-ID: <1@a.com>\r\n\r\nHello\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def zone() -> DictResolver:
    return DictResolver(
        {"a.com": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}, "_dmarc.a.com": {"TXT": ["v=DMARC1; p=reject"]}}
    )


async def verify(v: MailVerifier, *, ip: str = "192.0.2.1", mail_from: str = "jan@a.com") -> tuple[str, str]:
    got = await v.verify(RAW, mail_from=mail_from, helo="mx.a.com", client_ip=ip, from_domain="a.com")
    return got.spf, got.dmarc


async def test_results_are_reused_within_cache_seconds_only() -> None:
    r, clock = zone(), Clock()
    v = MailVerifier(r, sample=lambda: 0.0, cache_seconds=30, monotonic=clock)
    assert await verify(v) == ("pass", "pass")
    asked = len(r.queries)
    assert await verify(v) == ("pass", "pass")
    assert len(r.queries) == asked  # SPF and DMARC from the cache
    # another client IP is another SPF evaluation (the DMARC record is still cached)
    assert await verify(v, ip="203.0.113.9") == ("fail", "fail")
    assert len(r.queries) == asked + 1
    clock.now += 31
    r.records["a.com"]["TXT"] = ["v=spf1 -all"]
    assert await verify(v) == ("fail", "fail")  # expired: evaluated again on the new record


async def test_temperrors_are_not_kept() -> None:
    r, clock = zone(), Clock()
    r.tempfail.add("a.com")
    v = MailVerifier(r, sample=lambda: 0.0, cache_seconds=30, monotonic=clock)
    assert (await verify(v))[0] == "temperror"
    r.tempfail.clear()
    assert await verify(v) == ("pass", "pass")


async def test_cache_off() -> None:
    r = zone()
    v = MailVerifier(r, sample=lambda: 0.0, cache_seconds=0)
    await verify(v)
    asked = len(r.queries)
    await verify(v)
    assert len(r.queries) == 2 * asked
