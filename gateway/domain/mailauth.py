"""Sender verification results and what follows from them (SPEC 1 "Policy", issue 6 anti-spoofing).

The adapter (gateway.mailauth) does the DNS and the cryptography and fills an :class:`AuthVerdict`;
everything here is pure: the DMARC record and its alignment rules (RFC 7489), the organizational
domain from a Public Suffix List lookup handed in as a function, the accept/refuse decision, and the
``Authentication-Results`` header we write (RFC 8601) and the ones we strip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.domain.policy import Deny

__all__ = [
    "AuthVerdict",
    "DkimResult",
    "DmarcOutcome",
    "DmarcRecord",
    "PublicSuffixOf",
    "SenderOk",
    "SuffixRules",
    "aligned",
    "authentication_results",
    "dmarc_evaluate",
    "normalize_domain",
    "organizational_domain",
    "parse_dmarc",
    "pick_dmarc_record",
    "sender_decision",
    "strip_authentication_results",
]

# RFC 8601 §2.7.1 (DKIM) / §2.7.2 (SPF, RFC 7208 §2.6) / RFC 7489 §11.2 (DMARC) result words.
DKIM_RESULTS = ("pass", "fail", "neutral", "temperror", "permerror")
SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
DMARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One DKIM-Signature's outcome. ``domain``/``selector`` are the d=/s= tags as written (empty
    when the signature was too broken to name them)."""

    domain: str
    selector: str
    result: str  # one of DKIM_RESULTS


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Everything the verifier learned about one message's sender."""

    from_domain: str | None
    spf: str  # one of SPF_RESULTS
    spf_domain: str | None  # the MAIL FROM domain (or HELO when MAIL FROM is empty)
    dkim: tuple[DkimResult, ...]
    dmarc: str  # one of DMARC_RESULTS ('none' = no DMARC record)
    dmarc_policy: str | None  # the policy to apply: p= (or sp= for a subdomain), after pct=
    aligned_pass: bool  # an aligned DKIM pass or an aligned SPF pass
    spf_scope: str = "mailfrom"  # "helo" when MAIL FROM was the null path (RFC 7208 §2.4)
    dmarc_published_policy: str | None = None  # p=/sp= as published, before pct= sampling


@dataclass(frozen=True, slots=True)
class SenderOk:
    """The sender may be accepted; ``verified`` is what is stored and announced as sender_verified."""

    verified: bool


def sender_decision(verdict: AuthVerdict, *, require_verified: bool) -> SenderOk | Deny:
    """Issue 6: a DMARC failure under quarantine/reject is refused even for a known contact; with no
    aligned pass the sender is unverified (refused only when the tenant requires verification).

    A ``temperror`` (our DNS did not answer) is never a pass and never a DMARC failure: the message is
    treated as unverified. Refusing it outright would bounce real mail over our own resolver trouble;
    accepting it as verified would let an attacker who can slow DNS down pass as anyone.
    """
    if verdict.dmarc == "fail" and verdict.dmarc_policy in ("quarantine", "reject"):
        return Deny(
            "dmarc_fail",
            f"{verdict.from_domain} publishes p={verdict.dmarc_policy} and the message has no aligned "
            "DKIM or SPF pass",
        )
    if verdict.aligned_pass:
        return SenderOk(verified=True)
    if require_verified:
        why = "a DNS lookup failed (temperror)" if _has_temperror(verdict) else "no aligned DKIM or SPF pass"
        return Deny("sender_unverified", f"the sender could not be verified: {why}")
    return SenderOk(verified=False)


def _has_temperror(verdict: AuthVerdict) -> bool:
    return "temperror" in (verdict.spf, verdict.dmarc) or any(d.result == "temperror" for d in verdict.dkim)


# --- domains, the organizational domain and alignment (RFC 7489 §3.1, §3.2) -------------------------


def normalize_domain(domain: str | None) -> str | None:
    """Lower case, no trailing dot, IDNA A-labels; None for something that is not a domain name."""
    if domain is None:
        return None
    d = domain.strip().rstrip(".").lower()
    if not d or len(d) > 253:
        return None
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = d.split(".")
    if any(not label or len(label) > 63 for label in labels):
        return None
    if not all(_LDH.fullmatch(label) for label in labels):
        return None
    return d


_LDH = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")  # "_" for _dmarc, _domainkey names

PublicSuffixOf = Callable[[str], "str | None"]


