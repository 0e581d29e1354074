"""
What devices report back (installed profiles, certificates), and renewal before expiry.

A host profile is 'verified' once its device reports the profile installed
or a certificate carrying its renewal ID. The certificate's dates are kept,
so the renewal job can send the profile again, with a fresh challenge,
before the certificate expires.
"""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.database import IN_LIST_CHUNK, chunks, placeholders, skip_locked
from scepproxyd.store.models import check_positive

# Statuses a device's report can confirm.
_AWAITING_DEVICE = "('pending', 'verifying')"

# Due when less than the threshold is left; a certificate valid for no longer
# than the threshold is due when less than short_fraction of its validity is
# left (else it would be due the moment it is issued). Soonest expiry first.
# The cert_not_after bound repeats the condition in a form the
# (status, cert_not_after) index can range over.
_MARK_DUE = (
    "WITH due AS MATERIALIZED (SELECT host_uuid, profile_uuid FROM host_profiles"
    "  WHERE status = 'verified' AND cert_not_before IS NOT NULL AND cert_not_after < ?"
    "  AND ((cert_not_after - cert_not_before > ? AND cert_not_after - ? < ?)"
    "   OR (cert_not_after - cert_not_before <= ? AND cert_not_after - ? < (cert_not_after - cert_not_before) * ?))"
    "  ORDER BY cert_not_after LIMIT ?{lock})"
    " UPDATE host_profiles SET status = NULL, retries = 0,"
    " detail = 'renewing: certificate expires ' || utc_iso(host_profiles.cert_not_after), updated_at = ?"
    " FROM due"
    " WHERE host_profiles.host_uuid = due.host_uuid AND host_profiles.profile_uuid = due.profile_uuid"
    " AND host_profiles.status = 'verified' RETURNING 1"  # sqlite3 gives no rowcount for WITH ... UPDATE
)


class RenewalQueries:
    def profiles_installed(self, host_uuid, identifiers) -> defer.Deferred:
        """
        The device has these profiles installed: verify the matching host profiles; fires how many changed.

        Each entry may be a profile uuid or a profile identifier (Apple
        PayloadIdentifier, Android template name). Only pending and
        verifying host profiles of this host change.
        """
        now = self._clock.seconds()
        identifiers = list(dict.fromkeys(identifiers))

        def profiles_installed(conn):
            changed = 0
            for keys in chunks(identifiers, IN_LIST_CHUNK // 2):  # each chunk is bound twice
                marks = placeholders(keys)
                changed += conn.execute(
                    "UPDATE host_profiles SET status = 'verified', updated_at = ?"
                    f" WHERE host_uuid = ? AND status IN {_AWAITING_DEVICE} AND EXISTS (SELECT 1 FROM profiles p"
                    f" WHERE p.uuid = host_profiles.profile_uuid AND (p.uuid IN ({marks}) OR p.identifier IN ({marks})))",
                    [now, host_uuid, *keys, *keys],
                ).rowcount
            return changed

        return self._submit(profiles_installed)

    def renewal_ids_for_host(self, host_uuid) -> defer.Deferred:
        """The host's renewal IDs, each mapped to its profile uuid, to match against reported certificates."""

        def renewal_ids_for_host(conn):
            return dict(conn.execute(
                "SELECT renewal_id, profile_uuid FROM host_profiles WHERE host_uuid = ? AND renewal_id IS NOT NULL",
                (host_uuid,),
            ))

        return self._submit(renewal_ids_for_host, write=False)

    def renewal_id_owners(self, renewal_ids) -> defer.Deferred:
        """Which host each of these renewal IDs belongs to; fires ``{renewal_id: host_uuid}`` for known ones."""
        renewal_ids = list(dict.fromkeys(renewal_ids))

        def renewal_id_owners(conn):
            owners = {}
            for keys in chunks(renewal_ids):
                owners.update(conn.execute(
                    f"SELECT renewal_id, host_uuid FROM host_profiles WHERE renewal_id IN ({placeholders(keys)})", keys))
            return owners

        return self._submit(renewal_id_owners, write=False)

    def record_certificate(self, host_uuid, renewal_id, serial: str, not_before: float, not_after: float):
        """
        Keep a reported certificate's serial and dates; fires "recorded", "older" or "unknown".

        "older": the stored certificate is not older (by not_before) than
        this one, so nothing changes and dates never move backwards;
        "unknown": the host has no host profile with this renewal ID. When
        recorded, a pending or verifying host profile becomes 'verified'.
        """
        now = self._clock.seconds()

        def record_certificate(conn):
            recorded = conn.execute(
                "UPDATE host_profiles SET cert_serial = ?, cert_not_before = ?, cert_not_after = ?,"
                f" status = CASE WHEN status IN {_AWAITING_DEVICE} THEN 'verified' ELSE status END, updated_at = ?"
                " WHERE host_uuid = ? AND renewal_id = ? AND (cert_not_before IS NULL OR cert_not_before < ?)",
                (serial, not_before, not_after, now, host_uuid, renewal_id, not_before),
            ).rowcount
            if recorded:
                return "recorded"
            known = conn.execute(
                "SELECT 1 FROM host_profiles WHERE host_uuid = ? AND renewal_id = ?", (host_uuid, renewal_id)
            ).fetchone()
            return "older" if known else "unknown"

        return self._submit(record_certificate, group=True)

    def mark_due_for_renewal(self, threshold_seconds: float, short_fraction: float, limit: int) -> defer.Deferred:
        """
        Send verified host profiles whose certificate nears expiry back to NULL; fires how many.

        Due when less than ``threshold_seconds`` of the certificate is left,
        or, for a certificate valid for at most that long, less than
        ``short_fraction`` of its validity. At most ``limit`` per call,
        soonest expiry first, so the caller loops until fewer come back.
        """
        now = self._clock.seconds()
        horizon = now + threshold_seconds * max(1.0, short_fraction)
        params = (
            horizon, threshold_seconds, now, threshold_seconds, threshold_seconds, now, short_fraction, limit, now,
        )

        def mark_due_for_renewal(conn):
            check_positive(limit, "limit")
            return len(conn.execute(_MARK_DUE.format(lock=skip_locked(conn, "host_profiles")), params).fetchall())

        return self._submit(mark_due_for_renewal)
