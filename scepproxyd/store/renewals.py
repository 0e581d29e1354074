"""
What devices report back (installed profiles, certificates), and renewal before expiry.

A host profile is 'verified' once its device reports the profile installed
or a certificate carrying its renewal ID. The certificate's dates are kept,
so the renewal job can send the profile again, with a fresh challenge,
before the certificate expires; with renewal pacing (scepproxyd.pacing),
per CA at the pace its row in renewal_windows keeps for every node.
"""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.database import IN_LIST_CHUNK, chunks, placeholders, skip_locked
from scepproxyd.store.models import check_positive

# Statuses a device's report can confirm.
_AWAITING_DEVICE = "('pending', 'verifying')"

# Due when less than the threshold is left; a certificate valid for no longer
# than the threshold is due when less than short_fraction of its validity is
# left (else it would be due the moment it is issued). The cert_not_after
# bound repeats the condition in a form the (status, cert_not_after) index can
# range over. Parameters: _due_params. Columns unqualified: host_profiles' own.
_DUE = (
    "status = 'verified' AND cert_not_before IS NOT NULL AND cert_not_after < ?"
    " AND ((cert_not_after - cert_not_before > ? AND cert_not_after - ? < ?)"
    "  OR (cert_not_after - cert_not_before <= ? AND cert_not_after - ? < (cert_not_after - cert_not_before) * ?))"
)

# The CA a host profile's renewals are paced under: its profile's, or '-' for a
# profile that names none (no CA name can be '-'). One parameter: the CA.
_OF_CA = " AND profile_uuid IN (SELECT uuid FROM profiles WHERE COALESCE(ca_name, '-') = ?)"

# Soonest expiry first. {ca}: "" (every CA) or _OF_CA.
_MARK_DUE = (
    "WITH due AS MATERIALIZED (SELECT host_uuid, profile_uuid FROM host_profiles"
    "  WHERE " + _DUE + "{ca}"
    "  ORDER BY cert_not_after LIMIT ?{lock})"
    " UPDATE host_profiles SET status = NULL, retries = 0,"
    " detail = 'renewing: certificate expires ' || utc_iso(host_profiles.cert_not_after), updated_at = ?"
    " FROM due"
    " WHERE host_profiles.host_uuid = due.host_uuid AND host_profiles.profile_uuid = due.profile_uuid"
    " AND host_profiles.status = 'verified' RETURNING 1"  # sqlite3 gives no rowcount for WITH ... UPDATE
)

_DUE_BY_CA = (
    "SELECT COALESCE(profiles.ca_name, '-'), count(*) FROM host_profiles"
    " JOIN profiles ON profiles.uuid = host_profiles.profile_uuid"
    " WHERE " + _DUE + " GROUP BY COALESCE(profiles.ca_name, '-')"
)

# A CA's pace (scepproxyd.pacing): made when first needed, then moved to the
# caller's window (its count from 0) unless it is there already, or at a
# later one (a node whose clock is behind). The UPDATE locks the row on
# PostgreSQL until the transaction ends, so two nodes starting renewals for
# one CA take turns and each sees what the other started.
_NEW_PACE = (
    "INSERT INTO renewal_windows (ca_name, window_start, started, next_start_at) VALUES (?, ?, 0, 0)"
    " ON CONFLICT (ca_name) DO NOTHING"
)
_OPEN_PACE = (
    "UPDATE renewal_windows SET started = CASE WHEN window_start < ? THEN 0 ELSE started END,"
    " window_start = CASE WHEN window_start < ? THEN ? ELSE window_start END"
    " WHERE ca_name = ? RETURNING window_start, started, next_start_at"
)

# A CA's due host profiles left waiting. Parameters: _due_params, the CA.
_WAITING = "SELECT count(*) FROM host_profiles WHERE " + _DUE + _OF_CA

# Which of them the pace would start only after their certificate expires:
# queue_place 1 is the next to start, and starts by base + queue_place *
# seconds_per_start at the latest (the job has base from the CA's pace,
# CaPace.waiting_bound); an expired one has missed already. Only the soonest
# expiring are ranked: those expiring after the last one's bound (the
# horizon) cannot miss, and leaving them out changes no one's place.
# Parameters: now, base, seconds_per_start, _due_params, the CA, the horizon.
_MISSING = (
    "SELECT count(missed), min(missed) FROM ("
    " SELECT CASE WHEN cert_not_after <= ? OR cert_not_after <= ? + queue_place * ? THEN cert_not_after END"
    "  AS missed FROM ("
    "  SELECT cert_not_after, ROW_NUMBER() OVER (ORDER BY cert_not_after) AS queue_place FROM host_profiles"
    "  WHERE " + _DUE + _OF_CA + " AND cert_not_after <= ?) ranked) judged"
)


