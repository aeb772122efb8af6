"""TLS for the QUIC handshake: a throwaway self-signed certificate and the qh3 config.

No certificate is validated here: nodes authenticate each other above this layer
(auth.py), binding that proof to the server certificate's fingerprint so that a relay in
the middle cannot splice two TLS sessions.
"""

from __future__ import annotations

import datetime
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qh3.quic.configuration import QuicConfiguration

from .settings import ALPN, CID_LENGTH, TransportSettings


def make_self_signed_cert(common_name: str = "mesh-llm") -> tuple[bytes, bytes]:
    """A throwaway (PEM certificate, PEM PKCS#8 key) pair on P-256 for the QUIC handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def cert_der(cert_pem: bytes) -> bytes:
    """The DER bytes of a PEM certificate: what the peer sees and fingerprints."""
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


def base_config(settings: TransportSettings, is_client: bool) -> QuicConfiguration:
    """One side's qh3 configuration: our ALPN, windows, idle timeout; no verification."""
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=settings.idle_timeout_s,
        max_data=settings.connection_window,
        max_stream_data=settings.stream_window,
        connection_id_length=CID_LENGTH,
        verify_mode=ssl.CERT_NONE,
        verify_hostname=False,
    )
