"""SCEP requests (PKCSReq, RenewalReq, CertPoll, GetCert, GetCRL): read them as a CA, build them as a client."""

import os

import attrs
from asn1crypto import cms, core, csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scepproxyd.scep.codec import ber
from scepproxyd.scep.codec.algorithms import DIGESTS, digest
from scepproxyd.scep.codec.attributes import (
    CHALLENGE_PASSWORD_OID,
    MESSAGE_TYPE_NAMES,
    MESSAGE_TYPE_OID,
    MESSAGE_TYPES,
    SENDER_NONCE_OID,
    TRANSACTION_ID_OID,
    encode_attributes,
)
from scepproxyd.scep.codec.csr import load_csr
from scepproxyd.scep.codec.enveloped import envelope, open_envelope
from scepproxyd.scep.codec.errors import MessageError, decoding
from scepproxyd.scep.codec.signed import build_signed_data, open_signed_data

REQUEST_TYPES = ("PKCSReq", "RenewalReq", "CertPoll", "GetCert", "GetCRL")


@attrs.frozen
class MessageHeader:
    """What a request says without decrypting it: enough to address a FAILURE CertRep."""

    message_type: str                 # one of REQUEST_TYPES
    transaction_id: str
    sender_nonce: bytes
    signer_certificate: x509.Certificate
    digest_algorithm: str             # the signer's: "sha1" | "sha224" | "sha256" | "sha384" | "sha512"


@attrs.frozen
class PkiRequest:
    header: MessageHeader
    content_encryption: str           # "des" | "des3" | "aes128" | "aes192" | "aes256" (what the client used)
    #: PKCSReq / RenewalReq: in DER, its own signature checked over the bytes the client sent (codec.csr).
    csr: x509.CertificateSigningRequest | None = None
    issuer_and_subject: tuple[x509.Name, x509.Name] | None = None   # CertPoll
    issuer_and_serial: tuple[x509.Name, int] | None = None          # GetCert / GetCRL


class IssuerAndSubject(core.Sequence):
    """CertPoll's content (RFC 8894 section 3.3.3)."""

    _fields = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


def _header_of(opened) -> MessageHeader:
    attributes = opened.attributes
    number = attributes.string(MESSAGE_TYPE_OID, "messageType")
    message_type = MESSAGE_TYPE_NAMES.get(number)
    if message_type not in REQUEST_TYPES:
        raise MessageError("messageType %r is not a request" % (number,))
    transaction_id = attributes.string(TRANSACTION_ID_OID, "transactionID")
    sender_nonce = attributes.octets(SENDER_NONCE_OID, "senderNonce")
    if not transaction_id or not sender_nonce:
        raise MessageError("empty transactionID or senderNonce")
    return MessageHeader(message_type, transaction_id, sender_nonce, opened.signer_certificate,
                         opened.digest_algorithm)


@decoding
def read_header(der: bytes) -> MessageHeader:
    """Parse and verify the signed outer layer of a request (no decryption)."""
    return _header_of(open_signed_data(der))


def crypto_name(name: asn1_x509.Name) -> x509.Name:
    """An asn1crypto Name as a cryptography Name (same attributes, same order)."""
    rdns = []
    for rdn in name.chosen:
        attributes = []
        for pair in rdn:
            value = pair["value"].native
            if not isinstance(value, str):
                raise MessageError("name attribute %s is not a string" % (pair["type"].dotted,))
            attributes.append(x509.NameAttribute(x509.ObjectIdentifier(pair["type"].dotted), value))
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


@decoding
def read_request(der: bytes, recipient_key, recipient_certificate) -> PkiRequest:
    """Verify, decrypt and parse a request addressed to ``recipient_certificate``."""
    opened = open_signed_data(der)
    return _request_of(opened, _header_of(opened), recipient_key, recipient_certificate)


@decoding
def _opened_with_header(der: bytes):
    opened = open_signed_data(der)
    return opened, _header_of(opened)


def open_request(der: bytes, recipient_key, recipient_certificate) -> tuple[MessageHeader, "PkiRequest | MessageError"]:
    """
    ``read_header`` then ``read_request`` in one pass: ``(header, request)``.

    A CA answers a request whose header it can read but whose content it
    cannot (wrong recipient, undecryptable, a broken CSR) with a FAILURE
    addressed by that header, so it needs both; parsing and verifying the
    signed layer once instead of twice saves a parse and an RSA verification
    per request. Raises MessageError when the header cannot be read (as
    ``read_header`` would); the second item is the MessageError
    ``read_request`` would raise when only the content cannot be read.
    """
    opened, header = _opened_with_header(der)
    try:
        return header, _request_of(opened, header, recipient_key, recipient_certificate)
    except MessageError as e:
        return header, e


