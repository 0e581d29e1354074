"""The proxy's cheap look at a SignedData: read from the TLVs, with no asn1crypto objects.

peek.py's full readers parse a message with asn1crypto (about 0.3 ms) only
to learn whether it is a CMS SignedData with a signer and, for a CertRep,
its pkiStatus and failInfo. ``skim`` answers those from the bytes, and its
answer must be the full reader's, always. So it first runs ``ber.scan``,
which refuses exactly what the full reader's BER step refuses; then it reads
only shapes whose full parse it knows to the last detail (what the codec's
builders and the real peers write, in DER or in BER): the fields asn1crypto
builds and converts when the full reader asks for the signer infos, each
checked against the rule asn1crypto applies to it. Anything else, however
valid it may be, raises ``CannotJudge`` and the caller asks the full reader.

It relies on asn1crypto's registries as they stand: the SCEP attributes are
not registered (the codec never registers them, see attributes.py), so their
values are read as ANY, as the full reader reads them.
"""

import datetime

from asn1crypto import cms, core

from scepproxyd.scep.codec import ber
from scepproxyd.scep.codec.attributes import (
    CONTENT_TYPE_OID,
    FAIL_INFO_OID,
    FAIL_INFO_TEXT_OID,
    MESSAGE_DIGEST_OID,
    MESSAGE_TYPE_OID,
    PKI_STATUS_OID,
    RECIPIENT_NONCE_OID,
    SENDER_NONCE_OID,
    SIGNING_TIME_OID,
    TRANSACTION_ID_OID,
)
from scepproxyd.scep.codec.errors import MessageError


class CannotJudge(Exception):
    """A shape the cheap reader does not know exactly: ask the full reader."""


