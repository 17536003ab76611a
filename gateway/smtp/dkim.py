"""DKIM signing with dkimpy (RFC 6376): rsa-sha256, relaxed/relaxed, optional ed25519-sha256 (RFC 8463).

- ``d=`` is ``[smtp] mail_domain``, the domain of our From addresses, so the signature aligns for
  DMARC (RFC 7489 §3.1.1). Signed header fields (RFC 6376 §5.4): the ones that say who, to whom,
  what and when, plus the MIME structure. Fields named in ``h=`` but absent (In-Reply-To on a first
  message, Content-Transfer-Encoding on a multipart one) are signed as empty, so nobody can add them
  later (§5.4.2). From, Reply-To, To and Subject are *oversigned* (named once more than they
  occur, §8.15): a second From added on the way breaks the signature instead of being displayed.
- With an ed25519 key configured, a second DKIM-Signature (its own selector, RFC 8463 §3) is added
  below the RSA one; verifiers that know ed25519 use either, the others ignore it (§4). dkimpy signs
  ed25519 through PyNaCl (one of our dependencies; should it be missing, an ed25519 key is refused at
  start rather than failing at the first message).
- Speed: dkimpy computes the RSA private-key operation in pure Python (~7 ms per 2048-bit signature
  on the development machine, a hard ceiling of ~140 signed messages/s per core). For the keys this
  module loaded, that one step is done by pyca/cryptography (OpenSSL) instead, everything else
  staying dkimpy's. RSASSA-PKCS1-v1_5 is deterministic, so the bytes are identical either way (a
  test compares them), and cryptography releases the GIL during the operation, so signing in a
  worker thread (gateway.smtp.relay does) runs beside the loop.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.crypto import parse_pem_private_key  # type: ignore[import-untyped]

from gateway.smtp.dkim_keys import dns_record, public_key_der
from gateway.smtp.errors import DkimKeyError

log = logging.getLogger(__name__)

__all__ = ["SIGNED_HEADERS", "DkimSigner", "load_signer", "openssl_available"]

SIGNED_HEADERS = (
    b"from",
    b"reply-to",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)
OVERSIGNED = (b"from", b"reply-to", b"to", b"subject")
_CANON = (b"relaxed", b"relaxed")


# --- the RSA step through pyca/cryptography (OpenSSL) ---------------------------------------------

_fast_keys: dict[int, rsa.RSAPrivateKey] = {}  # RSA modulus -> the key loaded by cryptography
_patch_lock = threading.Lock()
_original_sign: Callable[[Any, dict[str, Any]], Any] = dkim.RSASSA_PKCS1_v1_5_sign


def openssl_available() -> bool:
    """Kept for callers and tests: the fast RSA path is always there now (a hard dependency)."""
    return True


def _rsassa_sign(hash_: Any, private_key: dict[str, Any]) -> Any:
    """Stands in for dkimpy's RSASSA_PKCS1_v1_5_sign: our keys through OpenSSL, others unchanged."""
    key = _fast_keys.get(private_key.get("modulus", 0))
    if key is not None and getattr(hash_, "name", "").lower() == "sha256":
        return key.sign(hash_.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return _original_sign(hash_, private_key)


def _register_fast_key(pem: bytes, modulus: int) -> bool:
    with _patch_lock:
        if modulus not in _fast_keys:
            try:
                key = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                return False
            if not isinstance(key, rsa.RSAPrivateKey):
                return False
            _fast_keys[modulus] = key  # kept for the life of the process (one per configured key)
        dkim.RSASSA_PKCS1_v1_5_sign = _rsassa_sign
    return True


# --- the signer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    selector: bytes
    private: bytes
    algorithm: bytes


class DkimSigner:
    """Signs composed messages for ``domain``. Thread-safe (dkimpy keeps no shared state per call)."""

    def __init__(
        self,
        domain: str,
        selector: str,
        rsa_pem: bytes,
        *,
        ed25519: tuple[str, bytes] | None = None,
        use_openssl: bool = True,
    ) -> None:
        self.domain = domain.encode("ascii")
        try:
            parsed = parse_pem_private_key(rsa_pem)
        except Exception as exc:  # dkimpy raises several types for a bad key
            raise DkimKeyError("dkim.private_key_file", f"not an RSA private key in PEM: {exc}") from None
        self.modulus: int = parsed["modulus"]
        self.public_exponent: int = parsed["publicExponent"]
        if self.modulus.bit_length() < 1024:
            raise DkimKeyError(
                "dkim.private_key_file", "RSA keys under 1024 bits are refused (RFC 8301 §3.2)"
            )
        self.openssl = use_openssl and _register_fast_key(rsa_pem, self.modulus)
        self.keys = [_Key(selector.encode("ascii"), rsa_pem, b"rsa-sha256")]
        if ed25519 is not None:
            if importlib.util.find_spec("nacl") is None:  # dkimpy's optional dependency for ed25519
                raise DkimKeyError(
                    "dkim.ed25519_private_key_file", "ed25519 signing needs PyNaCl, which is not installed"
                )
            # dkimpy adds signatures on top: sign ed25519 first so the RSA signature is the topmost.
            self.keys.insert(0, _Key(ed25519[0].encode("ascii"), ed25519[1].strip(), b"ed25519-sha256"))

    def public_record(self) -> tuple[str, str]:
        """(``selector._domainkey.domain``, TXT value) of the RSA key: what DNS must publish."""
        rsa = self.keys[-1]
        return dns_record(
            rsa.selector.decode(), self.domain.decode(), public_key_der(self.modulus, self.public_exponent)
        )

    def sign(self, message: bytes) -> bytes:
        """``message`` with its DKIM-Signature header field(s) in front (RFC 6376 §3.5)."""
        include = list(SIGNED_HEADERS) + list(OVERSIGNED)
        out = message
        for key in self.keys:
            header = dkim.sign(
                message,
                key.selector,
                self.domain,
                key.private,
                canonicalize=_CANON,
                signature_algorithm=key.algorithm,
                include_headers=include,
            )
            out = header + out
        return out


def load_signer(
    *,
    domain: str,
    selector: str,
    private_key_file: str,
    ed25519_selector: str = "",
    ed25519_private_key_file: str = "",
) -> DkimSigner | None:
    """The configured signer, or None when ``[dkim] private_key_file`` is empty (mail goes unsigned).

    Raises :class:`DkimKeyError` naming the key when a file cannot be read or is not a usable key.
    A probe message is signed and verified against the key's own public part, so a broken key or
    signing path stops the daemon at start rather than producing unverifiable mail.
    """
    if not private_key_file:
        return None
    rsa_pem = _read("dkim.private_key_file", private_key_file)
    ed = None
    if ed25519_private_key_file:
        ed = (ed25519_selector, _read("dkim.ed25519_private_key_file", ed25519_private_key_file))
    signer = DkimSigner(domain, selector, rsa_pem, ed25519=ed)
    name, value = signer.public_record()
    probe = (
        f"From: probe@{domain}\r\nTo: probe@{domain}\r\nSubject: probe\r\n"
        "Message-ID: <probe@gateway>\r\n\r\nprobe\r\n"
    ).encode()

    def dns(qname: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if qname.decode().rstrip(".") == name else None

    signed = signer.sign(probe)
    # The RSA signature is the topmost one (index 0).
    if not dkim.DKIM(signed).verify(idx=0, dnsfunc=dns):
        raise DkimKeyError("dkim.private_key_file", "a probe signed with this key does not verify")
    log.info(
        "dkim signing enabled",
        extra={"selector": selector, "domain": domain, "openssl": signer.openssl, "ed25519": bool(ed)},
    )
    return signer


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DkimKeyError(key, f"cannot read {path}: {exc.strerror}") from None
