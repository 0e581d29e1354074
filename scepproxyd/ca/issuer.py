"""Certificates from CSRs: what the built-in CA puts in every certificate it signs.

The CSR supplies only the subject, the public key and the subjectAltName;
everything that says what the certificate may be used for (key usage,
extended key usage, validity, basicConstraints CA:false) comes from the
CA's template, so a device cannot ask for more than the operator allowed.
Which subjects, keys and names may be signed at all is csr_policy's
question, asked before building; building still refuses the CA's own
subject and names of a type the policy never allows, so no caller can
issue those by skipping it. A certificate never outlives the CA that signed it.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from scepproxyd.ca import csr_policy
from scepproxyd.ca.material import new_serial

_EKU_OIDS = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "ipsec_ike": ExtendedKeyUsageOID.IPSEC_IKE,
}
_KEY_TYPES = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


class CsrError(ValueError):
    """A CSR the CA will not sign; ``str()`` is the reason given to the device (failInfoText)."""


def serial_hex(serial: int) -> str:
    """Serials as scepproxyd shows and stores them everywhere: lowercase hex."""
    return "%x" % (serial,)


def check_csr(csr: x509.CertificateSigningRequest, signature_verified: bool = False) -> None:
    """
    Refuse CSRs that are not signed by their own key or carry a key type we do not sign.

    ``signature_verified``: the SCEP codec has checked the signature over
    the bytes the client sent; a CSR it re-encoded from BER (strongSwan's
    unsorted attributes) keeps a signature that does not cover the re-encoding.
    """
    try:
        valid = signature_verified or csr.is_signature_valid
    except Exception:  # unsupported signature algorithms raise from inside cryptography
        valid = False
    if not valid:
        raise CsrError("CSR signature does not verify")
    if not isinstance(csr.public_key(), _KEY_TYPES):
        raise CsrError("CSR public key type is not supported")
    if not len(csr.subject):
        raise CsrError("CSR subject is empty")


def _key_usage(names) -> x509.KeyUsage:
    flags = {name: name in names for name in (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
    )}
    return x509.KeyUsage(key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False, **flags)


def _requested_san(csr: x509.CertificateSigningRequest):
    """The CSR's subjectAltName to copy; refuses one csr_policy would have refused for its form."""
    try:
        extensions = csr_policy.requested_extensions(csr)
        csr_policy.requested_sans(extensions)
    except csr_policy.Refused as refused:
        raise CsrError(refused.reason) from None
    try:
        return extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def authority_key_identifier(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """
    The AKI pointing at the CA: its own SKI when it has one.

    An imported CA may have computed its SKI differently from RFC 5280's
    method 1 (micromdm scepserver does), and verifiers match AKI to SKI
    byte for byte, so the SKI is copied, never recomputed.
    """
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_certificate.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_certificate(
    csr: x509.CertificateSigningRequest,
    ca_key,
    ca_certificate: x509.Certificate,
    template,
    crl_url: str,
    now: float,
    serial: int | None = None,
) -> x509.Certificate:
    """
    Sign ``csr`` under ``template`` (a config CertificateTemplate) at time ``now`` (epoch seconds).

    The caller has checked the CSR (``check_csr``) and the policy
    (``csr_policy.refusal``), so every subjectAltName in it is allowed and
    is copied. Raises L{CsrError} for a subject equal to the CA's or a
    name of a type that is never issued. Validity runs from ``now`` for the
    template's validity, cut at the CA's own expiry.
    """
    if csr_policy.same_name(csr.subject, ca_certificate.subject):
        raise CsrError(csr_policy.CA_SUBJECT)
    san = _requested_san(csr)
    start = datetime.datetime.fromtimestamp(int(now), datetime.timezone.utc)
    end = min(start + datetime.timedelta(seconds=template.validity), ca_certificate.not_valid_after_utc)
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_certificate.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else new_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(ca_certificate), critical=False)
        .add_extension(
            x509.CRLDistributionPoints([
                x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
            ]),
            critical=False,
        )
    )
    if template.key_usage:
        builder = builder.add_extension(_key_usage(template.key_usage), critical=True)
    if template.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([_EKU_OIDS[name] for name in template.extended_key_usage]), critical=False
        )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())