def _oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER, as the bytes hold it (made once, at import)."""
    return core.ObjectIdentifier(dotted).contents


_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
# SignedData's fields by their identifier octets, as asn1crypto matches its optional ones.
_SIGNED_DATA_SHAPES = frozenset({b"\x02\x31\x30\x31", b"\x02\x31\x30\xa0\x31", b"\x02\x31\x30\xa1\x31",
                                 b"\x02\x31\x30\xa0\xa1\x31"})
# Digests whose parameters asn1crypto reads as NULL, and signature algorithms read as NULL or ANY
# (absent, or NULL, in both cases). RSASSA-PSS has parameters of its own: the full reader's.
_DIGESTS = frozenset(_oid(o) for o in (
    "1.3.14.3.2.26", "2.16.840.1.101.3.4.2.4", "2.16.840.1.101.3.4.2.1",
    "2.16.840.1.101.3.4.2.2", "2.16.840.1.101.3.4.2.3"))
_SIGNATURES = frozenset(_oid("1.2.840.113549.1.1." + n) for n in ("1", "5", "11", "12", "13", "14"))

# Name attributes whose values asn1crypto reads as a DirectoryString, and domainComponent (IA5, idna).
_DIRECTORY_STRING_TYPES = frozenset(_oid("2.5.4." + n) for n in ("3", "5", "6", "7", "8", "9", "10", "11", "12"))
_DOMAIN_COMPONENT = _oid("0.9.2342.19200300.100.1.25")

_CONTENT_TYPE = _oid(CONTENT_TYPE_OID)
_MESSAGE_DIGEST = _oid(MESSAGE_DIGEST_OID)
_SIGNING_TIME = _oid(SIGNING_TIME_OID)
_PKI_STATUS = _oid(PKI_STATUS_OID)
_FAIL_INFO = _oid(FAIL_INFO_OID)
# Unregistered in asn1crypto, so SET OF ANY: messageType, pkiStatus, failInfo, the nonces, transactionID,
# failInfoText.
_ANY_VALUED = frozenset(_oid(o) for o in (MESSAGE_TYPE_OID, PKI_STATUS_OID, FAIL_INFO_OID, SENDER_NONCE_OID,
                                           RECIPIENT_NONCE_OID, TRANSACTION_ID_OID, FAIL_INFO_TEXT_OID))

_KNOWN_ATTRIBUTES = frozenset({_CONTENT_TYPE, _MESSAGE_DIGEST, _SIGNING_TIME, *_ANY_VALUED})
_ANY_NUMBER = range(1 << 30)  # of children, for a SET OF or SEQUENCE OF

# Universal strings an ANY value may hold here (primitive, or chunked: ber.normalize joins those),
# with the codec asn1crypto decodes them with (None: OCTET STRING, kept as bytes).
_PRINTABLE, _UTF8, _IA5, _OCTETS = 0x13, 0x0C, 0x16, 0x04
_ANY_STRINGS = {_PRINTABLE: "latin1", _UTF8: "utf-8", _IA5: "ascii", _OCTETS: None}
_DIRECTORY_STRINGS = {_PRINTABLE: "latin1", _UTF8: "utf-8", _IA5: "ascii"}


class _Reader:
    """Elements of a message that ``ber.scan`` accepted; ``stops`` ends its indefinite lengths."""

    def __init__(self, data: bytes, stops: dict[int, int]):
        self.data = data
        self.stops = stops

    def element(self, offset: int) -> tuple[int, int, int, int]:
        """(identifier octet, contents start, contents stop, end) of the element at ``offset``."""
        data = self.data
        first = data[offset]
        if first & 0x1F == 0x1F:
            raise CannotJudge("multi-octet tag")
        length = data[offset + 1]
        start = offset + 2
        if length < 0x80:
            return first, start, start + length, start + length
        if length == 0x80:
            stop = self.stops[start]
            return first, start, stop, stop + 2
        start += length & 0x7F
        stop = start + int.from_bytes(data[offset + 2:start], "big")
        return first, start, stop, stop

    def children(self, node) -> list[tuple[int, int, int, int]]:
        data, found = self.data, []
        offset, stop = node[1], node[2]
        while offset < stop:
            if data[offset] & 0x1F != 0x1F and data[offset + 1] < 0x80:  # element(), its commonest case
                start = offset + 2
                offset = start + data[offset + 1]
                found.append((data[start - 2], start, offset, offset))
            else:
                child = self.element(offset)
                found.append(child)
                offset = child[3]
        return found

    def fields(self, node, identifier: int, count: int | tuple[int, ...] | range) -> list[tuple[int, int, int, int]]:
        """The children of a constructed ``node`` that must have ``identifier`` and ``count`` children."""
        if node[0] != identifier:
            raise CannotJudge("identifier %#x, expected %#x" % (node[0], identifier))
        found = self.children(node)
        if len(found) != count if isinstance(count, int) else len(found) not in count:
            raise CannotJudge("%d fields" % (len(found),))
        return found

    def octets(self, node) -> bytes:
        """The value of a universal string as ``ber.normalize`` leaves it: chunks joined."""
        if not node[0] & 0x20:
            return self.data[node[1]:node[2]]
        return b"".join(self.octets(chunk) for chunk in self.children(node))

    def string(self, node, types: dict) -> tuple[int, bytes]:
        """(universal tag, value) of a string of one of ``types``, decoded as asn1crypto would."""
        tag = node[0] & 0xDF
        if tag not in types:
            raise CannotJudge("value of type %#x" % (node[0],))
        value = self.octets(node)
        encoding = types[tag]
        if encoding is not None:
            try:
                value.decode(encoding)
            except UnicodeError:
                raise CannotJudge("undecodable string") from None
        return tag, value

    def oid(self, node) -> bytes:
        if node[0] != 0x06:
            raise CannotJudge("expected an OBJECT IDENTIFIER")
        return self.data[node[1]:node[2]]


def _algorithm(reader: _Reader, node, known: frozenset) -> None:
    """An AlgorithmIdentifier of ``known`` with no parameters or NULL ones."""
    fields = reader.fields(node, 0x30, (1, 2))
    if reader.oid(fields[0]) not in known:
        raise CannotJudge("algorithm")
    if len(fields) == 2 and (fields[1][0] != 0x05 or fields[1][1] != fields[1][2]):
        raise CannotJudge("algorithm parameters")


def _name(reader: _Reader, node) -> None:
    """A Name whose every value asn1crypto's ``.native`` converts without error."""
    for rdn in reader.fields(node, 0x30, _ANY_NUMBER):
        for pair in reader.fields(rdn, 0x31, _ANY_NUMBER):
            kind, value = reader.fields(pair, 0x30, 2)
            kind = reader.oid(kind)
            if kind in _DIRECTORY_STRING_TYPES:
                reader.string(value, _DIRECTORY_STRINGS)
            elif kind == _DOMAIN_COMPONENT:
                reader.string(value, {_IA5: "idna"})
            else:
                raise CannotJudge("name attribute")


def _time(reader: _Reader, node) -> None:
    """A signingTime asn1crypto reads: YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ, a real date."""
    text = reader.data[node[1]:node[2]]
    if not (text[:-1].isdigit() and text.endswith(b"Z")):
        raise CannotJudge("signing time")
    if node[0] == 0x17 and len(text) == 13:
        year = int(text[:2]) + (2000 if int(text[:2]) < 50 else 1900)
        rest = text[2:12]
    elif node[0] == 0x18 and len(text) == 15:
        year, rest = int(text[:4]), text[4:14]
    else:
        raise CannotJudge("signing time")
    try:
        datetime.datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]))
    except ValueError:
        raise CannotJudge("signing time") from None


