"""Certificates that devices report: parse them, and find which host profile each renews.

A certificate belongs to a host profile when that host profile's renewal ID
appears in the certificate subject's CN or OU, which is where the profile
rules put the renewal-ID variable.
"""

import re

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from scepproxyd.store.models import RENEWAL_ID_PATTERN

MAX_CERTIFICATES_PER_REPORT = 100

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+.*?-----END CERTIFICATE-----", re.DOTALL
)


class CertificateReportError(ValueError):
    """A report that cannot be read; ``str()`` says why."""


@attrs.frozen
class ReportedCertificate:
    serial: str
    not_before: float
    not_after: float
    subject_values: tuple[str, ...]  # the CN and OU values, where renewal IDs live

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after

    def renewal_ids(self, known: dict[str, str]) -> list[str]:
        """The known renewal IDs found in this certificate's CN or OU."""
        return [rid for rid in known if any(rid in value for value in self.subject_values)]

    def renewal_id_candidates(self) -> list[str]:
        """Everything in the CN or OU shaped like a renewal ID, known or not (to spot another host's)."""
        found = [rid for value in self.subject_values for rid in RENEWAL_ID_PATTERN.findall(value)]
        return list(dict.fromkeys(found))


def parse_certificate(pem: str | bytes) -> ReportedCertificate:
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        try:
            cert = x509.load_der_x509_certificate(data)
        except ValueError:
            raise CertificateReportError("not a PEM or DER X.509 certificate") from None
    values = []
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
        values.extend(str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(oid))
    return ReportedCertificate(
        serial="%x" % (cert.serial_number,),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        subject_values=tuple(values),
    )


def split_pem_bundle(text: str) -> list[bytes]:
    """Every certificate block in a PEM bundle, in order."""
    return _PEM_BLOCK.findall(text.encode("ascii", "replace"))