def _due_params(now: float, threshold_seconds: float, short_fraction: float) -> tuple:
    horizon = now + threshold_seconds * max(1.0, short_fraction)
    return (horizon, threshold_seconds, now, threshold_seconds, threshold_seconds, now, short_fraction)


class RenewalQueries:
    def profiles_installed(self, host_uuid, identifiers) -> defer.Deferred:
        """
        The device has these profiles installed: verify the matching host profiles; fires how many changed.

        Each entry may be a profile uuid or a profile identifier (Apple
        PayloadIdentifier, Android template name). Only pending and
        verifying host profiles of this host change. A Windows SyncML
        profile is never verified this way: Windows applies the SyncML and
        enrolls later, on its own, so "installed" says nothing about a
        certificate; only an issued or reported certificate verifies it.
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
                    f" WHERE p.uuid = host_profiles.profile_uuid AND p.kind <> 'windows_syncml'"
                    f" AND (p.uuid IN ({marks}) OR p.identifier IN ({marks})))",
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
        params = (*_due_params(now, threshold_seconds, short_fraction), limit, now)

        def mark_due_for_renewal(conn):
            check_positive(limit, "limit")
            sql = _MARK_DUE.format(ca="", lock=skip_locked(conn, "host_profiles"))
            return len(conn.execute(sql, params).fetchall())

        return self._submit(mark_due_for_renewal)

    # -- pacing (scepproxyd.pacing decides how many; these count and start them) --

    def due_renewals_by_ca(self, threshold_seconds: float, short_fraction: float) -> defer.Deferred:
        """How many verified host profiles are due for renewal, per CA; fires ``{ca_name or "-": count}``."""
        params = _due_params(self._clock.seconds(), threshold_seconds, short_fraction)

        def due_renewals_by_ca(conn):
            return dict(conn.execute(_DUE_BY_CA, params).fetchall())

        return self._submit(due_renewals_by_ca, write=False)

    def start_renewals(
        self, ca_name: str, threshold_seconds: float, short_fraction: float, batch: int,
        window_start: float | None = None, pace=None,
    ) -> defer.Deferred:
        """
        Send due host profiles of one CA (``"-"``: profiles naming none) back to NULL, soonest expiry
        first; fires ``(started, window_started, next_at)``.

        Without ``pace``: at most ``batch``, and no count kept (the last two
        are None). With it (a scepproxyd.pacing.CaPace): the CA's count for
        the window beginning at ``window_start`` and its next-start moment
        are locked for the transaction, ``pace.allowance`` says how many may
        start (at most ``batch`` do), and both are written back;
        ``window_started`` and ``next_at`` are as they are after, other
        nodes' starts included. A node whose clock is behind a window
        already counted starts none and hears ``window_started`` None.
        """
        now = self._clock.seconds()
        due = _due_params(now, threshold_seconds, short_fraction)

        def start_renewals(conn):
            check_positive(batch, "batch")
            room, counted, next_at = batch, None, None
            if pace is not None:
                conn.execute(_NEW_PACE, (ca_name, window_start))
                ((recorded, counted, next_at),) = conn.execute(
                    _OPEN_PACE, (window_start, window_start, window_start, ca_name)).fetchall()
                if recorded > window_start:
                    return 0, None, next_at
                room = min(batch, pace.allowance(counted, next_at))
                if room <= 0:
                    return 0, counted, next_at
            sql = _MARK_DUE.format(ca=_OF_CA, lock=skip_locked(conn, "host_profiles"))
            started = len(conn.execute(sql, (*due, ca_name, room, now)).fetchall())
            if pace is None:
                return started, None, None
            if started:
                next_at = pace.advanced(next_at, started)
                conn.execute("UPDATE renewal_windows SET started = started + ?, next_start_at = ? WHERE ca_name = ?",
                             (started, next_at, ca_name))
            return started, counted + started, next_at

        return self._submit(start_renewals)

    def renewal_backlog(
        self, ca_name: str, threshold_seconds: float, short_fraction: float, base: float, seconds_per_start: float,
    ) -> defer.Deferred:
        """
        A CA's due host profiles still waiting, and how many of them the pace would start only after
        their certificate expired; fires ``(waiting, missing, earliest expiry missed or None)``.

        The pace, as the caller knows it: the n-th to start (soonest expiry
        first) starts by ``base + n * seconds_per_start`` at the latest.
        """
        now = self._clock.seconds()
        due = (*_due_params(now, threshold_seconds, short_fraction), ca_name)

        def renewal_backlog(conn):
            ((waiting,),) = conn.execute(_WAITING, due).fetchall()
            horizon = max(now, base + waiting * seconds_per_start)
            # In the order of the statement's text: the outer judgement, then the inner selection.
            ((missing, earliest),) = conn.execute(_MISSING, (now, base, seconds_per_start, *due, horizon)).fetchall()
            return waiting, missing, earliest

        return self._submit(renewal_backlog, write=False)
