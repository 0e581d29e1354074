"""RA mode's pieces that are not the request flow: the RA identity and what an upstream CA offers.

An RA identity is a key and a certificate per CA integration. The key is
made here, sealed with the daemon's secrets key for the database (so every
node sharing the database and the secrets key holds the same RA, and a copy
of the database alone holds no usable key), and never logged or answered.
Its certificate is either enrolled from the upstream CA over SCEP when the
integration is saved, so it chains to that CA, or self-signed; see
docs/ra-mode.md for what each means to devices.

CPU-heavy work (key generation, signing, parsing) runs in threads; the
callers here pass ``run_in_thread``.
"""

from __future__ import annotations

import datetime
import hashlib

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.internet import threads

from scepproxyd.scep import codec
from scepproxyd.scep.upstream import UpstreamError

#: What the proxy offers devices for a CA in RA mode: what its own codec reads and writes, whatever the CA speaks.
RA_CAPS = b"POSTPKIOperation\nRenewal\nSHA-1\nSHA-256\nSHA-384\nSHA-512\nAES\nDES3\nSCEPStandard\n"
RA_KEY_BITS = 2048
RA_VALIDITY_DAYS = 5 * 365
#: The two ways to get an RA certificate (the admin API's ``ra_certificate``).
RA_CERTIFICATE_SOURCES = ("enroll", "self-signed")


class RaIdentityError(Exception):
    """No RA identity could be made; ``str()`` says why, for the admin (never a secret)."""


@attrs.frozen
class RaIdentity:
    key: rsa.RSAPrivateKey = attrs.field(repr=False)
    certificate: x509.Certificate
    enrolled: bool

    def sealed(self, cipher) -> tuple[bytes, bytes]:
        """``(sealed key, certificate DER)`` for the store."""
        der = self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cipher.seal_ra_key(der), self.certificate.public_bytes(serialization.Encoding.DER)


def load_identity(cipher, key_ciphertext: bytes, certificate_der: bytes, enrolled: bool) -> RaIdentity:
    """The RA identity kept for a CA (keys.KeyFileError if the secrets key was replaced)."""
    key = serialization.load_der_private_key(cipher.open_ra_key(key_ciphertext), None)
    return RaIdentity(key, x509.load_der_x509_certificate(certificate_der), enrolled)


def ra_subject(ca_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scepproxyd"),
        x509.NameAttribute(NameOID.COMMON_NAME, ("scepproxyd RA for %s" % (ca_name,))[:64]),
    ])


def _self_signed(key, subject: x509.Name, now: datetime.datetime) -> x509.Certificate:
    """A self-signed RA certificate: it signs and decrypts SCEP messages, nothing else."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=RA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def make_self_signed(ca_name: str) -> RaIdentity:
    """A new key and a self-signed certificate for it (run in a thread: RSA key generation)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RA_KEY_BITS)
    now = datetime.datetime.now(datetime.timezone.utc)
    return RaIdentity(key, _self_signed(key, ra_subject(ca_name), now), False)


# -- what the upstream CA offers -------------------------------------------------------


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return certificate.issuer == certificate.subject  # an old self-signed root without extensions


def _encrypts(certificate: x509.Certificate) -> bool:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_encipherment


@attrs.frozen
class UpstreamView:
    """An upstream CA as the RA talks to it: whom to encrypt to, whom to trust, and which algorithms."""

    #: The certificate requests are encrypted to (the CA's own RA, else its CA certificate).
    recipient: x509.Certificate
    #: The CA certificates in its GetCACert answer: a CertRep must be signed by one or by a certificate one issued.
    ca_certificates: tuple
    content_encryption: str
    digest_algorithm: str
    use_post: bool
    #: The proxy's digest of this view's source, so a changed GetCACert answer makes a new view.
    source: bytes = attrs.field(repr=False)


def read_upstream(caps_body: bytes | None, cert_body: bytes) -> UpstreamView:
    """The UpstreamView for a CA's GetCACaps and GetCACert answers; RaIdentityError if unusable."""
    certificates = []
    for der in codec.ca_certificates(cert_body):
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    authorities = tuple(c for c in certificates if _is_ca(c))
    if not authorities:
        raise RaIdentityError("the CA's GetCACert answer holds no CA certificate")
    others = [c for c in certificates if not _is_ca(c) and _encrypts(c)]
    recipient = others[0] if others else authorities[0]
    if not isinstance(recipient.public_key(), rsa.RSAPublicKey):
        raise RaIdentityError("the CA's encryption certificate has no RSA key; SCEP needs one")
    caps = {line.strip().lower() for line in (caps_body or b"").split(b"\n")}
    if b"aes" in caps:
        encryption = "aes128"  # RFC 8894: "AES" is AES-128-CBC; every AES-speaking CA reads it
    elif b"des3" in caps:
        encryption = "des3"
    else:
        encryption = "des"
    digest = "sha256" if b"sha-256" in caps else "sha1"
    return UpstreamView(recipient, authorities, encryption, digest, b"postpkioperation" in caps,
                        hashlib.sha256((caps_body or b"") + b"\0" + cert_body).digest())


