"""What the proxy reads from messages it forwards untouched (no keys, no verification).

It refuses obvious garbage before spending a one-time challenge, reads a
CertRep's unencrypted pkiStatus so the host profile's status tells the truth,
and lists the certificates of a GetCACert answer when a CA is added.
"""

from asn1crypto import cms, core, x509

from scepproxyd.scep.codec.attributes import FAIL_INFO_NAMES, FAIL_INFO_OID, PKI_STATUS_NAMES, PKI_STATUS_OID
from scepproxyd.scep.codec.errors import MessageError, decoding
from scepproxyd.scep.codec.signed import load_signed_data


@decoding
def _checked_signed_data(der: bytes) -> cms.SignedData:
    signed = load_signed_data(der)
    # Touch the parts a SCEP message must have, so truncation shows up here.
    signed["signer_infos"].native  # noqa: B018
    return signed


def _signed_data(der: bytes) -> cms.SignedData | None:
    try:
        return _checked_signed_data(der)
    except MessageError:
        return None


def looks_like_pki_message(der: bytes) -> bool:
    """True when ``der`` parses as CMS SignedData with at least one signer."""
    signed = _signed_data(der)
    return signed is not None and len(signed["signer_infos"]) > 0


def _signed_attribute(signed: cms.SignedData, oid: str) -> str | None:
    for signer in signed["signer_infos"]:
        attributes = signer["signed_attrs"]
        if not attributes:
            continue
        for attribute in attributes:
            if attribute["type"].dotted == oid:
                values = attribute["values"]
                if len(values) == 0:
                    return None
                value = values[0]
                parsed = value.parsed if isinstance(value, core.Any) else value
                if isinstance(parsed, (core.PrintableString, core.UTF8String, core.IA5String)):
                    return parsed.native
                return None
    return None


@decoding
def _status_attributes(der: bytes) -> tuple[str | None, str | None]:
    signed = _checked_signed_data(der)
    return _signed_attribute(signed, PKI_STATUS_OID), _signed_attribute(signed, FAIL_INFO_OID)


def cert_rep_status(der: bytes) -> tuple[str | None, str | None]:
    """Return ``(pkiStatus, failInfo)`` names of a CertRep, or ``(None, None)`` if unreadable."""
    try:
        status, fail = _status_attributes(der)
    except MessageError:
        return None, None
    return PKI_STATUS_NAMES.get(status or "", None), FAIL_INFO_NAMES.get(fail or "", fail)


@decoding
def _single_certificate(body: bytes) -> list[bytes]:
    x509.Certificate.load(body, strict=True).native  # noqa: B018
    return [body]


@decoding
def _chain_certificates(body: bytes) -> list[bytes]:
    signed = _checked_signed_data(body)
    return [cert.chosen.dump() for cert in signed["certificates"] or [] if cert.name == "certificate"]


def ca_certificates(body: bytes) -> list[bytes]:
    """DER certificates in a GetCACert answer: one DER certificate, or a certs-only PKCS#7 chain."""
    for read in (_single_certificate, _chain_certificates):
        try:
            return read(body)
        except MessageError:
            pass
    return []
