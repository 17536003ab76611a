"""Sender verification of inbound email: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489), all
DNS through one injectable :class:`Resolver`. The decisions and the Authentication-Results text are
pure and live in gateway.domain.mailauth."""

from __future__ import annotations

from gateway.config import Config
from gateway.mailauth.resolver import DictResolver, DnsResolver, DnsTempError, Resolver
from gateway.mailauth.verify import MailVerifier, psl_public_suffix

__all__ = [
    "DictResolver",
    "DnsResolver",
    "DnsTempError",
    "MailVerifier",
    "Resolver",
    "authserv_id",
    "build_verifier",
    "psl_public_suffix",
]


def build_verifier(config: Config, *, resolver: Resolver | None = None) -> MailVerifier:
    """The verifier ``gateway run`` uses: dnspython over ``[mailauth] nameservers`` (or the
    system's), unless a resolver is handed in (tests)."""
    m = config.mailauth
    if resolver is None:
        resolver = DnsResolver(m.nameservers, port=m.dns_port, timeout=m.dns_timeout_seconds)
    return MailVerifier(resolver, max_signatures=m.max_dkim_signatures, timeout=m.timeout_seconds)


def authserv_id(config: Config) -> str:
    """The authserv-id for our Authentication-Results: ``[mailauth] authserv_id`` or the mail domain."""
    return config.mailauth.authserv_id or config.smtp.mail_domain