def organizational_domain(domain: str, public_suffix: PublicSuffixOf) -> str:
    """RFC 7489 §3.2: the public suffix of ``domain`` plus one more label.

    ``public_suffix(domain)`` returns the longest matching Public Suffix List entry (the adapter uses
    the ``publicsuffixlist`` package; ``SuffixRules`` below is a small stdlib one for tests). A domain
    that is itself a public suffix is its own organizational domain, and so is anything the list does
    not know (None): the default rule "*" makes the last label the suffix (PSL algorithm, step 2).
    """
    d = domain.lower().rstrip(".")
    labels = d.split(".")
    suffix = public_suffix(d)
    n = len(suffix.split(".")) if suffix else 1
    if n >= len(labels):
        return d
    return ".".join(labels[-(n + 1) :])


class SuffixRules:
    """The Public Suffix List algorithm (https://publicsuffix.org/list/, "Algorithm") over rules
    given as text: plain rules, ``*.`` wildcards and ``!`` exceptions. Callable as a PublicSuffixOf."""

    def __init__(self, rules: Sequence[str]) -> None:
        self.plain: set[str] = set()
        self.exceptions: set[str] = set()
        for raw in rules:
            rule = raw.strip().split()[0] if raw.strip() else ""
            if not rule or rule.startswith("//"):
                continue
            if rule.startswith("!"):
                self.exceptions.add(rule[1:].lower())
            else:
                self.plain.add(rule.lower())

    def __call__(self, domain: str) -> str | None:
        labels = domain.lower().rstrip(".").split(".")
        best: str | None = None
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.exceptions:
                # An exception rule wins over everything: its suffix is the rule minus its first label.
                return ".".join(labels[i + 1 :])
            wildcard = ".".join(["*", *labels[i + 1 :]])
            if best is None and (candidate in self.plain or wildcard in self.plain):
                best = candidate  # the first match from the left is the one with the most labels
        return best if best is not None else labels[-1]


def aligned(identifier: str, from_domain: str, *, strict: bool, public_suffix: PublicSuffixOf) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict = the same name; relaxed = the same organizational domain."""
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if a == b:
        return True
    if strict:
        return False
    return organizational_domain(a, public_suffix) == organizational_domain(b, public_suffix)


# --- DMARC records (RFC 7489 §6.3, §6.6.3) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: str  # p=
    subdomain_policy: str | None  # sp= (None: p= applies to subdomains too)
    adkim_strict: bool
    aspf_strict: bool
    pct: int


def parse_dmarc(text: str) -> DmarcRecord | None:
    """A DMARC record, or None when it is not one (RFC 7489 §6.6.3: no usable record)."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "").replace("\t", "") != "v=DMARC1":
        return None  # §6.3: v= must be the first tag, exactly "DMARC1"
    for part in parts[1:]:
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            continue  # a tag without "=": ignored like an unknown tag
        tags.setdefault(name.strip().lower(), value.strip())
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        # §6.6.3: an absent or invalid p= with a valid rua= counts as p=none; without rua= the record
        # is ignored. We send no reports, but the rule still decides between "none" and no record.
        if tags.get("rua"):
            policy = "none"
        else:
            return None
    sp = tags.get("sp", "").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy=policy,
        subdomain_policy=sp if sp in POLICIES else None,
        adkim_strict=tags.get("adkim", "r").lower() == "s",
        aspf_strict=tags.get("aspf", "r").lower() == "s",
        pct=min(max(pct, 0), 100),
    )


def pick_dmarc_record(texts: Sequence[str]) -> DmarcRecord | None:
    """§6.6.3 step 3/4: records not starting with v=DMARC1 are dropped; more than one left = none."""
    candidates = [t for t in texts if t.strip().startswith("v=DMARC1")]
    if len(candidates) != 1:
        return None
    return parse_dmarc(candidates[0])


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    result: str  # one of DMARC_RESULTS
    policy: str | None  # applied (after pct)
    published_policy: str | None
    aligned_pass: bool


