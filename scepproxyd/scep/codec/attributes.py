"""SCEP's signed attributes (RFC 8894 section 3.2.1) and the CMS ones beside them.

The SCEP attributes are not in asn1crypto's registry, and registering them
would change asn1crypto for the whole process; so they are read from the
generic attribute structure by OID and written the same way.
"""

import datetime
import functools

from asn1crypto import cms, core

from scepproxyd.scep.codec import der
from scepproxyd.scep.codec.errors import MessageError

_VERISIGN_ATTRIBUTES = "2.16.840.1.113733.1.9."
MESSAGE_TYPE_OID = _VERISIGN_ATTRIBUTES + "2"
PKI_STATUS_OID = _VERISIGN_ATTRIBUTES + "3"
FAIL_INFO_OID = _VERISIGN_ATTRIBUTES + "4"
SENDER_NONCE_OID = _VERISIGN_ATTRIBUTES + "5"
RECIPIENT_NONCE_OID = _VERISIGN_ATTRIBUTES + "6"
TRANSACTION_ID_OID = _VERISIGN_ATTRIBUTES + "7"
FAIL_INFO_TEXT_OID = "1.3.6.1.5.5.7.24.1"  # id-scep-failInfoText
CONTENT_TYPE_OID = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST_OID = "1.2.840.113549.1.9.4"
SIGNING_TIME_OID = "1.2.840.113549.1.9.5"
CHALLENGE_PASSWORD_OID = "1.2.840.113549.1.9.7"

MESSAGE_TYPES = {
    "CertRep": "3",
    "RenewalReq": "17",
    "PKCSReq": "19",
    "CertPoll": "20",
    "GetCert": "21",
    "GetCRL": "22",
}
MESSAGE_TYPE_NAMES = {number: name for name, number in MESSAGE_TYPES.items()}
PKI_STATUS_NAMES = {"0": "SUCCESS", "2": "FAILURE", "3": "PENDING"}
PKI_STATUSES = {name: number for number, name in PKI_STATUS_NAMES.items()}
FAIL_INFO_NAMES = {
    "0": "badAlg",
    "1": "badMessageCheck",
    "2": "badRequest",
    "3": "badTime",
    "4": "badCertId",
}
FAIL_INFOS = {name: number for number, name in FAIL_INFO_NAMES.items()}

_STRING_TYPES = (core.PrintableString, core.UTF8String, core.IA5String, core.VisibleString,
                 core.TeletexString, core.BMPString, core.UniversalString)


class SignedAttributes:
    """Received signed attributes by OID; each value as raw DER, read on demand."""

    def __init__(self, attributes: cms.CMSAttributes):
        self._values: dict[str, bytes] = {}
        for attribute in attributes:
            oid = attribute["type"].dotted
            values = attribute["values"]
            if oid in self._values:
                raise MessageError("signed attribute %s appears twice" % (oid,))
            if len(values) != 1:
                raise MessageError("signed attribute %s has %d values, not 1" % (oid, len(values)))
            self._values[oid] = values[0].dump()

    def __contains__(self, oid: str) -> bool:
        return oid in self._values

    def _value(self, oid: str, spec, name: str):
        if oid not in self._values:
            raise MessageError("signed attribute %s is missing" % (name,))
        return spec.load(self._values[oid], strict=True)

    def string(self, oid: str, name: str) -> str:
        """A string attribute of any of the string types (clients differ)."""
        if oid not in self._values:
            raise MessageError("signed attribute %s is missing" % (name,))
        parsed = core.load(self._values[oid], strict=True)
        if not isinstance(parsed, _STRING_TYPES):
            raise MessageError("signed attribute %s is not a string" % (name,))
        return parsed.native

    def optional_string(self, oid: str, name: str) -> str | None:
        return self.string(oid, name) if oid in self._values else None

    def octets(self, oid: str, name: str) -> bytes:
        return self._value(oid, core.OctetString, name).native

    def oid(self, oid: str, name: str) -> str:
        return self._value(oid, core.ObjectIdentifier, name).dotted


@functools.lru_cache(maxsize=None)
def _attribute_type(oid: str) -> bytes:
    return core.ObjectIdentifier(oid).dump()


def _attribute(oid: str, value: bytes) -> bytes:
    """An Attribute (SEQUENCE of its type and a SET of one value), written as DER; ``value`` is DER."""
    return der.sequence(_attribute_type(oid), der.tlv(der.SET, value))


def encode_attributes(
    *,
    content_digest: bytes,
    message_type: str,
    transaction_id: str,
    sender_nonce: bytes,
    recipient_nonce: bytes | None = None,
    pki_status: str | None = None,
    fail_info: str | None = None,
    fail_info_text: str | None = None,
    signing_time: datetime.datetime | None = None,
) -> list[bytes]:
    """The DER of each signed attribute of a SCEP message, in no particular order."""
    signing_time = signing_time or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    attributes = [
        _attribute(CONTENT_TYPE_OID, der.content_type("data")),
        _attribute(MESSAGE_DIGEST_OID, der.octet_string(content_digest)),
        _attribute(SIGNING_TIME_OID, cms.Time({"utc_time": signing_time}).chosen.dump()),
        _attribute(MESSAGE_TYPE_OID, core.PrintableString(message_type).dump()),
        _attribute(TRANSACTION_ID_OID, core.PrintableString(transaction_id).dump()),
        _attribute(SENDER_NONCE_OID, der.octet_string(sender_nonce)),
    ]
    if recipient_nonce is not None:
        attributes.append(_attribute(RECIPIENT_NONCE_OID, der.octet_string(recipient_nonce)))
    if pki_status is not None:
        attributes.append(_attribute(PKI_STATUS_OID, core.PrintableString(pki_status).dump()))
    if fail_info is not None:
        attributes.append(_attribute(FAIL_INFO_OID, core.PrintableString(fail_info).dump()))
    if fail_info_text is not None:
        attributes.append(_attribute(FAIL_INFO_TEXT_OID, core.UTF8String(fail_info_text).dump()))
    return attributes
