"""DICOM over TLS (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile", with the BCP 195
profiles of PS3.15 B.9/B.10): TLS 1.2 or newer, forward-secret AEAD cipher suites only.

Two contexts are built here, both from settings already validated by node.config:
- :func:`server_context` for the SCP's TLS port: the node's certificate and key; with ``client_ca``
  a client certificate signed by that CA is required (PS3.15 B.1 peer authentication).
- :func:`client_context` for a C-STORE SCU towards a destination with ``tls = true``: the
  destination's certificate is verified against ``tls_ca`` (system CAs when not set), optionally
  with a client certificate of our own.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# RFC 9325 (BCP 195) 4.2: ECDHE/DHE key exchange with AES-GCM or ChaCha20-Poly1305. TLS 1.3 suites
# (all of them AEAD with forward secrecy) are enabled by OpenSSL separately and stay on.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
])


class TLSSetupError(Exception):
    """A certificate, key or CA file cannot be used; the message names the config key."""


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path, key_name: str) -> None:
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=str(private_key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"{key_name}: cannot load certificate {certificate} with key {private_key}: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca_file: Path, key_name: str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"{key_name}: cannot load CA certificates from {ca_file}: {exc}") from None


def server_context(certificate: Path, private_key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The SCP's context; ``client_ca`` set means a client certificate from that CA is required."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, certificate, private_key, "node.tls.certificate / node.tls.private_key")
    if client_ca is not None:
        _load_ca(context, client_ca, "node.tls.client_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file: Path | None, certificate: Path | None, private_key: Path | None,
                   verify_hostname: bool, key_prefix: str) -> ssl.SSLContext:
    """An SCU's context: the server is always verified (``ca_file``, else the system CAs)."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if ca_file is not None:
        _load_ca(context, ca_file, f"{key_prefix}.tls_ca")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if certificate is not None:
        _load_chain(context, certificate, private_key or certificate, f"{key_prefix}.tls_certificate")
    return context
