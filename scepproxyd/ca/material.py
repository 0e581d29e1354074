"""The built-in CA's key material: made on first start, imported once, or loaded.

Runs before the reactor (from the tap's ``prepare_state``), so a missing or
unreadable key stops the daemon with a message naming the file, not a
half-working CA. Private keys are written unencrypted with mode 0600, like
the other secrets in the state directory: the daemon must start unattended.

A micromdm ``scepserver`` depot's ``ca.key`` is a legacy ("traditional")
PEM encrypted with 3DES even when its password is empty; ``cryptography``
refuses an empty password for those, so that format is decrypted here with
the same OpenSSL key derivation (EVP_BytesToKey, MD5, one round).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import secrets
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from scepproxyd.files import loose_mode_advice, truncated_file_advice
from scepproxyd.keys import KeyFileError, create_private, load_or_create_token

#: The RA's files sit next to the CA key; named here, not configured, to keep [ca] short.
RA_KEY_NAME = "ra.key"
RA_CERTIFICATE_NAME = "ra.pem"
_LEGACY_PEM = re.compile(
    rb"-----BEGIN (?P<label>[A-Z ]+PRIVATE KEY)-----\r?\n(?P<headers>(?:[A-Za-z-]+:[^\n]*\r?\n)+)\r?\n"
    rb"(?P<body>[A-Za-z0-9+/=\r\n]+)-----END (?P=label)-----"
)
# DEK-Info cipher name -> (algorithm factory, key length in bytes).
_LEGACY_CIPHERS = {
    "DES-EDE3-CBC": (TripleDES, 24),
    "AES-128-CBC": (algorithms.AES, 16),
    "AES-192-CBC": (algorithms.AES, 24),
    "AES-256-CBC": (algorithms.AES, 32),
}


@attrs.frozen
class CaMaterial:
    """The CA's key and certificate, and the optional RA that decrypts requests and signs answers."""

    key: rsa.RSAPrivateKey = attrs.field(repr=False)
    certificate: x509.Certificate
    ra_key: rsa.RSAPrivateKey | None = attrs.field(default=None, repr=False)
    ra_certificate: x509.Certificate | None = None

    @property
    def message_key(self):
        """The key that decrypts requests and signs CertReps: the RA's if there is one."""
        return self.ra_key if self.ra_key is not None else self.key

    @property
    def message_certificate(self) -> x509.Certificate:
        return self.ra_certificate if self.ra_certificate is not None else self.certificate


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


#: What to do about an empty CA (or RA) key or certificate file.
PAIR_REMEDY = (
    "If this CA never issued a certificate (its first start failed), delete the key and its certificate and "
    "start again; otherwise restore both from a backup (scepproxyctl restore)."
)


def _write_pair(key_path: Path, key, cert_path: Path, cert) -> None:
    """Write a new key and its certificate (each atomically); a failed second write takes the first back.

    So a first start on a full disk leaves neither, and the next start makes both.
    """
    create_private(key_path, _key_pem(key))
    try:
        create_private(cert_path, _cert_pem(cert))
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise


def _refuse_empty(path: Path, what: str) -> None:
    advice = truncated_file_advice(path, what, PAIR_REMEDY)
    if advice is not None:
        raise KeyFileError(advice)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _evp_bytes_to_key(password: bytes, salt: bytes, length: int) -> bytes:
    """OpenSSL's legacy PEM key derivation: MD5 chained over password and salt, one round."""
    derived, block = b"", b""
    while len(derived) < length:
        block = hashlib.md5(block + password + salt).digest()
        derived += block
    return derived[:length]


