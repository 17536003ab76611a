"""SPF (RFC 7208) evaluated asynchronously over our :class:`Resolver`.

Why our own evaluator rather than pyspf: pyspf does its DNS itself, synchronously (through
dnspython's blocking resolver or pydns), so it would block the event loop or need a thread per
check, and its lookups could not go through the resolver the tests replace with a dict. The part of
RFC 7208 a receiver needs is small: what is implemented is listed here, what is not is said.

- Mechanisms ``all include a mx ip4 ip6 exists`` (§5); ``ptr`` (§5.5, "SHOULD NOT be used") counts
  as a DNS lookup and never matches. Modifiers ``redirect`` (§6.1); ``exp`` (§6.2) is accepted and
  not evaluated (we never show explanations); unknown modifiers are ignored (§6).
- Macros (§7) in domain-specs: ``s l o d i p h v`` with digit/``r`` transformers and delimiters;
  ``%{p}`` is always "unknown" (we do no PTR validation, §7.3 allows it); ``c r t`` are exp-only
  and a permerror elsewhere.
- Limits (§4.6.4): at most 10 terms that cause DNS lookups (include a mx ptr exists redirect) ->
  permerror; at most 10 MX names per ``mx`` -> permerror; more than 2 void lookups (NXDOMAIN or no
  answer) -> permerror. A DNS failure anywhere ends the check with temperror (§4.4, §5).
- A syntax error anywhere in the record is a permerror before anything is evaluated (§4.6).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.domain.ipaddr import parse_ip
from gateway.domain.mailauth import normalize_domain
from gateway.mailauth.resolver import DnsTempError, Resolver

__all__ = ["SpfError", "SpfResult", "check_host", "check_spf"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_LOOKUPS = 10
MAX_VOIDS = 2
MAX_MX_NAMES = 10

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)
_DIRECTIVE = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(.*?)(?:/(\d+))?(?://(\d+))?")
_MACRO = re.compile(r"%(?:\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.DOTALL)


@dataclass(frozen=True, slots=True)
class SpfResult:
    """``result`` is an RFC 7208 §2.6 word; ``reason`` says why, for logs."""

    result: str
    reason: str = ""


class SpfError(Exception):
    """Ends the whole check at once with ``result`` (temperror or permerror), as §4.4, §4.6 and
    §4.6.4 require; raised through nested include/redirect evaluations."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(f"{result}: {reason}")
        self.result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Term:
    qualifier: str
    name: str
    spec: str | None = None  # domain-spec (macro string) or the ip4/ip6 address
    cidr4: int | None = None
    cidr6: int | None = None


@dataclass
class _Check:
    resolver: Resolver
    ip: IPAddress
    sender: str  # local@domain (postmaster@ when there is no local part, §4.3)
    helo: str
    lookups: int = 0
    voids: int = 0
    trail: list[str] = field(default_factory=list)

    def count_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise SpfError("permerror", f"more than {MAX_LOOKUPS} DNS-querying terms (at {term})")

    def count_void(self, answers: Sequence[object], what: str) -> None:
        if not answers:
            self.voids += 1
            if self.voids > MAX_VOIDS:
                raise SpfError("permerror", f"more than {MAX_VOIDS} void lookups (at {what})")


async def check_spf(
    resolver: Resolver, *, client_ip: str | None, mail_from: str, helo: str | None
) -> tuple[SpfResult, str | None, str]:
    """(result, domain checked, scope) for an SMTP transaction. The identity is the MAIL FROM
    domain, or the HELO name when MAIL FROM is the null path (RFC 7208 §2.4); scope is "mailfrom"
    or "helo". Without a client IP (IMAP-fetched mail) there is nothing to check: ``none``."""
    mail_from = mail_from.strip().strip("<>")
    if mail_from:
        local, _, domain = mail_from.rpartition("@")
        scope = "mailfrom"
        sender = f"{local or 'postmaster'}@{domain}"
    else:
        domain = (helo or "").strip()
        scope = "helo"
        sender = f"postmaster@{domain}"
    norm = normalize_domain(domain) if domain else None
    if client_ip is None:
        return SpfResult("none", "no client IP (not received over SMTP)"), norm or (domain or None), scope
    ip = parse_ip(client_ip)  # an IPv4 client on a dual-stack socket is an IPv4 client (§5)
    if ip is None:
        return SpfResult("none", f"client IP {client_ip!r} is not an address"), norm, scope
    if norm is None or "." not in norm:
        # §4.3: a malformed or single-label domain is "none"; so is an empty HELO.
        return SpfResult("none", f"{domain!r} is not a usable domain"), norm or (domain or None), scope
    check = _Check(resolver, ip, sender, (helo or "").strip())
    try:
        result = await check_host(check, norm)
    except SpfError as exc:
        return SpfResult(exc.result, exc.reason), norm, scope
    return result, norm, scope


