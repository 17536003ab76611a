"""The server-side TLS context our listeners share (SMTP STARTTLS, the SMPP listener). Stdlib only,
so both adapters use it without importing each other."""

from __future__ import annotations

import ssl

__all__ = ["server_context"]


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """From a PEM certificate chain and its key: TLS 1.2 or newer, no client certificates asked for
    (a listener cannot know its peers' CAs). Raises OSError / ssl.SSLError when they cannot load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