def decrypt_legacy_pem(data: bytes, password: bytes):
    """
    A key from a ``Proc-Type: 4,ENCRYPTED`` PEM, or None when ``data`` is not one.

    Raises ValueError when it is one but the password is wrong or the
    cipher unknown (a wrong password shows up as bad padding or bad DER).
    """
    match = _LEGACY_PEM.search(data)
    if match is None:
        return None
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in match.group("headers").splitlines() if line)
    )
    if b"encrypted" not in headers.get(b"proc-type", b"").lower():
        return None
    cipher_name, _, iv_hex = headers.get(b"dek-info", b"").decode("ascii", "replace").partition(",")
    if cipher_name not in _LEGACY_CIPHERS:
        raise ValueError("encrypted with %s, which is not supported (use DES-EDE3-CBC or AES-*-CBC)" % (cipher_name,))
    algorithm, key_length = _LEGACY_CIPHERS[cipher_name]
    try:
        iv = binascii.unhexlify(iv_hex)
        body = base64.b64decode(match.group("body"))
    except (binascii.Error, ValueError):
        raise ValueError("the PEM's DEK-Info or body is damaged") from None
    key = _evp_bytes_to_key(password, iv[:8], key_length)
    decryptor = Cipher(algorithm(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithm.block_size).unpadder()
    try:
        der = unpadder.update(padded) + unpadder.finalize()
        return serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise ValueError("wrong password, or the key is damaged") from None


def load_private_key(path: Path, password: bytes | None = None):
    """An RSA private key from PEM or DER, encrypted or not; KeyFileError names the file and problem."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError("cannot read CA key %s: %s" % (path, e.strerror or e)) from None
    attempts = [password] if password is not None else [None, b""]
    problem = "not a PEM or DER private key"
    for attempt in attempts:
        try:
            if data.lstrip().startswith(b"-----"):
                key = serialization.load_pem_private_key(data, password=attempt)
            else:
                key = serialization.load_der_private_key(data, password=attempt)
            break
        except TypeError:
            problem = "the key is encrypted; give its password in [ca] import_key_password_file"
        except ValueError as e:
            problem = str(e) or problem
    else:
        try:
            key = decrypt_legacy_pem(data, password or b"")
        except ValueError as e:
            raise KeyFileError("cannot load CA key %s: %s" % (path, e)) from None
        if key is None:
            raise KeyFileError("cannot load CA key %s: %s" % (path, problem))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("CA key %s is not an RSA key; SCEP needs RSA to encrypt to the CA" % (path,))
    return key


def load_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError("cannot read CA certificate %s: %s" % (path, e.strerror or e)) from None
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise KeyFileError("%s is not a PEM or DER X.509 certificate" % (path,)) from None


def _check_pair(key, cert: x509.Certificate, key_path: Path, cert_path: Path) -> None:
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise KeyFileError("CA key %s does not belong to certificate %s" % (key_path, cert_path))


def _ca_key_usage(*, signs_messages: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signs_messages, content_commitment=False, key_encipherment=signs_messages,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def create_ca(subject: str, key_size: int, lifetime: float, *, signs_messages: bool = True):
    """A new RSA key and a self-signed CA certificate for it (SHA-256)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name.from_rfc4514_string(subject)
    now = _utcnow()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(signs_messages=signs_messages), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def create_ra(ca_key, ca_cert: x509.Certificate):
    """
    An RA key and certificate signed by the CA, valid as long as the CA.

    Key usage covers both of its jobs: clients encrypt their requests to it
    (keyEncipherment) and verify the CertReps it signs (digitalSignature).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=ca_key.key_size)
    cn = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = cn[0].value if cn else "scepproxyd CA"
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "%s RA" % (base,))]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca_cert, ca_key), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _aki(ca_cert, ca_key) -> x509.AuthorityKeyIdentifier:
    """The CA's own SKI when it has one (an imported CA may compute it differently), else from its key."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())


def _check_private_mode(path: Path) -> None:
    advice = loose_mode_advice(path)
    if advice is not None:
        raise KeyFileError(advice)


def _import(settings) -> tuple:
    password = None
    if settings.import_key_password_file is not None:
        try:
            password = settings.import_key_password_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise KeyFileError(
                "cannot read %s ([ca] import_key_password_file): %s" % (settings.import_key_password_file, e.strerror)
            ) from None
    key = load_private_key(settings.import_key, password)
    cert = load_certificate(settings.import_certificate)
    _check_pair(key, cert, settings.import_key, settings.import_certificate)
    return key, cert


def prepare_ca_material(settings) -> CaMaterial:
    """
    Make sure the CA's files exist (create or import them on first start) and load them.

    ``settings`` is the config's CASettings. Existing files always win: an
    import happens once, into ``key_file``/``certificate_file``, and is
    not repeated while those exist. The RA is made on the first start with
    ``ra = yes`` and kept from then on.
    """
    key_path, cert_path = settings.key_file, settings.certificate_file
    if not key_path.exists() and not cert_path.exists():
        if settings.import_key is not None:
            key, cert = _import(settings)
        else:
            key, cert = create_ca(settings.subject, settings.key_size, settings.lifetime)
        _write_pair(key_path, key, cert_path, cert)
    elif not key_path.exists() or not cert_path.exists():
        missing = key_path if not key_path.exists() else cert_path
        raise KeyFileError("%s is missing but its partner exists; restore it from the backup" % (missing,))
    _refuse_empty(key_path, "the CA key")
    _refuse_empty(cert_path, "the CA certificate")
    load_or_create_token(settings.challenge_file)
    if settings.ra:
        ra_key_path, ra_cert_path = key_path.with_name(RA_KEY_NAME), key_path.with_name(RA_CERTIFICATE_NAME)
        _refuse_empty(ra_key_path, "the RA key")
        _refuse_empty(ra_cert_path, "the RA certificate")
        if not ra_key_path.exists():
            ca_key = load_private_key(key_path)
            ra_key, ra_cert = create_ra(ca_key, load_certificate(cert_path))
            _write_pair(ra_key_path, ra_key, ra_cert_path, ra_cert)
    return load_ca_material(settings)


def load_ca_material(settings) -> CaMaterial:
    """Load the CA (and RA) files that ``prepare_ca_material`` made; checks modes and key/cert pairs."""
    key_path, cert_path = settings.key_file, settings.certificate_file
    _check_private_mode(key_path)
    key, cert = load_private_key(key_path), load_certificate(cert_path)
    _check_pair(key, cert, key_path, cert_path)
    if not settings.ra:
        return CaMaterial(key, cert)
    ra_key_path, ra_cert_path = key_path.with_name(RA_KEY_NAME), key_path.with_name(RA_CERTIFICATE_NAME)
    _check_private_mode(ra_key_path)
    ra_key, ra_cert = load_private_key(ra_key_path), load_certificate(ra_cert_path)
    _check_pair(ra_key, ra_cert, ra_key_path, ra_cert_path)
    return CaMaterial(key, cert, ra_key, ra_cert)


def read_static_challenge(settings) -> str:
    """The static challenge (made on first start, mode 0600); never logged, never shown by the API."""
    return load_or_create_token(settings.challenge_file)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated hex, as openssl and scepclient show it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def new_serial() -> int:
    """A random positive 128-bit serial number (RFC 5280 allows up to 20 octets)."""
    return secrets.randbits(128) or 1
