"""DER written directly, for the builders' hot path: tag, length, value.

Assembling a SignedData or EnvelopedData as asn1crypto objects costs far more
than the bytes need (every ``Sequence.__setitem__`` copies and re-tags its
value, certificates included, before ``dump``): about 1.5 ms of Python per
CertRep. The builders write the same bytes from parts that are already DER
(certificates, names, attributes, algorithm identifiers dumped once by
asn1crypto and kept), and sort a SET OF's members as asn1crypto (and DER)
does, so the output is what asn1crypto wrote, byte for byte; tests/test_codec.py
compares it with asn1crypto's own assembly.
"""

import functools

from asn1crypto import algos, cms

from scepproxyd.scep.codec.ber import children, length_octets

SEQUENCE, SET, INTEGER, OCTET_STRING = 0x30, 0x31, 0x02, 0x04


def tlv(tag: int, body: bytes) -> bytes:
    """One element: its identifier octet, the DER length of ``body``, then ``body``."""
    return bytes([tag]) + length_octets(len(body)) + body


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def explicit(number: int, inner: bytes) -> bytes:
    """``[number] EXPLICIT`` around one encoded element (context class, constructed)."""
    return tlv(0xA0 | number, inner)


def integer(value: int) -> bytes:
    """A DER INTEGER: the shortest two's complement, as asn1crypto writes one."""
    length = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return tlv(INTEGER, value.to_bytes(length, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


@functools.lru_cache(maxsize=None)
def content_type(name: str) -> bytes:
    """A CMS content type OID (``data``, ``signed_data``, ``enveloped_data``) in DER."""
    return cms.ContentType(name).dump()


@functools.lru_cache(maxsize=None)
def digest_algorithm(name: str) -> bytes:
    """The DigestAlgorithm identifier asn1crypto writes for ``name`` (``sha256``, ...)."""
    return algos.DigestAlgorithm({"algorithm": name}).dump()


@functools.lru_cache(maxsize=None)
def signed_digest_algorithm(name: str) -> bytes:
    return algos.SignedDigestAlgorithm({"algorithm": name}).dump()


def issuer_and_serial(certificate_der: bytes) -> bytes:
    """
    An IssuerAndSerialNumber for a certificate: its issuer Name exactly as encoded in it, and its serial.

    The Name is copied from the certificate's own bytes (the third field of
    its TBSCertificate after the optional [0] version), never re-encoded, so
    a recipient matching names by their encoding finds it; the serial is
    read as a number and written in its shortest form, as asn1crypto did.
    """
    fields = children(children(certificate_der)[0])
    if fields[0][0] == 0xA0:
        fields = fields[1:]
    serial, _, issuer = fields[:3]
    return sequence(issuer, integer(int.from_bytes(_value(serial), "big", signed=True)))


def _value(element: bytes) -> bytes:
    """The value octets of one definite-length element."""
    length = element[1]
    start = 2 + (length & 0x7F if length & 0x80 else 0)
    return element[start:]
