"""Sender verification end to end: real DKIM signatures made with our own signer
(gateway.smtp.dkim), SPF and DMARC records served by a DictResolver, the verdict and the decision;
and DnsResolver against a real DNS server on a loopback UDP socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.config import load
from gateway.domain.mailauth import AuthVerdict, SenderOk, authentication_results, sender_decision
from gateway.domain.policy import Deny
from gateway.mailauth import (
    DictResolver,
    DnsResolver,
    DnsTempError,
    MailVerifier,
    authserv_id,
    build_verifier,
)
from gateway.smtp.dkim import DkimSigner
from gateway.smtp.dkim_keys import generate_rsa

CLIENT = "192.0.2.10"


def message(from_addr: str = "jan@a.com", body: str = "Hello\r\n") -> bytes:
    return (
        f"From: Jan <{from_addr}>\r\nTo: serwis@mail.gw.example\r\nSubject: Re: order\r\n"
        "Date: Tue, 24 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m1@a.com>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: text/plain; charset="utf-8"\r\n\r\n{body}'
    ).encode()


@pytest.fixture(scope="module")
def pems() -> tuple[bytes, bytes]:
    return generate_rsa(2048).private_pem(), generate_rsa(2048).private_pem()


def signer(pem: bytes, domain: str, selector: str) -> DkimSigner:
    return DkimSigner(domain, selector, pem)


def publish(resolver: DictResolver, s: DkimSigner) -> None:
    name, value = s.public_record()
    resolver.add(name, "TXT", value)


def verifier(resolver: DictResolver, **kw: object) -> MailVerifier:
    return MailVerifier(resolver, sample=lambda: 0.0, **kw)  # type: ignore[arg-type]


async def check(
    v: MailVerifier,
    raw: bytes,
    *,
    mail_from: str = "bounce@a.com",
    ip: str | None = CLIENT,
    from_domain: str = "a.com",
) -> AuthVerdict:
    return await v.verify(raw, mail_from=mail_from, helo="mx.a.com", client_ip=ip, from_domain=from_domain)


# --- DKIM ----------------------------------------------------------------------------------------


async def test_signed_aligned_message_passes(pems: tuple[bytes, bytes]) -> None:
    r = DictResolver({"_dmarc.a.com": {"TXT": ["v=DMARC1; p=reject"]}})
    s = signer(pems[0], "a.com", "s1")
    publish(r, s)
    got = await check(verifier(r), s.sign(message()))
    assert [(d.domain, d.selector, d.result) for d in got.dkim] == [("a.com", "s1", "pass")]
    assert (got.spf, got.dmarc, got.dmarc_policy, got.aligned_pass) == ("none", "pass", "reject", True)
    assert sender_decision(got, require_verified=True) == SenderOk(True)
    assert authentication_results("mx.gw.example", got) == (
        "mx.gw.example; spf=none smtp.mailfrom=a.com; dkim=pass header.d=a.com header.s=s1; "
        "dmarc=pass (p=reject) header.from=a.com"
    )
    # dkimpy never did DNS of its own: every lookup went through the resolver
    assert ("TXT", "s1._domainkey.a.com") in r.queries


async def test_every_signature_is_checked_first_broken_second_passes(pems: tuple[bytes, bytes]) -> None:
    r = DictResolver({"_dmarc.a.com": {"TXT": ["v=DMARC1; p=reject"]}})
    good = signer(pems[0], "a.com", "s1")
    publish(r, good)
    # The topmost signature claims selector "s2" of a.com, whose published key is not the one it
    # was made with: it fails. dkimpy's plain verify() would stop there.
    other = signer(pems[1], "a.com", "s2")
    r.add("s2._domainkey.a.com", "TXT", good.public_record()[1])
    raw = other.sign(good.sign(message()))
    assert not dkim.verify(
        raw, dnsfunc=lambda name, timeout=5: r.records[name.decode().rstrip(".")]["TXT"][0].encode()
    )
    got = await check(verifier(r), raw)
    assert [(d.selector, d.result) for d in got.dkim] == [("s2", "fail"), ("s1", "pass")]
    assert got.dmarc == "pass" and got.aligned_pass


async def test_results_per_signature(pems: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mailauth")  # the failed lookups are logged
    good = signer(pems[0], "a.com", "s1")
    r = DictResolver(tempfail=["slow._domainkey.a.com"])
    publish(r, good)
    r.add("junk._domainkey.a.com", "TXT", "v=DKIM1; k=rsa; p=notbase64!!")
    raw = good.sign(message())
    nokey = signer(pems[1], "a.com", "nokey").sign(raw)
    junk = signer(pems[1], "a.com", "junk").sign(nokey)
    slow = signer(pems[1], "a.com", "slow").sign(junk)
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=a.com; s=x; b=\r\n" + slow
    got = await check(verifier(r), broken, ip=None)
    assert [(d.selector, d.result) for d in got.dkim] == [
        ("x", "neutral"),  # tags missing (h=, bh=)
        ("slow", "temperror"),
        ("junk", "permerror"),
        ("nokey", "permerror"),
        ("s1", "pass"),
    ]
    # tampered body
    tampered = raw.replace(b"Hello", b"Hellp")
    assert [d.result for d in (await check(verifier(r), tampered)).dkim] == ["fail"]
    # rsa-sha1 is not accepted (RFC 8301 §3.1)
    sha1 = dkim.sign(message(), b"s1", b"a.com", pems[0], signature_algorithm=b"rsa-sha1") + message()
    assert [d.result for d in (await check(verifier(r), sha1)).dkim] == ["neutral"]


async def test_signature_count_is_bounded_and_big_messages_verify_off_the_loop(
    pems: tuple[bytes, bytes],
) -> None:
    s = signer(pems[0], "a.com", "s1")
    r = DictResolver()
    publish(r, s)
    raw = message(body="x" * 100_000 + "\r\n")
    for _ in range(4):
        raw = s.sign(raw)
    got = await check(verifier(r, max_signatures=3, inline_bytes=10_000), raw)
    assert [d.result for d in got.dkim] == ["pass", "pass", "pass"]
    assert r.queries.count(("TXT", "s1._domainkey.a.com")) == 1  # one lookup per key name


async def test_unsigned_and_garbage() -> None:
    r = DictResolver()
    assert (await check(verifier(r), message())).dkim == ()
    weird = b" leading continuation\r\nDKIM-Signature: v=1\r\n\r\nbody"
    assert [d.result for d in (await check(verifier(r), weird)).dkim] in (["permerror"], ["neutral"])
    assert (await check(verifier(r), b"")).dkim == ()


# --- SPF -----------------------------------------------------------------------------------------


SPF_ZONE = {
    "pass.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "fail.test": {"TXT": ["v=spf1 ip4:198.51.100.1 -all"]},
    "soft.test": {"TXT": ["v=spf1 ~all", "some other text"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "nothing.test": {"TXT": ["v=spf1 ip4:198.51.100.1"]},
    "inc.test": {"TXT": ["v=spf1 include:_spf.provider.test -all"]},
    "_spf.provider.test": {"TXT": ["v=spf1 ip4:192.0.2.8/29 ip6:2001:db8::/32 ~all"]},
    "redir.test": {"TXT": ["v=spf1 redirect=pass.test"]},
    "redir-none.test": {"TXT": ["v=spf1 redirect=nospf.test"]},
    "inc-none.test": {"TXT": ["v=spf1 include:nospf.test -all"]},
    "nospf.test": {"TXT": ["google-site-verification=x"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "syntax.test": {"TXT": ["v=spf1 ip4:192.0.2.10 bogus:x -all"]},
    "mx.test": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mx1.mx.test"), (20, "mx2.mx.test")]},
    "mx1.mx.test": {"A": ["198.51.100.7"]},
    "mx2.mx.test": {"A": ["192.0.2.10"]},
    "a.test": {"TXT": ["v=spf1 a:web.a.test/24 -all"]},
    "web.a.test": {"A": ["192.0.2.200"]},
    "exists.test": {"TXT": ["v=spf1 exists:%{ir}.%{l1r+}._spf.%{d} -all"]},
    "10.2.0.192.bounce._spf.exists.test": {"A": ["127.0.0.2"]},
    "voids.test": {"TXT": ["v=spf1 a:no1.test a:no2.test a:no3.test +all"]},
    "ptr.test": {"TXT": ["v=spf1 ptr -all"]},
    "helo.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
    "v6.test": {"TXT": ["v=spf1 include:_spf.provider.test -all"]},
    "temp.test": {"TXT": ["v=spf1 include:broken.test -all"]},
    "macro-bad.test": {"TXT": ["v=spf1 exists:%{c}.x.test -all"]},
}
# include chain of 11: the 11th DNS-querying term is over the limit (RFC 7208 §4.6.4)
for i in range(11):
    SPF_ZONE[f"l{i}.test"] = {"TXT": [f"v=spf1 include:l{i + 1}.test -all"]}
SPF_ZONE["l11.test"] = {"TXT": ["v=spf1 +all"]}
SPF_ZONE["l2-ok.test"] = {"TXT": ["v=spf1 include:l9.test -all"]}  # 3 lookups: fine


@pytest.mark.parametrize(
    ("mail_from", "ip", "result"),
    [
        ("x@pass.test", CLIENT, "pass"),
        ("x@fail.test", CLIENT, "fail"),
        ("x@soft.test", CLIENT, "softfail"),
        ("x@neutral.test", CLIENT, "neutral"),
        ("x@nothing.test", CLIENT, "neutral"),
        ("x@inc.test", "192.0.2.9", "pass"),
        ("x@inc.test", "192.0.2.20", "fail"),  # include's softfail is "no match" -> -all
        ("x@redir.test", CLIENT, "pass"),
        ("x@redir-none.test", CLIENT, "permerror"),
        ("x@inc-none.test", CLIENT, "permerror"),
        ("x@nospf.test", CLIENT, "none"),
        ("x@nxdomain.test", CLIENT, "none"),
        ("x@two.test", CLIENT, "permerror"),
        ("x@syntax.test", CLIENT, "permerror"),
        ("x@mx.test", CLIENT, "pass"),
        ("x@mx.test", "192.0.2.11", "fail"),
        ("x@a.test", CLIENT, "pass"),  # a:/24
        ("x@a.test", "192.0.3.1", "fail"),
        ("bounce@exists.test", CLIENT, "pass"),
        ("other@exists.test", CLIENT, "fail"),
        ("x@voids.test", CLIENT, "permerror"),  # a third void lookup
        ("x@ptr.test", CLIENT, "fail"),  # ptr never matches
        ("x@l0.test", CLIENT, "permerror"),  # 11 includes
        ("x@l2-ok.test", CLIENT, "pass"),
        ("x@v6.test", "2001:db8::5", "pass"),
        ("x@v6.test", "::ffff:192.0.2.9", "pass"),  # IPv4-mapped is IPv4
        ("x@temp.test", CLIENT, "temperror"),
        ("x@macro-bad.test", CLIENT, "permerror"),
        ("x@pass.test", None, "none"),  # IMAP: no client IP
        ("x@localhost", CLIENT, "none"),  # single label
    ],
)
async def test_spf(mail_from: str, ip: str | None, result: str) -> None:
    r = DictResolver(SPF_ZONE, tempfail=["broken.test"])
    got = await check(verifier(r), message(), mail_from=mail_from, ip=ip)
    assert got.spf == result
    assert got.spf_domain == mail_from.rpartition("@")[2]


async def test_spf_lookup_limit_stops_querying() -> None:
    r = DictResolver(SPF_ZONE)
    await check(verifier(r), message(), mail_from="x@l0.test")
    assert len([q for q in r.queries if q[1].startswith("l")]) == 11  # l0 .. l10, never l11


async def test_null_mail_from_uses_helo() -> None:
    r = DictResolver(SPF_ZONE)
    got = await verifier(r).verify(
        message(), mail_from="", helo="helo.test", client_ip=CLIENT, from_domain="a.com"
    )
    assert (got.spf, got.spf_domain, got.spf_scope) == ("pass", "helo.test", "helo")
    assert "spf=pass smtp.helo=helo.test" in authentication_results("mx", got)


# --- DMARC ---------------------------------------------------------------------------------------


def dmarc_zone(record: str | None, *, at: str = "a.com") -> DictResolver:
    r = DictResolver(SPF_ZONE)
    r.add("a.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    r.add("evil.net", "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    if record:
        r.add(f"_dmarc.{at}", "TXT", record)
    return r


@pytest.mark.parametrize(
    ("record", "dmarc", "policy", "decision"),
    [
        ("v=DMARC1; p=reject", "fail", "reject", "dmarc_fail"),
        ("v=DMARC1; p=quarantine", "fail", "quarantine", "dmarc_fail"),
        ("v=DMARC1; p=none", "fail", "none", SenderOk(False)),
        (None, "none", None, SenderOk(False)),
    ],
)
async def test_spoofed_from(
    pems: tuple[bytes, bytes], record: str | None, dmarc: str, policy: str | None, decision: object
) -> None:
    """Mail from an attacker's own server, signed by the attacker's domain, SPF-valid for it, with
    the victim's address in From."""
    r = dmarc_zone(record)
    evil = signer(pems[1], "evil.net", "k")
    publish(r, evil)
    raw = evil.sign(message(from_addr="ceo@a.com"))
    got = await check(verifier(r), raw, mail_from="x@evil.net", ip="203.0.113.5")
    assert (got.spf, [d.result for d in got.dkim]) == ("pass", ["pass"])
    assert (got.dmarc, got.dmarc_policy, got.aligned_pass) == (dmarc, policy, False)
    out = sender_decision(got, require_verified=False)
    if isinstance(decision, str):
        assert isinstance(out, Deny) and out.reason == decision
    else:
        assert out == decision
    if record is None:
        refused = sender_decision(got, require_verified=True)
        assert isinstance(refused, Deny) and refused.reason == "sender_unverified"


