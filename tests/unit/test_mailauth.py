"""Sender verification, the pure parts: the accept/refuse decision, the Authentication-Results text,
stripping arriving ones, organizational domains (PSL edge cases), alignment, DMARC records and
pct=, and SPF macro expansion (the RFC 7208 §7.4 examples)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load
from gateway.domain.mailauth import (
    AuthVerdict,
    DkimResult,
    SenderOk,
    SuffixRules,
    aligned,
    authentication_results,
    dmarc_evaluate,
    normalize_domain,
    organizational_domain,
    parse_dmarc,
    pick_dmarc_record,
    sender_decision,
    strip_authentication_results,
)
from gateway.domain.policy import Deny
from gateway.mailauth.dkim_verify import verify_dkim
from gateway.mailauth.resolver import DictResolver
from gateway.mailauth.spf import SpfError, _Check, _check_macro_string, _expand, check_spf
from gateway.mailauth.verify import psl_public_suffix

RULES = SuffixRules(["// comment", "com", "uk", "co.uk", "*.ck", "!www.ck", "github.io", "io"])
PSL = psl_public_suffix()


def verdict(**kw: object) -> AuthVerdict:
    base: dict[str, object] = dict(
        from_domain="a.com",
        spf="pass",
        spf_domain="a.com",
        dkim=(DkimResult("a.com", "s1", "pass"),),
        dmarc="pass",
        dmarc_policy="reject",
        aligned_pass=True,
    )
    base.update(kw)
    return AuthVerdict(**base)  # type: ignore[arg-type]


# --- the decision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "require", "expected"),
    [
        ({}, False, SenderOk(True)),
        ({}, True, SenderOk(True)),
        ({"dmarc": "fail", "dmarc_policy": "reject", "aligned_pass": False}, False, "dmarc_fail"),
        ({"dmarc": "fail", "dmarc_policy": "quarantine", "aligned_pass": False}, False, "dmarc_fail"),
        ({"dmarc": "fail", "dmarc_policy": "none", "aligned_pass": False}, False, SenderOk(False)),
        ({"dmarc": "fail", "dmarc_policy": "none", "aligned_pass": False}, True, "sender_unverified"),
        ({"dmarc": "none", "dmarc_policy": None, "aligned_pass": False}, False, SenderOk(False)),
        ({"dmarc": "none", "dmarc_policy": None, "aligned_pass": False}, True, "sender_unverified"),
        ({"dmarc": "none", "dmarc_policy": None, "aligned_pass": True}, True, SenderOk(True)),
        # a temperror is never a pass, and never a DMARC failure either
        ({"dmarc": "temperror", "dmarc_policy": "reject", "aligned_pass": False}, False, SenderOk(False)),
        ({"dmarc": "temperror", "dmarc_policy": "reject", "aligned_pass": False}, True, "sender_unverified"),
    ],
)
def test_sender_decision(kw: dict[str, object], require: bool, expected: object) -> None:
    got = sender_decision(verdict(**kw), require_verified=require)
    if isinstance(expected, str):
        assert isinstance(got, Deny) and got.reason == expected and got.detail
    else:
        assert got == expected


def test_unverified_detail_names_a_temperror() -> None:
    got = sender_decision(
        verdict(spf="temperror", dmarc="temperror", aligned_pass=False), require_verified=True
    )
    assert isinstance(got, Deny) and "temperror" in got.detail


# --- Authentication-Results -----------------------------------------------------------------------


def test_header_text() -> None:
    assert authentication_results("mx.example", verdict(dmarc_published_policy="reject")) == (
        "mx.example; spf=pass smtp.mailfrom=a.com; dkim=pass header.d=a.com header.s=s1; "
        "dmarc=pass (p=reject) header.from=a.com"
    )
    v = verdict(
        spf="none",
        spf_domain="relay.b.org",
        spf_scope="helo",
        dkim=(),
        dmarc="fail",
        dmarc_policy="quarantine",
        dmarc_published_policy="reject",
        aligned_pass=False,
    )
    assert authentication_results("mx.example", v) == (
        "mx.example; spf=none smtp.helo=relay.b.org; dkim=none; "
        "dmarc=fail (p=reject applied=quarantine) header.from=a.com"
    )
    two = verdict(
        dkim=(DkimResult("x.net", "k", "fail"), DkimResult("a.com", "s2", "pass")),
        dmarc="none",
        dmarc_policy=None,
        from_domain=None,
    )
    text = authentication_results("mx", two)
    assert "dkim=fail header.d=x.net header.s=k; dkim=pass header.d=a.com header.s=s2; dmarc=none" in text
    assert text.endswith("dmarc=none")


def test_hostile_values_are_quoted_and_cannot_break_the_header() -> None:
    v = verdict(dkim=(DkimResult('evil.com\r\nX-Spam: no; "', "s;1", "fail"),))
    text = authentication_results("mx", v)
    assert "\r" not in text and "\n" not in text
    assert 'header.d="evil.comX-Spam: no; \\""' in text and 'header.s="s;1"' in text


@given(st.text(), st.text(), st.text())
def test_header_never_has_control_characters(d: str, s: str, from_domain: str) -> None:
    text = authentication_results("mx", verdict(dkim=(DkimResult(d, s, "pass"),), from_domain=from_domain))
    assert all(c >= " " and c != "\x7f" for c in text)


HEADERS = (
    b"Received: from x\r\n"
    b"Authentication-Results: mx.evil; dkim=pass\r\n"
    b"\theader.d=bank.com\r\n"
    b"From: a@b.com\r\n"
    b"authentication-results : spoof; spf=pass\r\n"
    b"Subject: hi\r\n"
    b" continued\r\n"
    b"X-Authentication-Results: kept\r\n"
    b"\r\n"
)


def test_strip_authentication_results() -> None:
    assert strip_authentication_results(HEADERS) == (
        b"Received: from x\r\nFrom: a@b.com\r\nSubject: hi\r\n continued\r\n"
        b"X-Authentication-Results: kept\r\n\r\n"
    )
    lf = HEADERS.replace(b"\r\n", b"\n")
    assert strip_authentication_results(lf) == strip_authentication_results(HEADERS).replace(b"\r\n", b"\n")
    assert strip_authentication_results(b"Subject: x\r\n") == b"Subject: x\r\n"


_field_name = st.sampled_from(
    [b"Subject", b"From", b"Authentication-Results", b"AUTHENTICATION-RESULTS", b"X-A"]
)
_field = st.tuples(
    _field_name, st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
)


@given(st.lists(st.tuples(_field, st.booleans()), max_size=8))
def test_strip_property(fields: list[tuple[tuple[bytes, bytes], bool]]) -> None:
    block = b"".join(
        name + b": " + value + b"\r\n" + (b" more\r\n" if cont else b"") for (name, value), cont in fields
    )
    out = strip_authentication_results(block)
    assert b"authentication-results:" not in out.lower().replace(b"x-authentication", b"")
    assert strip_authentication_results(out) == out
    kept = b"".join(
        name + b": " + value + b"\r\n" + (b" more\r\n" if cont else b"")
        for (name, value), cont in fields
        if name.lower() != b"authentication-results"
    )
    assert out == kept


# --- domains, organizational domain, alignment ------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("mail.example.com", "example.com"),
        ("example.com", "example.com"),
        ("com", "com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("x.y.ck", "x.y.ck"),  # *.ck: y.ck is a public suffix
        ("a.www.ck", "www.ck"),  # !www.ck: www.ck is registrable
        ("a.b.unknown", "b.unknown"),  # not on the list: the default rule "*"
        ("user.github.io", "user.github.io"),
        ("Mail.Example.COM.", "example.com"),
    ],
)
def test_organizational_domain_with_rules(domain: str, org: str) -> None:
    assert organizational_domain(domain, RULES) == org


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("mail.example.co.uk", "example.co.uk"),
        ("a.b.c.example.com", "example.com"),
        ("project.user.github.io", "user.github.io"),  # a private-section suffix: separate owners
        ("x.foo.bar.unknowntld", "bar.unknowntld"),
        ("www.xn--fiqs8s", "www.xn--fiqs8s"),
        ("a.b.xn--fiqs8s", "b.xn--fiqs8s"),
    ],
)
def test_organizational_domain_with_the_bundled_psl(domain: str, org: str) -> None:
    assert organizational_domain(domain, PSL) == org


def test_normalize_domain() -> None:
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
    for bad in ("", None, "a..b", "-a.com", "a" * 64 + ".com", "x y.com", "a@b.com"):
        assert normalize_domain(bad) is None


def test_alignment() -> None:
    assert aligned("mail.a.com", "a.com", strict=False, public_suffix=PSL)
    assert not aligned("mail.a.com", "a.com", strict=True, public_suffix=PSL)
    assert aligned("A.com", "a.com.", strict=True, public_suffix=PSL)
    assert not aligned("a.co.uk", "b.co.uk", strict=False, public_suffix=PSL)
    assert not aligned("evil.github.io", "bank.github.io", strict=False, public_suffix=PSL)


# --- DMARC records and evaluation ---------------------------------------------------------------


def test_parse_dmarc() -> None:
    r = parse_dmarc("v=DMARC1; p=Reject; sp=none; adkim=s; pct=50; rua=mailto:x@a.com")
    assert r is not None
    assert (r.policy, r.subdomain_policy, r.adkim_strict, r.aspf_strict, r.pct) == (
        "reject",
        "none",
        True,
        False,
        50,
    )
    assert parse_dmarc("p=reject; v=DMARC1") is None  # v= must come first
    assert parse_dmarc("v=DMARC1; p=bogus") is None  # no valid p= and no rua=: ignored
    none = parse_dmarc("v=DMARC1; p=bogus; rua=mailto:r@a.com")
    assert none is not None and none.policy == "none"  # RFC 7489 §6.6.3
    odd = parse_dmarc("v=DMARC1;p=quarantine;sp=maybe;pct=x;foo=bar;junk")
    assert odd is not None and (odd.policy, odd.subdomain_policy, odd.pct) == ("quarantine", None, 100)
    assert pick_dmarc_record(["v=spf1 -all", "v=DMARC1; p=reject"]) is not None
    assert pick_dmarc_record(["v=DMARC1; p=reject", "v=DMARC1; p=none"]) is None  # two = none


def _eval(record: str | None, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = dict(
        from_domain="a.com",
        record=parse_dmarc(record) if record else None,
        record_is_org_fallback=False,
        record_temperror=False,
        spf="fail",
        spf_domain="evil.net",
        dkim=(),
        public_suffix=PSL,
        sample=0.0,
    )
    args.update(kw)
    return dmarc_evaluate(**args)  # type: ignore[arg-type]


def test_dmarc_evaluate() -> None:
    assert _eval("v=DMARC1; p=reject").result == "fail"
    assert _eval("v=DMARC1; p=reject", spf="pass", spf_domain="bounce.a.com").result == "pass"
    assert _eval("v=DMARC1; p=reject; aspf=s", spf="pass", spf_domain="bounce.a.com").result == "fail"
    signed = (DkimResult("mail.a.com", "s", "pass"),)
    assert _eval("v=DMARC1; p=reject", dkim=signed).result == "pass"
    assert _eval("v=DMARC1; p=reject; adkim=s", dkim=signed).result == "fail"
    # a pass for another domain does not help
    assert _eval("v=DMARC1; p=reject", dkim=(DkimResult("evil.net", "s", "pass"),)).result == "fail"
    # no record: aligned_pass is still computed (relaxed)
    out = _eval(None, dkim=signed)
    assert (out.result, out.policy, out.aligned_pass) == ("none", None, True)
    # sp= applies only to a record found at the organizational domain
    assert _eval("v=DMARC1; p=reject; sp=none", record_is_org_fallback=True).policy == "none"
    assert _eval("v=DMARC1; p=reject; sp=none").policy == "reject"
    # temperrors
    assert _eval(None, record_temperror=True).result == "temperror"
    tmp = _eval("v=DMARC1; p=reject", dkim=(DkimResult("a.com", "s", "temperror"),))
    assert (tmp.result, tmp.policy) == ("temperror", "reject")
    assert _eval("v=DMARC1; p=reject", spf="temperror", spf_domain="a.com").result == "temperror"
    assert _eval("v=DMARC1; p=reject", from_domain=None).result == "none"


@pytest.mark.parametrize(
    ("policy", "pct", "sample", "applied"),
    [
        ("reject", 100, 0.999, "reject"),
        ("reject", 50, 0.49, "reject"),
        ("reject", 50, 0.5, "quarantine"),
        ("quarantine", 0, 0.0, "none"),
        ("reject", 0, 0.0, "quarantine"),
    ],
)
def test_pct_sampling(policy: str, pct: int, sample: float, applied: str) -> None:
    out = _eval(f"v=DMARC1; p={policy}; pct={pct}", sample=sample)
    assert (out.result, out.policy, out.published_policy) == ("fail", applied, policy)


# --- SPF macros (RFC 7208 §7.4) -----------------------------------------------------------------


def _check(ip: str) -> _Check:
    return _Check(DictResolver(), ipaddress.ip_address(ip), "strong-bad@email.example.com", "mx.example.org")


@pytest.mark.parametrize(
    ("macro", "expanded"),
    [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%{h}%%%_%-", "mx.example.org% %20"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("%{p}", "unknown"),
    ],
)
def test_macro_examples(macro: str, expanded: str) -> None:
    _check_macro_string(macro, "email.example.com")
    assert _expand(_check("192.0.2.3"), macro, "email.example.com") == expanded


def test_macro_ipv6() -> None:
    assert _expand(_check("2001:db8::cb01"), "%{ir}.%{v}._spf.%{d2}", "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


@pytest.mark.parametrize("macro", ["%{c}", "%{x}", "%{d0}", "100%", "%a", "%{d"])
def test_bad_macros(macro: str) -> None:
    with pytest.raises(SpfError) as err:
        _check_macro_string(macro, "example.com")
    assert err.value.result == "permerror"


# --- config ----------------------------------------------------------------------------------------


def test_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("")
    default = load(path, {}).mailauth
    assert (default.authserv_id, default.nameservers, default.dns_port) == ("", (), 53)
    assert (default.dns_timeout_seconds, default.timeout_seconds, default.max_dkim_signatures) == (
        5.0,
        20.0,
        10,
    )
    path.write_text('[mailauth]\nauthserv_id = "MX.Example.com"\nnameservers = [" 127.0.0.1", "::1"]\n')
    cfg = load(path, {}).mailauth
    assert (cfg.authserv_id, cfg.nameservers) == ("mx.example.com", ("127.0.0.1", "::1"))
    for text, key in [
        ('[mailauth]\nnameservers = ["ns.example.com"]\n', "mailauth.nameservers[0]"),
        ("[mailauth]\nmax_dkim_signatures = 0\n", "mailauth.max_dkim_signatures"),
        ("[mailauth]\ndns_timeout_seconds = 0\n", "mailauth.dns_timeout_seconds"),
        ('[mailauth]\nauthserv_id = "not a host"\n', "mailauth.authserv_id"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load(path, {})
        assert key in str(err.value)


# --- hostile input never escapes as an exception -----------------------------------------------------

_spf_term = st.one_of(
    st.sampled_from(
        ["all", "-all", "~all", "a", "mx/24", "ptr", "ip4:192.0.2.0/24", "ip6:::1/128", "redirect=x.test"]
    ),
    st.sampled_from(["include:", "exists:", "a:", "mx:", "ip4:", "ip6:", "exp=", "redirect="]).flatmap(
        lambda p: st.text(alphabet="abc.%{}dlsir0123-/_:", max_size=12).map(lambda t: p + t)
    ),
    st.text(max_size=10),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_spf_term, max_size=6), st.sampled_from(["192.0.2.10", "2001:db8::1"]))
def test_spf_never_raises(terms: list[str], ip: str) -> None:
    resolver = DictResolver(
        {"x.test": {"TXT": ["v=spf1 " + " ".join(terms)], "A": ["192.0.2.10"], "MX": [(1, "x.test")]}}
    )
    result, domain, scope = asyncio.run(check_spf(resolver, client_ip=ip, mail_from="u@x.test", helo=None))
    assert result.result in ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
    assert (domain, scope) == ("x.test", "mailfrom")


@given(st.text(max_size=80))
def test_dmarc_parse_never_raises(text: str) -> None:
    parse_dmarc(text)
    parse_dmarc("v=DMARC1; " + text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_dkim_never_raises(tail: bytes) -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s; h=from; bh=AAAA; b=AAAA;" + tail
    results = asyncio.run(verify_dkim(raw, DictResolver()))
    assert all(r.result in ("pass", "fail", "neutral", "temperror", "permerror") for r in results)