def device_ca_certificates(identity: RaIdentity, view: UpstreamView) -> bytes:
    """GetCACert through the proxy in RA mode: the RA certificate first, then the upstream CA's certificates."""
    return codec.degenerate_certificates([identity.certificate, *view.ca_certificates])


def issued_to(certificates: list, csr: x509.CertificateSigningRequest) -> x509.Certificate | None:
    """The certificate in a CertRep that carries the CSR's public key (a CA may add its chain)."""
    wanted = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for certificate in certificates:
        if not isinstance(certificate, x509.Certificate):
            continue
        have = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if have == wanted:
            return certificate
    return None


def read_answer(body: bytes, identity: RaIdentity, view: UpstreamView):
    """
    Verify and open a CertRep the upstream CA sent the RA: ``(pkiStatus, failInfo, certificates)``.

    The signer must be one of the CA certificates, or a certificate one of
    them issued (the CA's own RA); codec.MessageError otherwise.
    """
    last = None
    for authority in view.ca_certificates:
        try:
            return codec.read_response(body, identity.key, identity.certificate, authority)
        except codec.MessageError as e:
            last = e
            if "signer" not in str(e):
                raise
    raise last


# -- enrollment of the RA itself ---------------------------------------------------------


def _enrollment_request(ca_name: str, challenge: str | None, view: UpstreamView):
    key = rsa.generate_private_key(public_exponent=65537, key_size=RA_KEY_BITS)
    subject = ra_subject(ca_name)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if challenge:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    csr = builder.sign(key, hashes.SHA256())
    stand_in = _self_signed(key, subject, datetime.datetime.now(datetime.timezone.utc))
    message, header = codec.build_request(
        message_type="PKCSReq", signer_key=key, signer_certificate=stand_in, recipient_certificate=view.recipient,
        csr=csr, content_encryption=view.content_encryption, digest_algorithm=view.digest_algorithm,
    )
    return key, csr, stand_in, message


async def upstream_view(upstream, ca_url: str) -> UpstreamView:
    """Ask the CA for its caps and certificates (UpstreamError if it does not answer, RaIdentityError if unusable)."""
    caps = await upstream.get_ca_caps(ca_url)
    certs = await upstream.get_ca_cert(ca_url)
    if certs.status != 200:
        raise RaIdentityError("the CA answered GetCACert with HTTP %d" % (certs.status,))
    return read_upstream(caps.body if caps.status == 200 else None, certs.body)


async def enroll(upstream, ca_name: str, ca_url: str, challenge: str | None, run_in_thread=threads.deferToThread
                 ) -> RaIdentity:
    """
    Enroll a new RA key with the upstream CA over SCEP, signed by a stand-in self-signed certificate.

    ``challenge`` is the CA integration's static challenge (the CSR's
    challengePassword). RaIdentityError says why the CA gave no
    certificate: it refused, answered PENDING (approve it there and save
    again), or could not be reached.
    """
    try:
        view = await upstream_view(upstream, ca_url)
        key, csr, stand_in, message = await run_in_thread(_enrollment_request, ca_name, challenge, view)
        answer = await upstream.pki_operation(ca_url, message, view.use_post)
    except UpstreamError as e:
        raise RaIdentityError("the CA could not be asked for an RA certificate: %s" % (e.reason,)) from None
    if answer.status != 200:
        raise RaIdentityError("the CA answered the RA's enrollment with HTTP %d" % (answer.status,))
    stand_in_identity = RaIdentity(key, stand_in, False)
    try:
        status, fail_info, certificates = await run_in_thread(read_answer, answer.body, stand_in_identity, view)
    except codec.MessageError as e:
        raise RaIdentityError("the CA's answer to the RA's enrollment is unusable: %s" % (e,)) from None
    if status == "FAILURE":
        raise RaIdentityError("the CA refused the RA's enrollment (failInfo %s); check the CA's challenge"
                              % (fail_info or "none",))
    if status == "PENDING":
        raise RaIdentityError("the CA answered PENDING to the RA's enrollment; approve it at the CA and save "
                              "again, or use ra_certificate self-signed")
    certificate = issued_to(certificates, csr)
    if certificate is None:
        raise RaIdentityError("the CA's answer to the RA's enrollment holds no certificate for the RA's key")
    return RaIdentity(key, certificate, True)


async def new_identity(upstream, ca_name: str, ca_url: str, challenge: str | None, source: str,
                       run_in_thread=threads.deferToThread) -> RaIdentity:
    """An RA identity from ``source`` (one of RA_CERTIFICATE_SOURCES)."""
    if source == "self-signed":
        return await run_in_thread(make_self_signed, ca_name)
    return await enroll(upstream, ca_name, ca_url, challenge, run_in_thread)
