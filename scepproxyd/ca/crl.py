"""The built-in CA's certificate revocation list, built on demand and cached.

Clients fetch the CRL far more often than anything is revoked, so the DER is
kept and rebuilt only after a revocation or when half its validity has gone
(so a CRL served is never close to its nextUpdate).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import defer

from scepproxyd.ca.issuer import authority_key_identifier

#: Revocation reasons an admin may give, as RFC 5280 names them (snake_case).
REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def _time(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)


def build_crl(ca_key, ca_certificate, revoked, now: float, validity: float, number: int | None = None):
    """
    A CRL listing ``revoked`` (``(serial_hex, revoked_at, reason)`` rows), valid for ``validity`` seconds.

    ``number`` (the CRLNumber) must grow with every CRL; the build time does across restarts.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(_time(now))
        .next_update(_time(now + validity))
        .add_extension(x509.CRLNumber(number if number is not None else int(now)), critical=False)
        .add_extension(authority_key_identifier(ca_certificate), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(_time(revoked_at))
        flag = REVOCATION_REASONS.get(reason or "")
        if flag is not None and flag is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, hashes.SHA256())


class CrlCache:
    """
    Hands out the current CRL as DER; ``invalidate()`` after each revocation.

    Another node sharing the database revokes without telling this one, so
    the cache also looks at the database's revocation mark (count and
    latest revocation time) at most every ``check_interval`` seconds and
    rebuilds when it moved: every node serves the same revocations within
    that bound.
    """

    check_interval = 2.0

    def __init__(self, store, material, validity: float, clock, run_in_thread):
        self._store = store
        self._material = material
        self._validity = validity
        self._clock = clock
        self._run_in_thread = run_in_thread
        self._der: bytes | None = None
        self._built_at = 0.0
        self._generation = 0
        self._number = 0
        self._mark = None
        self._checked_at = None

    def invalidate(self) -> None:
        self._der = None
        self._generation += 1

    async def der(self) -> bytes:
        now = self._clock.seconds()
        if self._der is not None and (self._checked_at is None or now - self._checked_at >= self.check_interval):
            mark = await self._store.revocation_mark()
            self._checked_at = now
            if mark != self._mark:
                self.invalidate()  # revoked elsewhere (another node) since this CRL was built
        if self._der is not None and now - self._built_at < self._validity / 2:
            return self._der
        generation = self._generation
        mark = await self._store.revocation_mark()
        revoked = await self._store.revoked_certificates()
        self._number = max(int(now), self._number + 1)
        crl = await self._run_in_thread(
            build_crl, self._material.key, self._material.certificate, revoked, now, self._validity, self._number
        )
        der = crl.public_bytes(serialization.Encoding.DER)
        if generation == self._generation:  # no revocation slipped in while we built it
            self._der, self._built_at, self._mark, self._checked_at = der, now, mark, now
        return der

    def crl(self) -> defer.Deferred:
        return defer.ensureDeferred(self.der())