async def test_spf_alone_aligns() -> None:
    r = dmarc_zone("v=DMARC1; p=reject")
    got = await check(verifier(r), message(), mail_from="bounce@a.com")
    assert (got.spf, got.dmarc, got.aligned_pass) == ("pass", "pass", True)
    # relaxed: a subdomain MAIL FROM aligns; strict (aspf=s) does not
    r.add("bounce.a.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    got = await check(verifier(r), message(), mail_from="x@bounce.a.com")
    assert got.dmarc == "pass"
    r2 = dmarc_zone("v=DMARC1; p=reject; aspf=s")
    r2.add("bounce.a.com", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    got = await check(verifier(r2), message(), mail_from="x@bounce.a.com")
    assert (got.spf, got.dmarc) == ("pass", "fail")


async def test_relaxed_and_strict_dkim(pems: tuple[bytes, bytes]) -> None:
    sub = signer(pems[0], "mail.a.com", "s1")
    for record, expected in (("v=DMARC1; p=reject", "pass"), ("v=DMARC1; p=reject; adkim=s", "fail")):
        r = dmarc_zone(record)
        publish(r, sub)
        got = await check(verifier(r), sub.sign(message()), mail_from="x@evil.net")
        assert got.dmarc == expected


async def test_subdomain_uses_the_organizational_record_and_sp(pems: tuple[bytes, bytes]) -> None:
    r = dmarc_zone("v=DMARC1; p=reject; sp=quarantine")
    got = await check(
        verifier(r), message(from_addr="x@shop.eu.a.com"), mail_from="x@evil.net", from_domain="shop.eu.a.com"
    )
    assert (got.dmarc, got.dmarc_policy) == ("fail", "quarantine")
    assert ("TXT", "_dmarc.shop.eu.a.com") in r.queries and ("TXT", "_dmarc.a.com") in r.queries
    # the subdomain's own record wins over the organizational one
    r.add("_dmarc.shop.eu.a.com", "TXT", "v=DMARC1; p=none")
    got = await check(
        verifier(r), message(from_addr="x@shop.eu.a.com"), mail_from="x@evil.net", from_domain="shop.eu.a.com"
    )
    assert (got.dmarc, got.dmarc_policy) == ("fail", "none")
    # without sp=, p= applies to subdomains
    r3 = dmarc_zone("v=DMARC1; p=reject")
    got = await check(verifier(r3), message(), mail_from="x@evil.net", from_domain="eu.a.com")
    assert got.dmarc_policy == "reject"


async def test_dmarc_temperror_and_multiple_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mailauth")  # logging the failure must not fail
    r = dmarc_zone(None)
    r.tempfail.add("_dmarc.a.com")
    got = await check(verifier(r), message(), mail_from="x@evil.net")
    assert got.dmarc == "temperror"
    assert any(getattr(rec, "dns_name", None) == "_dmarc.a.com" for rec in caplog.records)
    assert sender_decision(got, require_verified=False) == SenderOk(False)
    r2 = dmarc_zone("v=DMARC1; p=reject")
    r2.add("_dmarc.a.com", "TXT", "v=DMARC1; p=none")
    assert (await check(verifier(r2), message(), mail_from="x@evil.net")).dmarc == "none"


async def test_pct_honoured_with_the_injected_sample() -> None:
    r = dmarc_zone("v=DMARC1; p=reject; pct=20")
    low = MailVerifier(r, sample=lambda: 0.1)
    high = MailVerifier(r, sample=lambda: 0.9)
    assert (await check(low, message(), mail_from="x@evil.net")).dmarc_policy == "reject"
    got = await check(high, message(), mail_from="x@evil.net")
    assert (got.dmarc_policy, got.dmarc_published_policy) == ("quarantine", "reject")


async def test_build_from_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "g.toml"
    path.write_text('[smtp]\nmail_domain = "mx.gw.example"\n[mailauth]\nmax_dkim_signatures = 2\n')
    cfg = load(path, {})
    v = build_verifier(cfg, resolver=DictResolver())
    assert v.max_signatures == 2 and authserv_id(cfg) == "mx.gw.example"
    assert isinstance(build_verifier(cfg).resolver, DnsResolver)


# --- DnsResolver over a real socket ----------------------------------------------------------------


class _DnsServer(asyncio.DatagramProtocol):
    """A few fixed answers, by name: enough to see DnsResolver map each DNS outcome."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        q = query.question[0]
        name = q.name.to_text().lower()
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if name.endswith("slow.test."):
            return  # never answered: the lookup times out
        if name.endswith("fail.test."):
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif name == "nx.test.":
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif name == "data.test.":
            records = {
                "TXT": ['"v=spf1 ip4:192.0.2.0/24 " "-all"', '"second"'],
                "A": ["192.0.2.1"],
                "AAAA": ["2001:db8::1"],
                "MX": ["10 mx1.data.test.", "0 ."],
            }
            rdtype = dns.rdatatype.to_text(q.rdtype)
            if rdtype in records:
                reply.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", rdtype, records[rdtype]))
        self.transport.sendto(reply.to_wire(), addr)


@pytest.fixture
async def dns_port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_DnsServer, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_dns_resolver_maps_every_outcome(dns_port: int) -> None:
    r = DnsResolver(["127.0.0.1"], port=dns_port, timeout=0.5)
    # the strings of one TXT record are joined (RFC 7208 §3.3)
    assert sorted(await r.txt("data.test")) == ["second", "v=spf1 ip4:192.0.2.0/24 -all"]
    assert await r.a("data.test") == ["192.0.2.1"]
    assert await r.aaaa("DATA.test.") == ["2001:db8::1"]
    assert await r.mx("data.test") == [(10, "mx1.data.test")]  # the null MX is left out
    assert await r.txt("nx.test") == []  # NXDOMAIN
    assert await r.a("nx.test") == []
    assert await r.txt("other.test") == []  # NODATA
    with pytest.raises(DnsTempError) as err:
        await r.txt("fail.test")
    assert err.value.name == "fail.test" and err.value.rdtype == "TXT"
    with pytest.raises(DnsTempError):
        await r.txt("slow.test")


async def test_verifier_over_real_dns(dns_port: int) -> None:
    v = MailVerifier(DnsResolver(["127.0.0.1"], port=dns_port, timeout=0.5), sample=lambda: 0.0)
    got = await v.verify(
        message(), mail_from="x@data.test", helo=None, client_ip="192.0.2.77", from_domain="data.test"
    )
    assert (got.spf, got.dmarc) == ("pass", "none")
    got = await v.verify(
        message(), mail_from="x@slow.test", helo=None, client_ip="192.0.2.77", from_domain="fail.test"
    )
    assert (got.spf, got.dmarc) == ("temperror", "temperror")


class _Hanging(DictResolver):
    """Never answers for names under hang.test: only the verifier's overall bound ends the wait."""

    async def txt(self, name: str) -> list[str]:
        if name.endswith("hang.test"):
            await asyncio.Event().wait()
        return await super().txt(name)


async def test_overall_bound_gives_temperror(pems: tuple[bytes, bytes]) -> None:
    s = signer(pems[0], "hang.test", "s1")
    v = MailVerifier(_Hanging(), timeout=0.05, sample=lambda: 0.0)
    got = await v.verify(
        s.sign(message()), mail_from="", helo="mx.hang.test", client_ip=CLIENT, from_domain="hang.test"
    )
    assert (got.spf, got.spf_domain, got.spf_scope) == ("temperror", "mx.hang.test", "helo")
    assert [d.result for d in got.dkim] == ["temperror"] and got.dmarc == "temperror"
    assert sender_decision(got, require_verified=False) == SenderOk(False)