def _dotted(octets: bytes) -> str:
    """asn1crypto's ObjectIdentifier.dotted, step for step (it accepts non-minimal encodings)."""
    if len(octets) > 64:
        raise CannotJudge("long object identifier")
    arcs = []
    part = 0
    for byte in octets:
        part = part * 128 + (byte & 0x7F)
        if not byte & 0x80:
            if arcs:
                arcs.append(str(part))
            else:
                arcs += ["2", str(part - 80)] if part >= 80 else ["1", str(part - 40)] if part >= 40 else ["0", str(part)]
            part = 0
    return ".".join(arcs)


_KNOWN_DOTTED = frozenset(_dotted(octets) for octets in _KNOWN_ATTRIBUTES)


def _any_valued(kind: bytes) -> bool:
    """True for an attribute type asn1crypto has no spec for (its values are SET OF ANY).

    step-ca, for one, writes failInfoText as 1.3.6.1.5.5.7.24. A type whose dotted form is
    one of the known ones (a non-minimal encoding) or that asn1crypto registers is not judged.
    """
    dotted = _dotted(kind)
    if dotted in _KNOWN_DOTTED or dotted in cms.CMSAttributeType._map or dotted in cms.CMSAttribute._oid_specs:
        raise CannotJudge("signed attribute")
    return True


def _attributes(reader: _Reader, node) -> list[tuple[bytes, str | None]]:
    """Signed attributes as (type, what ``peek._signed_attribute`` reads from the first value)."""
    found = []
    for attribute in reader.children(node):
        kind, values = reader.fields(attribute, 0x30, 2)
        kind = reader.oid(kind)
        values = reader.fields(values, 0x31, _ANY_NUMBER)
        first = None
        any_valued = kind in _ANY_VALUED or (kind not in _KNOWN_ATTRIBUTES and _any_valued(kind))
        for index, value in enumerate(values):
            if any_valued:
                tag, octets = reader.string(value, _ANY_STRINGS)
                if index == 0 and tag != _OCTETS:
                    first = octets.decode(_ANY_STRINGS[tag])
            elif kind == _CONTENT_TYPE:
                reader.oid(value)
            elif kind == _MESSAGE_DIGEST:
                reader.string(value, {_OCTETS: None})
            else:
                _time(reader, value)
        found.append((kind, first))
    return found


def _signer_info(reader: _Reader, node) -> list[tuple[bytes, str | None]]:
    """Check one SignerInfo as asn1crypto's ``.native`` reads it; return its signed attributes."""
    fields = reader.fields(node, 0x30, (5, 6))
    version, sid, digest = fields[:3]
    if version[0] != 0x02:
        raise CannotJudge("version")
    if sid[0] == 0x30:
        issuer, serial = reader.fields(sid, 0x30, 2)
        _name(reader, issuer)
        if serial[0] != 0x02:
            raise CannotJudge("serial number")
    elif sid[0] != 0x80:
        raise CannotJudge("signer identifier")
    _algorithm(reader, digest, _DIGESTS)
    attributes = []
    if len(fields) == 6:
        if fields[3][0] != 0xA0:
            raise CannotJudge("signer info fields")
        attributes = _attributes(reader, fields[3])
    signature_algorithm, signature = fields[-2:]
    _algorithm(reader, signature_algorithm, _SIGNATURES)
    if signature[0] & 0xDF != _OCTETS:
        raise CannotJudge("signature")
    return attributes


def _first(signers: list, kind: bytes) -> str | None:
    for attributes in signers:
        for found, first in attributes:
            if found == kind:
                return first
    return None


def skim(der) -> tuple[int, str | None, str | None] | None:
    """``(signers, pkiStatus, failInfo)`` of a SignedData, strings as sent; None when the full reader fails.

    Raises CannotJudge for a shape it does not know exactly.
    """
    if not isinstance(der, (bytes, bytearray, memoryview)):
        return None
    data = bytes(der)
    try:
        stops = ber.scan(data)
    except MessageError:
        return None
    if data[0] != 0x30:
        return None  # asn1crypto refuses any other tag for a ContentInfo
    reader = _Reader(data, stops)
    try:
        content_type, wrapper = reader.fields(reader.element(0), 0x30, 2)
        if reader.oid(content_type) != _SIGNED_DATA:
            raise CannotJudge("content type")
        [signed] = reader.fields(wrapper, 0xA0, 1)
        fields = reader.fields(signed, 0x30, (4, 5, 6))
        if bytes(field[0] for field in fields) not in _SIGNED_DATA_SHAPES:
            raise CannotJudge("SignedData fields")
        signers = [_signer_info(reader, signer) for signer in reader.children(fields[-1])]
    except (IndexError, KeyError, ValueError) as e:
        # ber.scan makes these impossible; should one happen, the full reader decides.
        raise CannotJudge("unexpected %s" % (type(e).__name__,)) from e
    return len(signers), _first(signers, _PKI_STATUS), _first(signers, _FAIL_INFO)
