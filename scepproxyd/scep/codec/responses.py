"""CertRep: build it as a CA, read it as a client (RFC 8894 section 3.3.2)."""

import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from scepproxyd.scep.codec.algorithms import CIPHERS, digest
from scepproxyd.scep.codec.attributes import (
    FAIL_INFO_NAMES,
    FAIL_INFO_OID,
    FAIL_INFOS,
    MESSAGE_TYPE_OID,
    MESSAGE_TYPES,
    PKI_STATUS_NAMES,
    PKI_STATUS_OID,
    PKI_STATUSES,
    encode_attributes,
)
from scepproxyd.scep.codec.enveloped import envelope, open_envelope
from scepproxyd.scep.codec.errors import MessageError, decoding
from scepproxyd.scep.codec.requests import MessageHeader
from scepproxyd.scep.codec.signed import build_signed_data, degenerate_certificates, load_signed_data, open_signed_data


def choose_content_encryption(client_encryption: str) -> str:
    """The cipher for a CertRep's envelope: the one the client used for its request.

    A client that encrypted with AES of some size can decrypt that AES; a client
    that used DES or 3DES (micromdm scepclient, old devices) may know nothing else.
    """
    return client_encryption if client_encryption in CIPHERS else "aes256"


def build_cert_rep(*, header: MessageHeader, status: str, signer_key, signer_certificate,
                   fail_info: str | None = None, fail_info_text: str | None = None,
                   certificates: list | None = None, crl=None, content_encryption: str = "aes256",
                   extra_certificates: list | None = None) -> bytes:
    """A signed CertRep answering ``header``.

    SUCCESS carries an envelope for the requester's signing certificate holding
    a certs-only SignedData (the issued certificate(s), or the CRL for GetCRL).
    FAILURE and PENDING carry an empty eContent (a zero-length OCTET STRING,
    as micromdm scepserver writes): OpenSSL-based clients (certmonger,
    ``openssl cms -verify``) refuse a SignedData whose content is left out
    ("no content"). The signature covers the empty content's digest. The
    digest mirrors the client's.
    """
    if status not in PKI_STATUSES:
        raise ValueError("status must be one of %s" % (", ".join(PKI_STATUSES),))
    if status == "FAILURE":
        if fail_info not in FAIL_INFOS:
            raise ValueError("a FAILURE needs fail_info, one of %s" % (", ".join(FAIL_INFOS),))
    elif fail_info is not None or fail_info_text is not None:
        raise ValueError("fail_info and fail_info_text belong to a FAILURE only")
    content = b""
    if status == "SUCCESS":
        if not certificates and crl is None:
            raise ValueError("a SUCCESS needs certificates or a crl")
        inner = degenerate_certificates(certificates or [], crl=crl)
        content = envelope(inner, header.signer_certificate, content_encryption, "pkcs1v15")
    attributes = encode_attributes(
        content_digest=digest(header.digest_algorithm, content),
        message_type=MESSAGE_TYPES["CertRep"],
        transaction_id=header.transaction_id,
        sender_nonce=os.urandom(16),
        recipient_nonce=header.sender_nonce,
        pki_status=PKI_STATUSES[status],
        fail_info=FAIL_INFOS[fail_info] if status == "FAILURE" else None,
        fail_info_text=fail_info_text if status == "FAILURE" else None,
    )
    return build_signed_data(content=content, attributes=attributes, signer_key=signer_key,
                             signer_certificate=signer_certificate, digest_algorithm=header.digest_algorithm,
                             certificates=extra_certificates)


def _certificates_and_crls(der: bytes) -> list:
    signed = load_signed_data(der)
    found = []
    for choice in signed["certificates"] or []:
        if choice.name == "certificate":
            found.append(x509.load_der_x509_certificate(choice.chosen.dump()))
    for choice in signed["crls"] or []:
        if choice.name == "crl":
            found.append(x509.load_der_x509_crl(choice.chosen.dump()))
    return found


def _check_signer(signer: x509.Certificate, ca_certificate: x509.Certificate) -> None:
    """The CertRep signer is the CA itself, or an RA certificate the CA issued."""
    if signer == ca_certificate:
        return
    try:
        signer.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise MessageError("CertRep signer is neither the CA nor issued by it (%s)" % (type(e).__name__,)) from e


@decoding
def read_response(der: bytes, recipient_key, recipient_certificate, ca_certificate) -> tuple[str, str | None, list]:
    """Verify a CertRep and return (pkiStatus, failInfo, certificates and CRLs).

    The list holds cryptography certificates (and a CRL for GetCRL), decrypted
    with ``recipient_key``, for a SUCCESS; it is empty otherwise.
    """
    opened = open_signed_data(der)
    _check_signer(opened.signer_certificate, ca_certificate)
    attributes = opened.attributes
    if attributes.string(MESSAGE_TYPE_OID, "messageType") != MESSAGE_TYPES["CertRep"]:
        raise MessageError("not a CertRep")
    status = PKI_STATUS_NAMES.get(attributes.string(PKI_STATUS_OID, "pkiStatus"))
    if status is None:
        raise MessageError("unknown pkiStatus")
    if status == "FAILURE":
        number = attributes.optional_string(FAIL_INFO_OID, "failInfo")
        return status, FAIL_INFO_NAMES.get(number or "", number), []
    if status == "PENDING":
        return status, None, []
    if not opened.content:
        raise MessageError("a SUCCESS CertRep without content")
    inner, _ = open_envelope(opened.content, recipient_key, recipient_certificate)
    return status, None, _certificates_and_crls(inner)
