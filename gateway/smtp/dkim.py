"""DKIM signing with dkimpy (RFC 6376): rsa-sha256, relaxed/relaxed, optional ed25519-sha256 (RFC 8463).

- ``d=`` is ``[smtp] mail_domain``, the domain of our From addresses, so the signature aligns for
  DMARC (RFC 7489 §3.1.1). Signed header fields (RFC 6376 §5.4): the ones that say who, to whom,
  what and when, plus the MIME structure. Fields named in ``h=`` but absent (In-Reply-To on a first
  message, Content-Transfer-Encoding on a multipart one) are signed as empty, so nobody can add them
  later (§5.4.2). From, Reply-To, To and Subject are *oversigned* (named once more than they
  occur, §8.15): a second From added on the way breaks the signature instead of being displayed.
- With an ed25519 key configured, a second DKIM-Signature (its own selector, RFC 8463 §3) is added
  below the RSA one; verifiers that know ed25519 use either, the others ignore it (§4). dkimpy signs
  ed25519 through PyNaCl, dkimpy's optional dependency; without it an ed25519 key is refused at start.
- Speed: dkimpy computes the RSA private-key operation in pure Python (~7 ms per 2048-bit signature
  on the development machine, a hard ceiling of ~140 signed messages/s per core). When OpenSSL 3's
  libcrypto can be loaded (the library Python's own ``ssl`` module links), that one step is done by
  ``EVP_PKEY_sign`` instead, for the keys this module loaded, everything else staying dkimpy's.
  RSASSA-PKCS1-v1_5 is deterministic, so the bytes are identical either way (a test compares them),
  and ctypes releases the GIL during the call, so signing in a worker thread (gateway.smtp.relay
  does) runs beside the loop. With it a signature costs ~0.4 ms, most of it dkimpy's own work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
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


# --- libcrypto (OpenSSL 3) for the RSA step ----------------------------------------------------

_RSA_PKCS1_PADDING = 1


class _LibCrypto:
    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self.lib = lib
        for name, res, args in (
            ("BIO_new_mem_buf", p, [p, i]),
            ("BIO_free", i, [p]),
            ("PEM_read_bio_PrivateKey", p, [p, p, p, p]),
            ("EVP_PKEY_free", None, [p]),
            ("EVP_PKEY_get_size", i, [p]),
            ("EVP_PKEY_CTX_new", p, [p, p]),
            ("EVP_PKEY_CTX_free", None, [p]),
            ("EVP_PKEY_sign_init", i, [p]),
            ("EVP_PKEY_CTX_set_rsa_padding", i, [p, i]),
            ("EVP_PKEY_CTX_set_signature_md", i, [p, p]),
            ("EVP_sha256", p, []),
            ("EVP_PKEY_sign", i, [p, p, ctypes.POINTER(sz), p, sz]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        self.sha256 = lib.EVP_sha256()

    def load_private_key(self, pem: bytes) -> int | None:
        buf = ctypes.create_string_buffer(pem, len(pem))
        bio = self.lib.BIO_new_mem_buf(buf, len(pem))
        if not bio:
            return None
        try:
            key = self.lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        finally:
            self.lib.BIO_free(bio)
        return int(key) if key else None

    def sign_sha256(self, key: int, digest: bytes) -> bytes:
        lib = self.lib
        ctx = lib.EVP_PKEY_CTX_new(key, None)
        if not ctx:
            raise RuntimeError("EVP_PKEY_CTX_new failed")
        try:
            if (
                lib.EVP_PKEY_sign_init(ctx) <= 0
                or lib.EVP_PKEY_CTX_set_rsa_padding(ctx, _RSA_PKCS1_PADDING) <= 0
                or lib.EVP_PKEY_CTX_set_signature_md(ctx, self.sha256) <= 0
            ):
                raise RuntimeError("EVP_PKEY_sign_init failed")
            size = ctypes.c_size_t(lib.EVP_PKEY_get_size(key))
            out = ctypes.create_string_buffer(size.value)
            if lib.EVP_PKEY_sign(ctx, out, ctypes.byref(size), digest, len(digest)) <= 0:
                raise RuntimeError("EVP_PKEY_sign failed")
            return out.raw[: size.value]
        finally:
            lib.EVP_PKEY_CTX_free(ctx)


def _load_libcrypto() -> _LibCrypto | None:
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        version_num = lib.OpenSSL_version_num
        version_num.restype = ctypes.c_ulong
        if version_num() < 0x30000000:  # the EVP_PKEY_CTX_set_* functions are macros before 3.0
            return None
        return _LibCrypto(lib)
    except (OSError, AttributeError):
        return None


_libcrypto: _LibCrypto | None = None
_libcrypto_loaded = False
_fast_keys: dict[int, int] = {}  # RSA modulus -> EVP_PKEY*
_patch_lock = threading.Lock()
_original_sign: Callable[[Any, dict[str, Any]], Any] = dkim.RSASSA_PKCS1_v1_5_sign


def openssl_available() -> bool:
    global _libcrypto, _libcrypto_loaded
    with _patch_lock:
        if not _libcrypto_loaded:
            _libcrypto = _load_libcrypto()
            _libcrypto_loaded = True
    return _libcrypto is not None


def _rsassa_sign(hash_: Any, private_key: dict[str, Any]) -> Any:
    """Stands in for dkimpy's RSASSA_PKCS1_v1_5_sign: our keys via libcrypto, others unchanged."""
    key = _fast_keys.get(private_key.get("modulus", 0))
    if key is not None and _libcrypto is not None and getattr(hash_, "name", "").lower() == "sha256":
        return _libcrypto.sign_sha256(key, hash_.digest())
    return _original_sign(hash_, private_key)


def _register_fast_key(pem: bytes, modulus: int) -> bool:
    if not openssl_available() or _libcrypto is None:
        return False
    with _patch_lock:
        if modulus not in _fast_keys:
            key = _libcrypto.load_private_key(pem)
            if key is None:
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
