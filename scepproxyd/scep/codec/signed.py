"""CMS SignedData (RFC 5652 section 5) as SCEP uses it: one RSA signer, signed attributes.

Verification signs over the signed attributes exactly as received, with the
universal SET tag in place of the IMPLICIT [0] (RFC 5652 section 5.4). They are
not re-sorted: some clients send them in an order DER would not, and the
signature covers what they sent.
"""

import hmac

import attrs
from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from scepproxyd.scep.codec import ber, der
from scepproxyd.scep.codec.algorithms import DIGESTS, digest, digest_hash
from scepproxyd.scep.codec.attributes import CONTENT_TYPE_OID, MESSAGE_DIGEST_OID, SignedAttributes
from scepproxyd.scep.codec.errors import MessageError

_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_RSASSA_PSS = "1.2.840.113549.1.1.10"
# sha1/224/256/384/512WithRSAEncryption: the hash itself comes from the SignerInfo.
_RSA_WITH_DIGEST = {
    "1.2.840.113549.1.1.5", "1.2.840.113549.1.1.14", "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12", "1.2.840.113549.1.1.13",
}


@attrs.frozen
class OpenedSignedData:
    """A SignedData whose signature and messageDigest have been checked."""

    content: bytes | None               # eContent octets; None when absent
    attributes: SignedAttributes
    signer_certificate: x509.Certificate
    digest_algorithm: str
    signed_data: cms.SignedData


def to_asn1_certificate(certificate) -> asn1_x509.Certificate:
    """A cryptography certificate (or DER bytes) as an asn1crypto one."""
    der = certificate if isinstance(certificate, bytes) else certificate.public_bytes(serialization.Encoding.DER)
    return asn1_x509.Certificate.load(der)


def same_name(a: asn1_x509.Name, b: asn1_x509.Name) -> bool:
    """
    RFC 5280 name equality, with the common case first: the same encoding.

    asn1crypto's own comparison normalizes every value (LDAP string prep,
    about 0.3 ms a name in pure Python) even when the two encodings are the
    same bytes, which they are whenever a peer copies our certificate's issuer.
    """
    return a.dump() == b.dump() or a == b


def universal_set(body: bytes) -> bytes:
    """``body`` under the universal SET tag: what a signature over signed attributes covers."""
    return b"\x31" + ber.length_octets(len(body)) + body


def certificate_der(certificate) -> bytes:
    """A cryptography certificate (or DER bytes) as DER."""
    return certificate if isinstance(certificate, bytes) else certificate.public_bytes(serialization.Encoding.DER)


def _implicit_certificates(number: int, certificates) -> bytes:
    """``[number] IMPLICIT CertificateSet``: the certificates' DER, sorted as DER orders a SET OF."""
    return der.tlv(0xA0 | number, b"".join(sorted(certificate_der(c) for c in certificates)))


def _signed_data(*, digest_algorithms: bytes, content: bytes | None, certificates: bytes,
                 crls: bytes, signer_infos: bytes) -> bytes:
    """A ContentInfo(SignedData) v1 from its parts (DER), with eContentType ``data``."""
    encapsulated = der.content_type("data")
    if content is not None:
        encapsulated += der.explicit(0, der.octet_string(content))
    signed = der.sequence(der.integer(1), der.tlv(der.SET, digest_algorithms), der.sequence(encapsulated),
                          certificates, crls, der.tlv(der.SET, signer_infos))
    return der.sequence(der.content_type("signed_data"), der.explicit(0, signed))


def build_signed_data(
    *,
    content: bytes | None,
    attributes: list[bytes],
    signer_key: rsa.RSAPrivateKey,
    signer_certificate: x509.Certificate,
    digest_algorithm: str,
    certificates: list | None = None,
    sort_attributes: bool = True,
) -> bytes:
    """A ContentInfo(SignedData) with one signer over ``attributes`` (DER encodings).

    The signature algorithm is plain rsaEncryption with PKCS#1 v1.5: strongSwan
    refuses sha*WithRSAEncryption there. ``sort_attributes=False`` keeps the
    given order, as some clients do (tests use it). Written as DER directly
    (codec.der): the bytes asn1crypto wrote, without assembling its objects.
    """
    if not isinstance(signer_key, rsa.RSAPrivateKey):
        raise ValueError("the signer key must be an RSA private key")
    if digest_algorithm not in DIGESTS:
        raise ValueError("digest_algorithm must be one of %s" % (", ".join(DIGESTS),))
    body = b"".join(sorted(attributes) if sort_attributes else attributes)
    signed_attributes = universal_set(body)
    signature = signer_key.sign(signed_attributes, padding.PKCS1v15(), digest_hash(digest_algorithm))
    signer = certificate_der(signer_certificate)
    digest_identifier = der.digest_algorithm(digest_algorithm)
    signer_info = der.sequence(
        der.integer(1),  # v1: the signer named by issuer and serial number
        der.issuer_and_serial(signer),
        digest_identifier,
        der.tlv(0xA0, body),  # signedAttrs, [0] IMPLICIT SET OF
        der.signed_digest_algorithm("rsassa_pkcs1v15"),
        der.octet_string(signature),
    )
    return _signed_data(digest_algorithms=digest_identifier, content=content,
                        certificates=_implicit_certificates(0, [signer, *(certificates or [])]), crls=b"",
                        signer_infos=signer_info)


