"""The SCEP message codec (RFC 8894 on CMS, RFC 5652): all of the project's SCEP ASN.1.

asn1crypto gives the structure, cryptography the primitives. Readers accept
BER and raise MessageError for anything wrong; builders write DER. See
docs/codec.md for the algorithms and the quirks of real peers.
"""

from scepproxyd.scep.codec.algorithms import CIPHERS, DIGESTS, KEY_TRANSPORTS
from scepproxyd.scep.codec.attributes import FAIL_INFO_NAMES, MESSAGE_TYPES, PKI_STATUS_NAMES
from scepproxyd.scep.codec.errors import MessageError
from scepproxyd.scep.codec.peek import ca_certificates, cert_rep_status, looks_like_pki_message, pki_message_status
from scepproxyd.scep.codec.requests import (
    MessageHeader,
    PkiRequest,
    build_request,
    csr_challenge_password,
    open_request,
    read_header,
    read_request,
)
from scepproxyd.scep.codec.responses import build_cert_rep, choose_content_encryption, read_response
from scepproxyd.scep.codec.signed import degenerate_certificates

__all__ = [
    "CIPHERS",
    "DIGESTS",
    "FAIL_INFO_NAMES",
    "KEY_TRANSPORTS",
    "MESSAGE_TYPES",
    "PKI_STATUS_NAMES",
    "MessageError",
    "MessageHeader",
    "PkiRequest",
    "build_cert_rep",
    "build_request",
    "ca_certificates",
    "cert_rep_status",
    "choose_content_encryption",
    "csr_challenge_password",
    "degenerate_certificates",
    "looks_like_pki_message",
    "open_request",
    "pki_message_status",
    "read_header",
    "read_request",
    "read_response",
]