async def check_host(check: _Check, domain: str) -> SpfResult:
    """RFC 7208 §4: the result for ``domain``. Raises :class:`SpfError` for results that end every
    enclosing evaluation (temperror, permerror)."""
    try:
        texts = await check.resolver.txt(domain)
    except DnsTempError as exc:
        raise SpfError("temperror", str(exc)) from None
    records = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if not records:
        return SpfResult("none", f"no SPF record at {domain}")
    if len(records) > 1:
        raise SpfError("permerror", f"{len(records)} SPF records at {domain} (§4.5)")
    mechanisms, redirect = _parse(records[0], domain)
    for term in mechanisms:
        if await _matches(check, term, domain):
            return SpfResult(_QUALIFIERS[term.qualifier], f"{term.name} matched at {domain}")
    if redirect is not None:
        check.count_lookup("redirect")
        target = _target(check, redirect, domain)
        if target is None:
            raise SpfError("permerror", f"redirect={redirect} at {domain} is not a domain")
        result = await check_host(check, target)
        if result.result == "none":
            raise SpfError("permerror", f"redirect target {target} has no SPF record (§6.1)")
        return result
    return SpfResult("neutral", f"nothing matched at {domain}")


def _parse(record: str, domain: str) -> tuple[list[_Term], str | None]:
    """The record's directives and its redirect= (§4.6.1, §12 ABNF); SpfError permerror on any
    syntax error."""
    mechanisms: list[_Term] = []
    redirect: str | None = None
    seen_exp = False
    for raw in record.split(" ")[1:]:
        if not raw:
            continue  # terms are separated by one or more spaces
        modifier = _MODIFIER.fullmatch(raw)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            _check_macro_string(value, domain, allow_exp_letters=(name == "exp"))
            if name == "redirect":
                if redirect is not None:
                    raise SpfError("permerror", f"two redirect= at {domain}")
                redirect = value
            elif name == "exp":
                if seen_exp:
                    raise SpfError("permerror", f"two exp= at {domain}")
                seen_exp = True
            continue  # unknown modifiers are ignored (§6)
        directive = _DIRECTIVE.fullmatch(raw)
        if not directive or directive.group(2).lower() not in _MECHANISMS:
            raise SpfError("permerror", f"unknown term {raw!r} at {domain}")
        mechanisms.append(
            _term(directive.group(1) or "+", directive.group(2).lower(), directive.group(3), domain)
        )
    return mechanisms, redirect


def _term(qualifier: str, name: str, rest: str, domain: str) -> _Term:
    def bad() -> SpfError:
        return SpfError("permerror", f"bad {name} term {qualifier}{name}{rest} at {domain}")

    if name == "all":
        if rest:
            raise bad()
        return _Term(qualifier, name)
    if name in ("include", "exists"):
        if not rest.startswith(":") or len(rest) == 1:
            raise bad()
        _check_macro_string(rest[1:], domain)
        return _Term(qualifier, name, rest[1:])
    if name == "ptr":
        if rest and (not rest.startswith(":") or len(rest) == 1):
            raise bad()
        if rest:
            _check_macro_string(rest[1:], domain)
        return _Term(qualifier, name, rest[1:] or None)
    if name in ("a", "mx"):
        m = _DUAL_CIDR.fullmatch(rest)
        assert m is not None  # the pattern matches any string
        spec, c4, c6 = m.group(1), m.group(2), m.group(3)
        if spec and (not spec.startswith(":") or len(spec) == 1):
            raise bad()
        if spec:
            _check_macro_string(spec[1:], domain)
        cidr4 = int(c4) if c4 is not None else None
        cidr6 = int(c6) if c6 is not None else None
        if (cidr4 is not None and cidr4 > 32) or (cidr6 is not None and cidr6 > 128):
            raise bad()
        return _Term(qualifier, name, spec[1:] or None, cidr4, cidr6)
    # ip4 / ip6: the network must be written out, no macros (§5.6)
    if not rest.startswith(":"):
        raise bad()
    address, _, prefix = rest[1:].partition("/")
    try:
        net = ipaddress.ip_network(f"{address}/{prefix or ('32' if name == 'ip4' else '128')}", strict=False)
    except ValueError:
        raise bad() from None
    if (name == "ip4") != (net.version == 4) or (prefix and not prefix.isdigit()):
        raise bad()
    return _Term(qualifier, name, str(net))


