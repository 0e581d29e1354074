"""SCEP message structure (RFC 8894), read with asn1crypto.

The proxy forwards messages untouched; it only looks inside to refuse
obvious garbage before spending a one-time challenge, and to read a CertRep's
unencrypted pkiStatus so the host profile's status tells the truth.
"""

from asn1crypto import cms, core, x509

# id-pkiStatus from RFC 8894 section 3.2.1.
_PKI_STATUS_OID = "2.16.840.1.113733.1.9.3"
_FAIL_INFO_OID = "2.16.840.1.113733.1.9.4"
PKI_STATUS_NAMES = {"0": "SUCCESS", "2": "FAILURE", "3": "PENDING"}
FAIL_INFO_NAMES = {
    "0": "badAlg",
    "1": "badMessageCheck",
    "2": "badRequest",
    "3": "badTime",
    "4": "badCertId",
}


def _signed_data(der: bytes) -> cms.SignedData | None:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            return None
        signed = info["content"]
        # Touch the parts a SCEP message must have, so truncation shows up here.
        signed["signer_infos"].native  # noqa: B018
        return signed
    except (ValueError, TypeError, KeyError):
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


def cert_rep_status(der: bytes) -> tuple[str | None, str | None]:
    """Return ``(pkiStatus, failInfo)`` names of a CertRep, or ``(None, None)`` if unreadable."""
    signed = _signed_data(der)
    if signed is None:
        return None, None
    status = _signed_attribute(signed, _PKI_STATUS_OID)
    fail = _signed_attribute(signed, _FAIL_INFO_OID)
    return PKI_STATUS_NAMES.get(status or "", None), FAIL_INFO_NAMES.get(fail or "", fail)


def ca_certificates(body: bytes) -> list[bytes]:
    """DER certificates in a GetCACert answer: one DER certificate, or a certs-only PKCS#7 chain."""
    try:
        x509.Certificate.load(body, strict=True).native  # noqa: B018
        return [body]
    except (ValueError, TypeError):
        pass
    signed = _signed_data(body)
    if signed is None or not signed["certificates"]:
        return []
    return [cert.chosen.dump() for cert in signed["certificates"] if cert.name == "certificate"]
