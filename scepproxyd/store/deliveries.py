"""
Deliveries stuck between hand-over and report: sent again after ``[delivery] stuck_after``.

An agent that fetched a host profile (its command 'delivered', the host
profile still 'pending') and then never acknowledged, reported an error or
enrolled leaves the host profile "delivering" for good: the agent crashed,
was wiped, or lost the answer. After the configured time the host profile
goes back to NULL, so the processing job sends it again with a fresh
challenge, and in the same transaction every challenge it was given stops
working (proxy and built-in CA ones), so the copy the agent fetched can no
longer enroll. No retry is counted: nothing failed that the device said.

Claiming is the processing job's: one UPDATE ... FROM a batch picked with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, whose outer WHERE re-checks
``status = 'pending'`` and the command, so two nodes running this at once
never both send a host profile again. A host profile with a challenge in
flight (its device is enrolling right now) is left alone.
"""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.assignments import retire_sent_copies
from scepproxyd.store.database import chunks, placeholders, skip_locked
from scepproxyd.store.models import ResentHostProfile

#: The detail of a host profile sent again because its agent fetched it and never reported.
STUCK_DETAIL = (
    "the agent fetched the profile but reported nothing within [delivery] stuck_after; sent again with a fresh"
    " challenge"
)
_BATCH = 1000
# {lock}: database.skip_locked. SQLite's RETURNING sees only the updated table, so the
# command is returned (it stays the host profile's until the next claim replaces it).
# The join names the host profile's key too, so either side's index can lead: delivered
# commands oldest first (commands_status_updated_at), each host profile by its key.
_RECOVER = (
    "WITH batch AS MATERIALIZED ("
    " SELECT w.host_uuid, w.profile_uuid, w.command_uuid FROM host_profiles w"
    "  JOIN commands c ON c.command_uuid = w.command_uuid"
    "   AND c.host_uuid = w.host_uuid AND c.profile_uuid = w.profile_uuid"
    "  WHERE w.status = 'pending' AND c.status = 'delivered' AND c.updated_at < ?"
    "  AND NOT EXISTS (SELECT 1 FROM challenges_in_flight f"
    "   WHERE f.host_uuid = w.host_uuid AND f.profile_uuid = w.profile_uuid)"
    "  ORDER BY c.updated_at LIMIT ?{lock})"
    " UPDATE host_profiles SET status = NULL, detail = ?, proxy_challenge_hash = NULL, updated_at = ?"
    " FROM batch"
    " WHERE host_profiles.host_uuid = batch.host_uuid AND host_profiles.profile_uuid = batch.profile_uuid"
    " AND host_profiles.status = 'pending' AND host_profiles.command_uuid = batch.command_uuid"
    " RETURNING host_profiles.host_uuid, host_profiles.profile_uuid, host_profiles.command_uuid,"
    " (SELECT p.ca_name FROM profiles p WHERE p.uuid = host_profiles.profile_uuid)"
)


class DeliveryQueries:
    def recover_stuck_deliveries(self, stuck_after: float, on_resent=None) -> defer.Deferred:
        """
        Send again every host profile fetched more than ``stuck_after`` seconds ago and never reported.

        Fires the tuple of ResentHostProfile (``waited``: seconds since the
        agent first fetched it). In batches, each its own transaction;
        ``on_resent`` is called with each batch's as it is done (the cleanup
        job logs them there).
        """
        now = self._clock.seconds()
        cutoff = now - stuck_after

        def recover_stuck_deliveries(conn):
            if not stuck_after > 0:
                raise ValueError(f"stuck_after must be a positive number of seconds, not {stuck_after!r}")
            rows = conn.execute(
                _RECOVER.format(lock=skip_locked(conn, "w")), (cutoff, _BATCH, STUCK_DETAIL, now)
            ).fetchall()  # fetched before anything else runs
            fetched = {}
            for batch in chunks([command_uuid for _, _, command_uuid, _ in rows]):
                fetched.update(conn.execute(
                    f"SELECT command_uuid, updated_at FROM commands WHERE command_uuid IN ({placeholders(batch)})",
                    batch,
                ))
            pairs = [(host_uuid, profile_uuid) for host_uuid, profile_uuid, _, _ in rows]
            retire_sent_copies(conn, pairs, now)  # the copy the agent holds must not enroll any more
            return len(rows), tuple(
                ResentHostProfile(host_uuid, profile_uuid, ca_name, now - fetched.get(command_uuid, now))
                for host_uuid, profile_uuid, command_uuid, ca_name in rows
            )

        # Each batch its own transaction, through the store's one batch loop (it "deletes" host profiles
        # from the stuck set: the count decides whether another batch follows).
        d = self._collect_in_batches(recover_stuck_deliveries, _BATCH, on_resent)
        return d.addCallback(lambda done: done[1])