def dmarc_evaluate(
    *,
    from_domain: str | None,
    record: DmarcRecord | None,
    record_is_org_fallback: bool,
    record_temperror: bool,
    spf: str,
    spf_domain: str | None,
    dkim: Sequence[DkimResult],
    public_suffix: PublicSuffixOf,
    sample: float,
) -> DmarcOutcome:
    """RFC 7489 §6.6.2: DMARC passes when an aligned identifier passed.

    - Without a record, relaxed alignment is used to compute ``aligned_pass`` (issue 6: with no DMARC
      record an aligned pass still makes the sender verified).
    - ``record_is_org_fallback``: the record came from the organizational domain (§6.6.3 step 2), so
      sp= applies when the From domain is a subdomain of it.
    - When nothing aligned passed but an aligned identifier ended in temperror, the result is
      ``temperror``, not ``fail``: a DNS hiccup on our side must not make a domain's reject policy
      bounce its real mail (§6.6.2 leaves temporary failures to the receiver).
    - pct= (§6.6.4) is honoured: ``sample`` is a number in [0, 1) drawn by the caller; when it is
      not below pct/100 the policy is the next weaker one (reject -> quarantine -> none).
    """
    if from_domain is None:
        return DmarcOutcome("none", None, None, False)
    adkim_strict = record.adkim_strict if record else False
    aspf_strict = record.aspf_strict if record else False
    dkim_aligned = [
        d
        for d in dkim
        if d.domain and aligned(d.domain, from_domain, strict=adkim_strict, public_suffix=public_suffix)
    ]
    spf_aligned = spf_domain is not None and aligned(
        spf_domain, from_domain, strict=aspf_strict, public_suffix=public_suffix
    )
    passed = any(d.result == "pass" for d in dkim_aligned) or (spf_aligned and spf == "pass")
    if record_temperror:
        return DmarcOutcome("temperror", None, None, passed)
    if record is None:
        return DmarcOutcome("none", None, None, passed)
    published = record.policy
    if record_is_org_fallback and record.subdomain_policy is not None:
        published = record.subdomain_policy
    if passed:
        return DmarcOutcome("pass", published, published, True)
    temporary = any(d.result == "temperror" for d in dkim_aligned) or (spf_aligned and spf == "temperror")
    if temporary:
        return DmarcOutcome("temperror", published, published, False)
    applied = published
    if sample * 100 >= record.pct:
        applied = {"reject": "quarantine", "quarantine": "none", "none": "none"}[published]
    return DmarcOutcome("fail", applied, published, False)


# --- Authentication-Results (RFC 8601) ---------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+")  # RFC 2045 token chars plus "@" (addresses)


def _value(text: str) -> str:
    """A pvalue (RFC 8601 §2.2): as is when it is a plain token, else a quoted-string with every
    control character dropped, so a hostile d= or From domain cannot fold or end the header."""
    if text and _TOKEN.fullmatch(text):
        return text
    cleaned = "".join(c for c in text if c >= " " and c != "\x7f")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(authserv_id: str, verdict: AuthVerdict) -> str:
    """The header *value*, e.g. ``mx.example; spf=pass smtp.mailfrom=a.com; dkim=pass header.d=a.com
    header.s=s1; dmarc=pass header.from=a.com``. Every method is always listed (``dkim=none`` for an
    unsigned message) so a reader sees what was checked. Written on one line; the caller folds it
    if it folds headers at all."""
    parts = [_value(authserv_id)]
    spf = f"spf={verdict.spf}"
    if verdict.spf_domain:
        prop = "smtp.helo" if verdict.spf_scope == "helo" else "smtp.mailfrom"
        spf += f" {prop}={_value(verdict.spf_domain)}"
    parts.append(spf)
    if not verdict.dkim:
        parts.append("dkim=none")
    for d in verdict.dkim:
        entry = f"dkim={d.result}"
        if d.domain:
            entry += f" header.d={_value(d.domain)}"
        if d.selector:
            entry += f" header.s={_value(d.selector)}"
        parts.append(entry)
    dmarc = f"dmarc={verdict.dmarc}"
    if verdict.dmarc_published_policy or verdict.dmarc_policy:
        published = verdict.dmarc_published_policy or verdict.dmarc_policy
        comment = f"p={published}"
        if verdict.dmarc_policy and verdict.dmarc_policy != published:
            comment += f" applied={verdict.dmarc_policy}"  # pct= sampled a weaker policy
        dmarc += f" ({comment})"
    if verdict.from_domain:
        dmarc += f" header.from={_value(verdict.from_domain)}"
    parts.append(dmarc)
    return "; ".join(parts)


_AR_FIELD = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)


def strip_authentication_results(header_block: bytes) -> bytes:
    """``header_block`` without any Authentication-Results field, continuation lines included.

    RFC 8601 §5: results that arrive with a message cannot be trusted (anyone can write them), and ours
    must be the only ones a reader sees. Every other byte is kept as it was (line endings, order),
    so a DKIM signature over the remaining fields still verifies.
    """
    out: list[bytes] = []
    dropping = False
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue  # a continuation belongs to the field above it (RFC 5322 §2.2.3)
        dropping = bool(_AR_FIELD.match(line))
        if not dropping:
            out.append(line)
    return b"".join(out)
