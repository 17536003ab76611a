"""DKIM keys and signatures: generated keys are valid, the OpenSSL path signs exactly like dkimpy's
own, the printed DNS record verifies what we sign, and an ed25519 second signature verifies."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dkim
import pytest

from gateway.smtp import dkim as gw_dkim
from gateway.smtp.dkim import DkimSigner, load_signer
from gateway.smtp.dkim_keys import generate_rsa, txt_record_lines
from gateway.smtp.errors import DkimKeyError

MESSAGE = (
    b"From: Serwis <serwis@mail.example.com>\r\nTo: jan@example.com\r\nSubject: Hi\r\n"
    b"Date: Tue, 24 Nov 2026 12:00:00 +0000\r\nMessage-ID: <a@b>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n\r\nHello  \r\nthere\r\n\r\n'
)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim") / "k.pem"
    path.write_bytes(generate_rsa(2048).private_pem())
    return path


def dns(signer: DkimSigner):  # type: ignore[no-untyped-def]
    name, value = signer.public_record()

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if qname.decode() == name + "." else None

    return lookup


def test_generated_key_is_valid_for_openssl(key_file: Path) -> None:
    try:
        proc = subprocess.run(
            ["openssl", "rsa", "-check", "-noout", "-in", str(key_file)], capture_output=True
        )
    except OSError:
        pytest.skip("no openssl binary")
    assert proc.returncode == 0 and b"RSA key ok" in proc.stdout


def test_signature_verifies_and_is_the_same_with_or_without_libcrypto(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dkim.time, "time", lambda: 1_795_000_000)  # same t= for both signatures
    pem = key_file.read_bytes()
    fast = DkimSigner("mail.example.com", "gw", pem)
    slow = DkimSigner("mail.example.com", "gw", pem, use_openssl=False)
    signed = fast.sign(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns(fast))
    if not fast.openssl:
        pytest.skip("libcrypto (OpenSSL 3) not loadable here: only dkimpy's own RSA runs")
    # slow is a second DkimSigner on the same key, but _fast_keys is keyed by modulus: force the
    # pure-Python path by removing the registration for the comparison.
    key = gw_dkim._fast_keys.pop(slow.modulus)
    try:
        assert slow.sign(MESSAGE) == signed
    finally:
        gw_dkim._fast_keys[slow.modulus] = key


def test_tampering_breaks_the_signature(key_file: Path) -> None:
    signer = DkimSigner("mail.example.com", "gw", key_file.read_bytes())
    signed = signer.sign(MESSAGE)
    assert not dkim.verify(signed.replace(b"there", b"thera"), dnsfunc=dns(signer))
    # From is oversigned: a second From added above breaks it (RFC 6376 §8.15).
    assert not dkim.verify(b"From: evil@example.com\r\n" + signed, dnsfunc=dns(signer))
    header = signed.split(b"\r\n\r\n")[0].decode()
    assert "a=rsa-sha256" in header and "c=relaxed/relaxed" in header and "d=mail.example.com" in header


def test_bad_keys_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(DkimKeyError) as err:
        load_signer(domain="d.example", selector="s", private_key_file=str(tmp_path / "missing.pem"))
    assert err.value.key == "dkim.private_key_file"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(DkimKeyError):
        load_signer(domain="d.example", selector="s", private_key_file=str(junk))
    assert load_signer(domain="d.example", selector="s", private_key_file="") is None


def test_ed25519_second_signature_verifies(key_file: Path) -> None:
    """RFC 8463: with an ed25519 key, a second DKIM-Signature that verifiers can check on its own."""
    import base64

    import nacl.signing

    seed = nacl.signing.SigningKey.generate()
    signer = DkimSigner(
        "mail.example.com", "gw", key_file.read_bytes(), ed25519=("gw-ed", base64.b64encode(bytes(seed)))
    )
    signed = signer.sign(MESSAGE)
    assert signed.count(b"DKIM-Signature:") == 2
    rsa_name, rsa_value = signer.public_record()
    records = {
        rsa_name + ".": rsa_value,
        "gw-ed._domainkey.mail.example.com.": "v=DKIM1; k=ed25519; p="
        + base64.b64encode(bytes(seed.verify_key)).decode(),
    }

    def lookup(qname: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(qname.decode())
        return value.encode() if value else None

    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=lookup)  # the RSA signature, topmost
    assert verifier.verify(idx=1, dnsfunc=lookup)  # the ed25519 one


def test_long_records_are_split_into_strings() -> None:
    line = txt_record_lines("s._domainkey.d", "v=DKIM1; k=rsa; p=" + "A" * 400)
    strings = line.split("( ")[1].rstrip(" )").split('" "')
    assert len(strings) == 2 and all(len(s.strip('"')) <= 255 for s in strings)
