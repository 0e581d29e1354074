"""Certificates and CMS blobs made in tests (never shipped, never a real CA)."""

import datetime
import secrets

from asn1crypto import core
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AttributeOID, NameOID

UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


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


# -- certificate requests ----------------------------------------------------------


def name(*rdns) -> x509.Name:
    """A Name from RDNs in encoding order, each a list of (OID or dotted string, value) pairs."""
    def oid(o):
        return o if isinstance(o, x509.ObjectIdentifier) else x509.ObjectIdentifier(o)

    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid(o), v) for o, v in rdn])
                      for rdn in rdns])


def upn(value: str) -> x509.OtherName:
    """A Microsoft UPN subjectAltName (otherName 1.3.6.1.4.1.311.20.2.3, UTF8String)."""
    return x509.OtherName(UPN_OID, core.UTF8String(value).dump())


def csr(key, subject, sans=None, extensions=(), challenge: str | None = None) -> x509.CertificateSigningRequest:
    """A CSR signed by ``key``; ``subject`` a Name or a CN string; ``extensions`` (value, critical) pairs;
    ``challenge`` its challengePassword attribute."""
    if isinstance(subject, str):
        subject = name([(NameOID.COMMON_NAME, subject)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    digest = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
    return builder.sign(key, digest)


def _probable_prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if all(_miller_rabin(candidate, secrets.randbelow(candidate - 3) + 2) for _ in range(32)):
            return candidate


def _miller_rabin(n: int, a: int) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    x = pow(a, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(r - 1):
        x = pow(x, 2, n)
        if x == n - 1:
            return True
    return False


def weak_rsa_key(bits: int, exponent: int = 65537) -> rsa.RSAPrivateKey:
    """An RSA key of any size and exponent, including those cryptography refuses to generate (512 bits)."""
    while True:
        p, q = _probable_prime(bits // 2), _probable_prime(bits - bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and (p * q).bit_length() == bits and phi % exponent and (phi // exponent) % exponent:
            try:
                d = pow(exponent, -1, phi)
            except ValueError:
                continue
            public = rsa.RSAPublicNumbers(exponent, p * q)
            return rsa.RSAPrivateNumbers(
                p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q), public
            ).private_key()


def extension_der(value: x509.ExtensionType, critical: bool = False) -> bytes:
    """One Extension, DER, as it sits in a CSR's extension request."""
    key = ed25519.Ed25519PrivateKey.generate()
    request = asn1_csr.CertificationRequest.load(
        csr(key, "x", extensions=[(value, critical)]).public_bytes(serialization.Encoding.DER)
    )
    attribute = request["certification_request_info"]["attributes"][0]
    return attribute["values"][0][0].dump()


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def raw_csr(key: rsa.RSAPrivateKey, subject: x509.Name, extension_requests) -> x509.CertificateSigningRequest:
    """
    A CSR cryptography's builder will not make, DER written by hand:
    ``extension_requests`` is a list of (attribute OID, [Extension DER, ...]),
    each becoming one attribute, so an extension may be repeated and the
    extension request given twice or under Microsoft's OID.
    """
    attributes = b"".join(
        _tlv(0x30, core.ObjectIdentifier(oid).dump() + _tlv(0x31, _tlv(0x30, b"".join(extensions))))
        for oid, extensions in extension_requests
    )
    info = _tlv(0x30, core.Integer(0).dump() + subject.public_bytes() + key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) + _tlv(0xA0, attributes))
    signature = key.sign(info, padding.PKCS1v15(), hashes.SHA256())
    algorithm = asn1_x509.SignedDigestAlgorithm({"algorithm": "sha256_rsa"}).dump()
    return x509.load_der_x509_csr(_tlv(0x30, info + algorithm + core.BitString.load(
        _tlv(0x03, b"\x00" + signature)).dump()))


class PrivateCA:
    """A CA made in the test, and server certificates it signs."""

    def __init__(self, directory):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TLS Root")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / "root.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server(self, name: str, dns=("localhost",)):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / (name + ".pem"), self.directory / (name + ".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path