@decoding
def _request_of(opened, header: MessageHeader, recipient_key, recipient_certificate) -> PkiRequest:
    """The request in an opened (verified) SignedData: decrypt the envelope and read its content."""
    if opened.content is None:
        raise MessageError("the request has no encapsulated content")
    content, cipher = open_envelope(opened.content, recipient_key, recipient_certificate)
    if header.message_type in ("PKCSReq", "RenewalReq"):
        return PkiRequest(header, cipher, csr=load_csr(content))
    if header.message_type == "CertPoll":
        names = ber.load(content, IssuerAndSubject)
        return PkiRequest(header, cipher, issuer_and_subject=(crypto_name(names["issuer"]),
                                                              crypto_name(names["subject"])))
    issuer_and_serial = ber.load(content, cms.IssuerAndSerialNumber)
    return PkiRequest(header, cipher, issuer_and_serial=(crypto_name(issuer_and_serial["issuer"]),
                                                         issuer_and_serial["serial_number"].native))


@decoding
def csr_challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    """The CSR's challengePassword attribute (PKCS#9), or None if it has none."""
    request = asn1_csr.CertificationRequest.load(csr.public_bytes(serialization.Encoding.DER))
    for attribute in request["certification_request_info"]["attributes"]:
        if attribute["type"].dotted == CHALLENGE_PASSWORD_OID:
            values = attribute["values"]
            if len(values) != 1:
                raise MessageError("challengePassword has %d values" % (len(values),))
            value = values[0]
            return value.chosen.native if isinstance(value, core.Choice) else value.native
    return None


def _asn1_name(name: x509.Name) -> asn1_x509.Name:
    return asn1_x509.Name.load(name.public_bytes())


def _default_transaction_id(public_key) -> str:
    """RFC 8894 suggests a hash of the public key; hex SHA-256 of its SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return digest("sha256", spki).hex().upper()


def _request_content(message_type, csr, issuer_and_subject, issuer_and_serial) -> bytes:
    if message_type in ("PKCSReq", "RenewalReq"):
        if csr is None:
            raise ValueError("%s needs csr" % (message_type,))
        return csr.public_bytes(serialization.Encoding.DER)
    if message_type == "CertPoll":
        if issuer_and_subject is None:
            raise ValueError("CertPoll needs issuer_and_subject")
        issuer, subject = issuer_and_subject
        return IssuerAndSubject({"issuer": _asn1_name(issuer), "subject": _asn1_name(subject)}).dump()
    if message_type in ("GetCert", "GetCRL"):
        if issuer_and_serial is None:
            raise ValueError("%s needs issuer_and_serial" % (message_type,))
        issuer, serial = issuer_and_serial
        return cms.IssuerAndSerialNumber({"issuer": _asn1_name(issuer), "serial_number": serial}).dump()
    raise ValueError("message_type must be one of %s" % (", ".join(REQUEST_TYPES),))


def build_request(*, message_type: str, signer_key, signer_certificate, recipient_certificate, csr=None,
                  transaction_id: str | None = None, issuer_and_subject=None, issuer_and_serial=None,
                  content_encryption: str = "aes256", digest_algorithm: str = "sha256",
                  key_transport: str = "pkcs1v15", sort_attributes: bool = True) -> tuple[bytes, MessageHeader]:
    """A signed, encrypted SCEP request as a client sends it, and its header.

    ``sort_attributes=False`` writes the signed attributes in a non-DER order,
    as some clients do; tests use it to prove the reader copes.
    """
    if digest_algorithm not in DIGESTS:
        raise ValueError("digest_algorithm must be one of %s" % (", ".join(DIGESTS),))
    content = _request_content(message_type, csr, issuer_and_subject, issuer_and_serial)
    if transaction_id is None:
        transaction_id = _default_transaction_id((csr or signer_certificate).public_key())
    enveloped = envelope(content, recipient_certificate, content_encryption, key_transport)
    nonce = os.urandom(16)
    attributes = encode_attributes(
        content_digest=digest(digest_algorithm, enveloped),
        message_type=MESSAGE_TYPES[message_type],
        transaction_id=transaction_id,
        sender_nonce=nonce,
    )
    if not sort_attributes:
        attributes = sorted(attributes, reverse=True)
    der = build_signed_data(content=enveloped, attributes=attributes, signer_key=signer_key,
                            signer_certificate=signer_certificate, digest_algorithm=digest_algorithm,
                            sort_attributes=sort_attributes)
    return der, MessageHeader(message_type, transaction_id, nonce, signer_certificate, digest_algorithm)
