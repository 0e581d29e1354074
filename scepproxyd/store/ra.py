"""RA mode's records: the certificate an upstream CA issued, landed on its host profile, and renewal claims."""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.models import ConsumedChallenge

_ONE = "host_uuid = ? AND profile_uuid = ?"
# The certificate the RA just got lands like the built-in CA's (store.ca.RECORD_ON_HOST_PROFILE), except
# that it always replaces the certificate it renews, and wins a tie on not-before: CAs write whole seconds
# (step-ca backdates by a minute), so a renewal in the same second as its enrollment has the same
# not-before, and with "<" the old certificate would stay recorded, free to renew again.
_RECORD_RA_CERTIFICATE = (
    "UPDATE host_profiles SET cert_serial = ?, cert_not_before = ?, cert_not_after = ?,"
    " status = CASE WHEN status IN ('pending', 'verifying') THEN 'verified' ELSE status END, updated_at = ?"
    f" WHERE {_ONE} AND (cert_not_before IS NULL OR cert_not_before <= ? OR cert_serial = ?)"
)


class RaQueries:
    def ra_certificate_issued(self, host_uuid, profile_uuid, serial: str, not_before: float, not_after: float,
                              consumed: ConsumedChallenge | None = None, renewed_serial: str | None = None
                              ) -> defer.Deferred:
        """
        The upstream CA issued a certificate the RA asked for: record it on the host profile, in one transaction.

        The proxy challenge that authorised it (``consumed``) is spent for
        good and a renewal claim on ``renewed_serial`` is let go in the same
        transaction. Dates never move backwards, except that the certificate
        replaces the one it renews; an awaiting host profile becomes
        verified, as when its device reports the certificate. Fires whether
        the host profile took the certificate.
        """
        now = self._clock.seconds()

        def ra_certificate_issued(conn):
            if consumed is not None:
                conn.execute("DELETE FROM challenges_in_flight WHERE challenge_hash = ?", (consumed.challenge_hash,))
            if renewed_serial is not None:
                conn.execute(
                    "UPDATE host_profiles SET ra_renewing_serial = NULL, ra_renewing_since = NULL"
                    f" WHERE {_ONE} AND ra_renewing_serial = ?",
                    (host_uuid, profile_uuid, renewed_serial),
                )
            return conn.execute(
                _RECORD_RA_CERTIFICATE,
                (serial, not_before, not_after, now, host_uuid, profile_uuid, not_before, renewed_serial),
            ).rowcount > 0

        return self._submit(ra_certificate_issued, group=True)

    def claim_ra_renewal(self, host_uuid, profile_uuid, serial: str, stale_after: float) -> defer.Deferred:
        """
        Claim the renewal of the certificate ``serial`` recorded on this host profile; fires whether it was claimed.

        Fails when another certificate is recorded there (the device renews
        one it no longer holds on this host profile, or one renewed
        already) or another request is renewing it right now; a claim older
        than ``stale_after`` seconds was left by a node that died mid-call
        and is taken over.
        """
        now = self._clock.seconds()

        def claim_ra_renewal(conn):
            return conn.execute(
                "UPDATE host_profiles SET ra_renewing_serial = ?, ra_renewing_since = ?"
                f" WHERE {_ONE} AND cert_serial = ?"
                " AND (ra_renewing_serial IS NULL OR ra_renewing_since < ?)",
                (serial, now, host_uuid, profile_uuid, serial, now - stale_after),
            ).rowcount > 0

        return self._submit(claim_ra_renewal, group=True)

    def release_ra_renewal(self, host_uuid, profile_uuid, serial: str) -> defer.Deferred:
        """Let go of a renewal claim without a certificate (the CA refused, said PENDING, or never answered)."""

        def release_ra_renewal(conn):
            conn.execute(
                "UPDATE host_profiles SET ra_renewing_serial = NULL, ra_renewing_since = NULL"
                f" WHERE {_ONE} AND ra_renewing_serial = ?",
                (host_uuid, profile_uuid, serial),
            )

        return self._submit(release_ra_renewal, group=True)
