"""CMS EnvelopedData (RFC 5652 section 6) with one RSA key-transport recipient.

Decryption is strict about what it unwraps: RSA PKCS#1 v1.5 decryption in
current OpenSSL uses implicit rejection, so a wrong key or a tampered
envelope gives random bytes instead of an error. The unwrapped key must have
exactly the length the content cipher needs, and the content must then
decrypt with valid padding; anything else is MessageError.
"""

import functools

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from scepproxyd.scep.codec import ber, der
from scepproxyd.scep.codec.algorithms import (
    CIPHERS,
    content_cipher_name,
    decrypt_content,
    encrypt_content,
    key_transport_algorithm,
    key_transport_padding,
    key_transport_padding_of,
)
from scepproxyd.scep.codec.errors import MessageError
from scepproxyd.scep.codec.signed import certificate_der, same_name, to_asn1_certificate


class _LenientEncryptedContentInfo(cms.EncryptedContentInfo):
    """encryptedContent as whatever was sent: primitive, or constructed in chunks."""

    _fields = [
        ("content_type", cms.ContentType),
        ("content_encryption_algorithm", cms.EncryptionAlgorithm),
        ("encrypted_content", core.Any, {"optional": True}),
    ]


class _LenientEnvelopedData(cms.EnvelopedData):
    _fields = [
        ("version", cms.CMSVersion),
        ("originator_info", cms.OriginatorInfo, {"implicit": 0, "optional": True}),
        ("recipient_infos", cms.RecipientInfos),
        ("encrypted_content_info", _LenientEncryptedContentInfo),
        ("unprotected_attrs", cms.CMSAttributes, {"implicit": 1, "optional": True}),
    ]


class _LenientContentInfo(cms.ContentInfo):
    _oid_specs = {"enveloped_data": _LenientEnvelopedData}


@functools.lru_cache(maxsize=None)
def _transport_identifier(key_transport: str) -> bytes:
    return key_transport_algorithm(key_transport).dump()


def envelope(content: bytes, recipient_certificate: x509.Certificate, content_encryption: str,
             key_transport: str = "pkcs1v15") -> bytes:
    """
    A ContentInfo(EnvelopedData) of ``content`` for the holder of ``recipient_certificate``.

    Written as DER directly (codec.der): the bytes asn1crypto wrote, without
    assembling its objects; the recipient is named by the issuer and serial
    of its certificate, as encoded there.
    """
    if content_encryption not in CIPHERS:
        raise ValueError("content_encryption must be one of %s" % (", ".join(CIPHERS),))
    public_key = recipient_certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("the recipient certificate must hold an RSA key")
    transport = _transport_identifier(key_transport)
    algorithm, ciphertext, key = encrypt_content(content_encryption, content)
    recipient_info = der.sequence(  # KeyTransRecipientInfo
        der.integer(0),  # v0
        der.issuer_and_serial(certificate_der(recipient_certificate)),
        transport,
        der.octet_string(public_key.encrypt(key, key_transport_padding(key_transport))),
    )
    encrypted_content_info = der.sequence(
        der.content_type("data"),
        algorithm.dump(),
        der.tlv(0x80, ciphertext),  # encryptedContent, [0] IMPLICIT OCTET STRING
    )
    enveloped = der.sequence(der.integer(0), der.tlv(der.SET, recipient_info), encrypted_content_info)
    return der.sequence(der.content_type("enveloped_data"), der.explicit(0, enveloped))


def _names_recipient(rid: cms.RecipientIdentifier, recipient: asn1_x509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        return (rid.chosen["serial_number"].native == recipient.serial_number
                and same_name(rid.chosen["issuer"], recipient.issuer))
    if rid.name == "subject_key_identifier":
        return rid.chosen.native == (recipient.key_identifier or recipient.public_key.sha1)
    return False


def open_envelope(der: bytes, recipient_key, recipient_certificate: x509.Certificate) -> tuple[bytes, str]:
    """Decrypt a (BER) ContentInfo(EnvelopedData): (content, our name of its cipher)."""
    info = ber.load(der, _LenientContentInfo)
    if info["content_type"].native != "enveloped_data":
        raise MessageError("encapsulated content is not EnvelopedData (%s)" % (info["content_type"].dotted,))
    enveloped = info["content"]
    recipient = to_asn1_certificate(recipient_certificate)
    for choice in enveloped["recipient_infos"]:
        if choice.name == "ktri" and _names_recipient(choice.chosen["rid"], recipient):
            recipient_info = choice.chosen
            break
    else:
        raise MessageError("the envelope is not addressed to our certificate")
    if not isinstance(recipient_key, rsa.RSAPrivateKey):
        raise MessageError("our key is not an RSA key")
    content_info = enveloped["encrypted_content_info"]
    algorithm = content_info["content_encryption_algorithm"]
    cipher = content_cipher_name(algorithm)
    transport = key_transport_padding_of(recipient_info["key_encryption_algorithm"])
    key = recipient_key.decrypt(recipient_info["encrypted_key"].native, transport)
    # asn1crypto cannot load a definite-length chunked [0]; take its bytes from the encoding.
    fields = ber.children(content_info.dump())
    if len(fields) != 3:
        raise MessageError("the envelope has no encryptedContent")
    return decrypt_content(algorithm, key, ber.implicit_octets(fields[2], 0)), cipher
