"""DKIM key material: RSA key generation, the public key's DER form, the DNS TXT record to publish.

Keys come from pyca/cryptography (OpenSSL's generator, not code of our own). The private key is
written as PKCS#1 ``RSA PRIVATE KEY`` (RFC 8017 A.1.2), which dkimpy and OpenSSL both read; the
public key is published as a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) in base64: RFC 6376 §3.6.1
``p=``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["RsaKey", "dns_record", "generate_rsa", "public_key_der", "txt_record_lines"]

_E = 65537


@dataclass(frozen=True, slots=True)
class RsaKey:
    key: rsa.RSAPrivateKey

    @property
    def n(self) -> int:
        return self.key.private_numbers().public_numbers.n

    @property
    def e(self) -> int:
        return self.key.private_numbers().public_numbers.e

    def private_pem(self) -> bytes:
        """PKCS#1 RSAPrivateKey (RFC 8017 A.1.2), PEM armoured (RFC 7468 §2), unencrypted."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def public_der(self) -> bytes:
        return public_key_der(self.n, self.e)


def public_key_der(n: int, e: int) -> bytes:
    """SubjectPublicKeyInfo DER of an RSA public key (what DKIM's ``p=`` carries, base64)."""
    return (
        rsa.RSAPublicNumbers(e, n)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def generate_rsa(bits: int = 2048) -> RsaKey:
    """A fresh RSA key (RFC 8301 §3.2: DKIM signers MUST use at least 1024 bits, SHOULD 2048)."""
    if bits < 1024 or bits % 2:
        raise ValueError("bits must be an even number >= 1024")
    return RsaKey(rsa.generate_private_key(public_exponent=_E, key_size=bits))


def dns_record(selector: str, domain: str, public_der: bytes, *, key_type: str = "rsa") -> tuple[str, str]:
    """(owner name, TXT value): ``selector._domainkey.domain`` and ``v=DKIM1; k=rsa; p=…`` (RFC 6376
    §3.6.1, §3.6.2.1). For ed25519 ``public_der`` is the raw 32-byte key (RFC 8463 §4.2)."""
    p = base64.b64encode(public_der).decode("ascii")
    return f"{selector}._domainkey.{domain}", f"v=DKIM1; k={key_type}; p={p}"


def txt_record_lines(name: str, value: str, ttl: int = 3600) -> str:
    """A zone-file line: a TXT value longer than 255 octets is split into several strings (RFC 1035
    §3.3.14 character-strings), which DKIM verifiers join (RFC 6376 §3.6.2.2)."""
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    return f"{name}. {ttl} IN TXT ( {' '.join(chr(34) + c + chr(34) for c in chunks)} )"
