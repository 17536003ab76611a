"""DKIM key material: RSA key generation, PEM/DER encoding, the DNS TXT record to publish.

Stdlib only (``secrets`` for randomness, ``pow`` for arithmetic), so ``gateway dkim-keygen`` needs
neither the ``openssl`` binary nor another Python package. Generation follows FIPS 186-5 A.1.3's
rules for probable primes: each prime has its top two bits set (so n has exactly ``bits`` bits),
``gcd(e, p-1) = 1``, ``|p - q| > 2**(bits/2 - 100)``, and Miller-Rabin with random bases (64 rounds:
an error probability far below 2**-100, Table C.1 needs fewer).

The private key is written as PKCS#1 ``RSA PRIVATE KEY`` (RFC 8017 A.1.2), which dkimpy and
OpenSSL both read; the public key is published as a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7) in
base64: RFC 6376 §3.6.1 ``p=``.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

__all__ = ["RsaKey", "dns_record", "generate_rsa", "public_key_der", "txt_record_lines"]

_E = 65537
_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]
# 1.2.840.113549.1.1.1 rsaEncryption, DER encoded with its NULL parameters.
_RSA_ALGORITHM_ID = bytes.fromhex("300d06092a864886f70d0101010500")


@dataclass(frozen=True, slots=True)
class RsaKey:
    n: int
    e: int
    d: int
    p: int
    q: int

    def private_pem(self) -> bytes:
        """PKCS#1 RSAPrivateKey (RFC 8017 A.1.2), PEM armoured (RFC 7468 §2)."""
        fields = [
            0,
            self.n,
            self.e,
            self.d,
            self.p,
            self.q,
            self.d % (self.p - 1),
            self.d % (self.q - 1),
            pow(self.q, -1, self.p),
        ]
        der = _sequence(b"".join(_integer(v) for v in fields))
        return _pem("RSA PRIVATE KEY", der)

    def public_der(self) -> bytes:
        return public_key_der(self.n, self.e)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")  # one spare byte keeps the sign bit 0
    while len(raw) > 1 and raw[0] == 0 and raw[1] < 0x80:
        raw = raw[1:]
    return b"\x02" + _length(len(raw)) + raw


def _sequence(content: bytes) -> bytes:
    return b"\x30" + _length(len(content)) + content


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()]) + b"\n"
    )


def public_key_der(n: int, e: int) -> bytes:
    """SubjectPublicKeyInfo { rsaEncryption, BIT STRING { RSAPublicKey { n, e } } }."""
    rsa_public = _sequence(_integer(n) + _integer(e))
    bit_string = b"\x03" + _length(len(rsa_public) + 1) + b"\x00" + rsa_public
    return _sequence(_RSA_ALGORITHM_ID + bit_string)


def _probably_prime(n: int, rounds: int = 64) -> bool:
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        a = 2 + secrets.randbelow(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        # Top two bits set: the product of two such primes has exactly 2 * bits bits.
        candidate = secrets.randbits(bits) | (0b11 << (bits - 2)) | 1
        if (candidate - 1) % _E and _probably_prime(candidate):
            return candidate


def generate_rsa(bits: int = 2048) -> RsaKey:
    """A fresh RSA key (RFC 8301 §3.2: DKIM signers MUST use at least 1024 bits, SHOULD 2048)."""
    if bits < 1024 or bits % 2:
        raise ValueError("bits must be an even number >= 1024")
    half = bits // 2
    while True:
        p, q = _prime(half), _prime(half)
        if abs(p - q) <= 1 << (half - 100):
            continue
        n = p * q
        if n.bit_length() != bits:
            continue
        d = pow(_E, -1, (p - 1) * (q - 1))
        if d.bit_length() <= half:  # FIPS 186-5 A.1.1: d > 2**(nlen/2)
            continue
        p, q = max(p, q), min(p, q)
        return RsaKey(n=n, e=_E, d=d, p=p, q=q)


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
