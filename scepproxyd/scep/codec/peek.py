"""What the proxy reads from messages it forwards untouched (no keys, no verification).

It refuses obvious garbage before spending a one-time challenge, reads a
CertRep's unencrypted pkiStatus so the host profile's status tells the truth,
and lists the certificates of a GetCACert answer when a CA is added.

The first two run on the reactor for every PKIOperation, so they ask
``skim`` first: it reads the common shapes straight from the bytes, about
six times faster, and gives way to the full asn1crypto parse (the
``_full_`` functions here) for any shape it cannot judge exactly. The
answers are the full parse's either way (tests/test_codec_skim.py).
"""

from asn1crypto import cms, core, x509

from scepproxyd.scep.codec.attributes import FAIL_INFO_NAMES, FAIL_INFO_OID, PKI_STATUS_NAMES, PKI_STATUS_OID
from scepproxyd.scep.codec.errors import MessageError, decoding
from scepproxyd.scep.codec.signed import load_signed_data
from scepproxyd.scep.codec.skim import CannotJudge, skim


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


def _full_looks_like_pki_message(der: bytes) -> bool:
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
def _statuses(signed: cms.SignedData) -> tuple[str | None, str | None]:
    return _signed_attribute(signed, PKI_STATUS_OID), _signed_attribute(signed, FAIL_INFO_OID)


@decoding
def _status_attributes(der: bytes) -> tuple[str | None, str | None]:
    return _statuses(_checked_signed_data(der))


def _status_names(status: str | None, fail: str | None) -> tuple[str | None, str | None]:
    return PKI_STATUS_NAMES.get(status or "", None), FAIL_INFO_NAMES.get(fail or "", fail)


def _full_cert_rep_status(der: bytes) -> tuple[str | None, str | None]:
    try:
        status, fail = _status_attributes(der)
    except MessageError:
        return None, None
    return _status_names(status, fail)


def _full_pki_message_status(der: bytes) -> tuple[bool, str | None, str | None]:
    """Both full answers from one parse: the same parse each of them makes."""
    signed = _signed_data(der)
    if signed is None:
        return False, None, None
    try:
        status, fail = _statuses(signed)
    except MessageError:
        return len(signed["signer_infos"]) > 0, None, None
    return (len(signed["signer_infos"]) > 0, *_status_names(status, fail))


def looks_like_pki_message(der: bytes) -> bool:
    """True when ``der`` parses as CMS SignedData with at least one signer."""
    try:
        skimmed = skim(der)
    except CannotJudge:
        return _full_looks_like_pki_message(der)
    return skimmed is not None and skimmed[0] > 0


def cert_rep_status(der: bytes) -> tuple[str | None, str | None]:
    """Return ``(pkiStatus, failInfo)`` names of a CertRep, or ``(None, None)`` if unreadable."""
    try:
        skimmed = skim(der)
    except CannotJudge:
        return _full_cert_rep_status(der)
    return (None, None) if skimmed is None else _status_names(skimmed[1], skimmed[2])


def pki_message_status(der: bytes) -> tuple[bool, str | None, str | None]:
    """``(looks_like_pki_message(der), *cert_rep_status(der))`` from one look at the bytes.

    What the proxy wants of an upstream answer: its pkiStatus and failInfo, and
    whether it is a SCEP message at all when it has no pkiStatus.
    """
    try:
        skimmed = skim(der)
    except CannotJudge:
        return _full_pki_message_status(der)
    if skimmed is None:
        return False, None, None
    return (skimmed[0] > 0, *_status_names(skimmed[1], skimmed[2]))


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