def degenerate_certificates(certificates: list, crl=None) -> bytes:
    """A certs-only SignedData (no signers): a CA/RA chain, or issued certificates, or a CRL."""
    crls = b""
    if crl is not None:
        crls = der.tlv(0xA1, crl if isinstance(crl, bytes) else crl.public_bytes(serialization.Encoding.DER))
    return _signed_data(digest_algorithms=b"", content=None,
                        certificates=_implicit_certificates(0, certificates) if certificates else b"", crls=crls,
                        signer_infos=b"")


def load_signed_data(der: bytes) -> cms.SignedData:
    """The SignedData in a (BER) ContentInfo, or MessageError."""
    info = ber.load(der, cms.ContentInfo)
    if info["content_type"].native != "signed_data":
        raise MessageError("not a CMS SignedData (%s)" % (info["content_type"].dotted,))
    return info["content"]


def _find_signer(signed: cms.SignedData, sid: cms.SignerIdentifier) -> asn1_x509.Certificate:
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        certificate = choice.chosen
        if sid.name == "issuer_and_serial_number":
            if (certificate.serial_number == sid.chosen["serial_number"].native
                    and same_name(certificate.issuer, sid.chosen["issuer"])):
                return certificate
        elif sid.name == "subject_key_identifier":
            if (certificate.key_identifier or certificate.public_key.sha1) == sid.chosen.native:
                return certificate
    raise MessageError("the signer's certificate is not in the message")


def _verify_signature(public_key, signer_info: cms.SignerInfo, data: bytes, digest_algorithm: str) -> None:
    algorithm = signer_info["signature_algorithm"]
    oid = algorithm["algorithm"].dotted
    signature = signer_info["signature"].native
    if oid == _RSA_ENCRYPTION or oid in _RSA_WITH_DIGEST:
        public_key.verify(signature, data, padding.PKCS1v15(), digest_hash(digest_algorithm))
    elif oid == _RSASSA_PSS:
        parameters = algorithm["parameters"]
        hash_name = parameters["hash_algorithm"]["algorithm"].native
        mgf = parameters["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise MessageError("RSASSA-PSS with a mask generation other than MGF1")
        mgf_hash = digest_hash(mgf["parameters"]["algorithm"].native)
        pss = padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=parameters["salt_length"].native)
        public_key.verify(signature, data, pss, digest_hash(hash_name))
    else:
        raise MessageError("unsupported signature algorithm %s" % (oid,))


def open_signed_data(der: bytes) -> OpenedSignedData:
    """Parse a SCEP SignedData and verify its one signer; MessageError on any problem."""
    signed = load_signed_data(der)
    signer_infos = signed["signer_infos"]
    if len(signer_infos) != 1:
        raise MessageError("%d signers, SCEP needs exactly 1" % (len(signer_infos),))
    signer_info = signer_infos[0]
    if not signer_info["signed_attrs"]:
        raise MessageError("no signed attributes")
    digest_algorithm = signer_info["digest_algorithm"]["algorithm"].native
    digest_hash(digest_algorithm)  # refuse MD5 and unknown digests early
    certificate = _find_signer(signed, signer_info["sid"])
    signer_certificate = x509.load_der_x509_certificate(certificate.dump())
    public_key = signer_certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise MessageError("the signer's key is not RSA")

    # The attributes as sent (not re-encoded, not re-sorted), tagged SET instead of [0].
    signed_bytes = universal_set(signer_info["signed_attrs"].contents)
    _verify_signature(public_key, signer_info, signed_bytes, digest_algorithm)

    attributes = SignedAttributes(signer_info["signed_attrs"])
    encapsulated = signed["encap_content_info"]
    content_value = encapsulated["content"]
    content = None if isinstance(content_value, core.Void) else bytes(content_value)
    if attributes.oid(CONTENT_TYPE_OID, "contentType") != encapsulated["content_type"].dotted:
        raise MessageError("the contentType attribute does not match eContentType")
    expected = attributes.octets(MESSAGE_DIGEST_OID, "messageDigest")
    if not hmac.compare_digest(expected, digest(digest_algorithm, content or b"")):
        raise MessageError("messageDigest does not match the content")
    return OpenedSignedData(content, attributes, signer_certificate, digest_algorithm, signed)
