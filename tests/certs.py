"""Certificates and CMS blobs made in tests (never shipped, never a real CA)."""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID


def self_signed(common_name: str = "Test CA", days: int = 30, key=None):
    """A self-signed certificate and its RSA key."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def self_signed_der(common_name: str = "Test CA") -> bytes:
    return self_signed(common_name)[0].public_bytes(serialization.Encoding.DER)


def signed_blob() -> bytes:
    """A well-formed CMS SignedData that is not a valid SCEP request."""
    cert, key = self_signed("not-a-device", days=1)
    return (
        pkcs7.PKCS7SignatureBuilder().set_data(b"hello").add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