async def _matches(check: _Check, term: _Term, domain: str) -> bool:
    ip = check.ip
    if term.name == "all":
        return True
    if term.name in ("ip4", "ip6"):
        assert term.spec is not None
        return ip in ipaddress.ip_network(term.spec)
    check.count_lookup(term.name)
    if term.name == "ptr":
        return False  # not evaluated; see the module docstring
    target = _target(check, term.spec, domain) if term.spec else domain
    if term.name == "include":
        if target is None:
            raise SpfError("permerror", f"include:{term.spec} at {domain} is not a domain")
        result = await check_host(check, target)
        if result.result == "none":
            raise SpfError("permerror", f"include:{target} has no SPF record (§5.2)")
        return result.result == "pass"
    if target is None:
        return False  # an expansion that is no domain name cannot match anything
    try:
        if term.name == "exists":
            answers = await check.resolver.a(target)  # always A, even for an IPv6 client (§5.7)
            check.count_void(answers, f"exists:{target}")
            return bool(answers)
        prefix = term.cidr4 if ip.version == 4 else term.cidr6
        if term.name == "a":
            addresses = await _addresses(check, target)
            check.count_void(addresses, f"a:{target}")
            return _in_any(ip, addresses, prefix)
        # mx
        exchanges = await check.resolver.mx(target)
        check.count_void(exchanges, f"mx:{target}")
        if len(exchanges) > MAX_MX_NAMES:
            raise SpfError("permerror", f"mx:{target} has {len(exchanges)} MX names (limit {MAX_MX_NAMES})")
        for _, exchange in sorted(exchanges):
            if _in_any(ip, await _addresses(check, exchange), prefix):
                return True
        return False
    except DnsTempError as exc:
        raise SpfError("temperror", str(exc)) from None


async def _addresses(check: _Check, name: str) -> list[str]:
    return await (check.resolver.a(name) if check.ip.version == 4 else check.resolver.aaaa(name))


def _in_any(ip: IPAddress, addresses: list[str], prefix: int | None) -> bool:
    for text in addresses:
        try:
            net = ipaddress.ip_network(
                f"{text}/{prefix if prefix is not None else ip.max_prefixlen}", strict=False
            )
        except ValueError:
            continue
        if net.version == ip.version and ip in net:
            return True
    return False


# --- macros (§7) ----------------------------------------------------------------------------------


def _check_macro_string(spec: str, domain: str, *, allow_exp_letters: bool = False) -> None:
    """Syntax only (parse time): every % starts a valid macro; exp-only letters elsewhere are errors."""
    pos = 0
    for m in _MACRO.finditer(spec):
        if spec[pos : m.start()].count("%"):
            raise SpfError("permerror", f"bad macro in {spec!r} at {domain}")
        pos = m.end()
        if m.group(5) is not None:
            if m.group(5) not in "%_-":
                raise SpfError("permerror", f"bad macro %{m.group(5)} in {spec!r} at {domain}")
            continue
        letter = m.group(1).lower()
        if letter not in "slodiphv" and not (allow_exp_letters and letter in "crt"):
            raise SpfError("permerror", f"bad macro letter {m.group(1)!r} in {spec!r} at {domain}")
        if m.group(2) and int(m.group(2)) == 0:
            raise SpfError("permerror", f"zero digits in a macro in {spec!r} at {domain}")
    if "%" in spec[pos:]:
        raise SpfError("permerror", f"bad macro in {spec!r} at {domain}")


def _target(check: _Check, spec: str | None, domain: str) -> str | None:
    """The domain a domain-spec names after macro expansion (§7), truncated from the left to 253
    characters (§7.3); None when the result is not a domain name."""
    if spec is None:
        return domain
    expanded = _expand(check, spec, domain)
    while len(expanded) > 253 and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    norm = normalize_domain(expanded)
    return norm if norm is not None and "." in norm else None


def _expand(check: _Check, spec: str, domain: str) -> str:
    local, _, sender_domain = check.sender.rpartition("@")
    ip = check.ip
    # IPv6 as dot-separated nibbles (§7.3)
    ip_text = str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", ""))
    values = {
        "s": check.sender,
        "l": local,
        "o": sender_domain,
        "d": domain,
        "i": ip_text,
        "p": "unknown",
        "v": "in-addr" if ip.version == 4 else "ip6",
        "h": check.helo,
    }

    def one(m: re.Match[str]) -> str:
        if m.group(5) is not None:
            return {"%": "%", "_": " ", "-": "%20"}[m.group(5)]
        letter, digits, reverse, delimiters = m.group(1), m.group(2), m.group(3), m.group(4)
        value = values[letter.lower()]
        parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits) :]
        out = ".".join(parts)
        if letter.isupper():
            out = urllib.parse.quote(out, safe="")  # §7.3: upper-case letters are URL-escaped
        return out

    return _MACRO.sub(one, spec)
