"""
Commands: claiming host profiles for delivery, and what becomes of each delivery.

The processing job claims NULL host profiles in batches; each claimed one
gets a new 'queued' command, in the same transaction, so after a crash every
host profile is either still NULL or pending with a deliverable command.
Claiming is one UPDATE ... RETURNING whose WHERE re-checks ``status IS
NULL``, so daemons sharing one database never claim the same row: on SQLite
writers are serialized, and on PostgreSQL the second updater re-evaluates
the condition on the row the first one committed, and skips it.

A command is rendered only when it is handed over (an agent fetches it, or a
push backend sends it); only the host profile's current command
(``host_profiles.command_uuid``) is ever handed over.
"""

from __future__ import annotations

import json

from twisted.internet import defer

from scepproxyd.store.assignments import (
    HOST_PROFILE_COLUMNS,
    ONE_HOST_PROFILE,
    OUTSTANDING_COMMAND,
    count_failed_attempt,
    supersede_outstanding,
)
from scepproxyd.store.database import chunks, one, placeholders, skip_locked
from scepproxyd.store.models import PLATFORMS, ClaimResult, Command, HostProfile, RenderJob, check_positive

_COMMAND_COLUMNS = (
    "command_uuid, host_uuid, profile_uuid, backend, status, detail, attempts, next_attempt_at, created_at, updated_at"
)
_FINISHED_BATCH = 1000

# One statement picks the batch (oldest first, computed once: MATERIALIZED;
# ordered by status too, all NULL here, so that PostgreSQL walks the
# (status, updated_at) index rather than sorting every NULL host profile), sees whether each one's CA is
# gone, and claims it: 'pending' with a new command uuid, or 'failed'. The
# outer ``hp.status IS NULL`` is what keeps a concurrent claimer off the row.
# A new attempt has issued no proxy challenge yet, so the latest one's hash is
# cleared: a replay of the last attempt's URL must not count against this one.
# gen_random_uuid() is PostgreSQL's built-in; the SQLite connection defines it.
# On PostgreSQL the batch's rows are locked as they are picked, skipping any
# another node is claiming right now ({lock}: database.skip_locked), so two
# nodes claim disjoint batches rather than one waiting for the other's rows.
_CLAIM = (
    "WITH batch AS MATERIALIZED ("
    " SELECT w.host_uuid, w.profile_uuid, CASE WHEN ca.name IS NULL THEN p.ca_name END AS missing_ca"
    "  FROM host_profiles w JOIN profiles p ON p.uuid = w.profile_uuid LEFT JOIN cas ca ON ca.name = p.ca_name"
    "  WHERE w.status IS NULL ORDER BY w.status, w.updated_at LIMIT ?{lock})"
    " UPDATE host_profiles SET"
    " status = CASE WHEN batch.missing_ca IS NULL THEN 'pending' ELSE 'failed' END,"
    " detail = CASE WHEN batch.missing_ca IS NULL THEN NULL"
    " ELSE 'CA ''' || batch.missing_ca || ''' no longer exists' END,"
    " command_uuid = CASE WHEN batch.missing_ca IS NULL THEN gen_random_uuid() END,"
    " proxy_challenge_hash = NULL, updated_at = ?"
    " FROM batch"
    " WHERE host_profiles.host_uuid = batch.host_uuid AND host_profiles.profile_uuid = batch.profile_uuid"
    " AND host_profiles.status IS NULL"
    " RETURNING host_profiles.host_uuid, host_profiles.profile_uuid, host_profiles.status, host_profiles.detail,"
    " host_profiles.command_uuid, (SELECT h.platform FROM hosts h WHERE h.uuid = host_profiles.host_uuid)"
)
_INSERT_COMMAND = (
    f"INSERT INTO commands ({_COMMAND_COLUMNS}) VALUES (?, ?, ?, ?, 'queued', NULL, 0, ?, ?, ?)"
)
# A command that may be handed over: its host profile's current one, while
# that host profile is pending. RenderJob's fields, in order.
_RENDER_JOBS = (
    "SELECT c.command_uuid, c.host_uuid, c.profile_uuid, p.kind, p.content, p.ca_name, ca.challenge_ciphertext,"
    " hp.renewal_id, h.platform, COALESCE(ca.builtin, 0), p.variables FROM commands c"
    " JOIN host_profiles hp ON hp.host_uuid = c.host_uuid AND hp.profile_uuid = c.profile_uuid"
    "  AND hp.command_uuid = c.command_uuid AND hp.status = 'pending'"
    " JOIN profiles p ON p.uuid = c.profile_uuid"
    " JOIN hosts h ON h.uuid = c.host_uuid"
    " LEFT JOIN cas ca ON ca.name = p.ca_name"
)


def _render_job(row) -> RenderJob:
    (command_uuid, host_uuid, profile_uuid, kind, content, ca_name, ciphertext, renewal_id, platform, builtin,
     written) = row
    ciphertext = None if ciphertext is None else bytes(ciphertext)
    return RenderJob(
        command_uuid, host_uuid, profile_uuid, kind, bytes(content), ca_name, ciphertext, renewal_id, platform,
        bool(builtin), tuple(json.loads(written)) if written else (),
    )


def _check_backends(backend_for_platform) -> None:
    """Every platform needs a backend: a claimed host profile must always get a deliverable command."""
    missing = [platform for platform in PLATFORMS if platform not in backend_for_platform]
    if missing:
        raise ValueError(f"backend_for_platform names no delivery backend for: {', '.join(missing)}")


class CommandQueries:
    def claim_host_profiles(self, limit: int, backend_for_platform: dict[str, str]) -> defer.Deferred:
        """
        Claim up to ``limit`` NULL host profiles, oldest first; fires a ClaimResult.

        Each becomes 'pending' with a new 'queued' command for its platform's
        backend (due now), and its earlier outstanding commands are
        superseded. One whose profile names a CA that no longer exists
        becomes 'failed' instead. ValueError if ``backend_for_platform``
        lacks a platform.
        """
        now = self._clock.seconds()
        backends = dict(backend_for_platform)

        def claim_host_profiles(conn):
            check_positive(limit, "limit")
            _check_backends(backends)
            rows = conn.execute(_CLAIM.format(lock=skip_locked(conn, "w")), (limit, now)).fetchall()  # fetched before anything else runs
            supersede_outstanding(conn, [(host_uuid, profile_uuid) for host_uuid, profile_uuid, *_ in rows], now)
            claimed = tuple(
                Command(command_uuid, host_uuid, profile_uuid, backends[platform], "queued", None, 0, now, now, now)
                for host_uuid, profile_uuid, status, _detail, command_uuid, platform in rows
                if status == "pending"
            )
            conn.executemany(
                _INSERT_COMMAND,
                ((c.command_uuid, c.host_uuid, c.profile_uuid, c.backend, now, now, now) for c in claimed),
            )
            failed = tuple(
                (host_uuid, profile_uuid, detail) for host_uuid, profile_uuid, status, detail, *_ in rows
                if status == "failed"
            )
            return ClaimResult(claimed, failed)

        return self._submit(claim_host_profiles)

    def commands_for_host(self, host_uuid, backend) -> defer.Deferred:
        """
        The host's current commands for ``backend``, queued or delivered, oldest first, as RenderJobs.

        Delivered ones are included so an agent that lost an answer gets the
        command again (rendered anew, with a fresh challenge).
        """

        def commands_for_host(conn):
            cursor = conn.execute(
                f"{_RENDER_JOBS} WHERE c.host_uuid = ? AND c.backend = ? AND c.{OUTSTANDING_COMMAND}"
                " ORDER BY c.created_at, c.command_uuid",
                (host_uuid, backend),
            )
            return [_render_job(row) for row in cursor]

        return self._submit(commands_for_host, write=False)

    def due_commands(self, backend, limit: int, lease: float = 120.0) -> defer.Deferred:
        """
        Claim the current queued commands of ``backend`` due by now, longest-waiting first, as RenderJobs.

        Each is leased: its next attempt moves ``lease`` seconds on, so no
        other node (and no later call here) takes it while this one sends
        it; on PostgreSQL rows another node is claiming at this moment are
        skipped. Sending settles it (delivered, or a retry time); a node that
        dies first leaves it to be sent again once the lease ends.
        """
        now = self._clock.seconds()

        def due_commands(conn):
            check_positive(limit, "limit")
            rows = conn.execute(
                f"{_RENDER_JOBS} WHERE c.backend = ? AND c.status = 'queued' AND c.next_attempt_at <= ?"
                " ORDER BY c.next_attempt_at, c.created_at, c.command_uuid LIMIT ?" + skip_locked(conn, "c"),
                (backend, now, limit),
            ).fetchall()
            jobs = [_render_job(row) for row in rows]
            for batch in chunks([job.command_uuid for job in jobs]):
                conn.execute(
                    f"UPDATE commands SET next_attempt_at = ? WHERE command_uuid IN ({placeholders(batch)})",
                    (now + lease, *batch),
                )
            return jobs

        return self._submit(due_commands)

    def count_live_challenges(self, backend) -> defer.Deferred:
        """
        How many challenges ``backend`` has handed over that a device may still use; fires the count.

        Those of pending host profiles whose current command the backend
        delivered, neither spent nor past the TTL: push delivery's budget
        (delivery/push.py), so a backlog is not flushed faster than devices
        enroll. A command whose send failed holds none (its challenge is
        retired when it is rendered again).
        """
        cutoff = self._clock.seconds() - self._challenge_ttl

        def count_live_challenges(conn):
            return conn.execute(
                "SELECT count(*) FROM challenges ch"
                " JOIN host_profiles hp ON hp.host_uuid = ch.host_uuid AND hp.profile_uuid = ch.profile_uuid"
                "  AND hp.status = 'pending'"
                " JOIN commands c ON c.command_uuid = hp.command_uuid AND c.status = 'delivered' AND c.backend = ?"
                " WHERE ch.created_at >= ?",
                (backend, cutoff),
            ).fetchone()[0]

        return self._submit(count_live_challenges, write=False)

    def count_due_commands(self, backend) -> defer.Deferred:
        """How many queued commands of ``backend`` are due now (what push delivery holds back at its limit)."""
        now = self._clock.seconds()

        def count_due_commands(conn):
            return conn.execute(
                "SELECT count(*) FROM commands WHERE backend = ? AND status = 'queued' AND next_attempt_at <= ?",
                (backend, now),
            ).fetchone()[0]

        return self._submit(count_due_commands, write=False)

    def command_delivered(self, command_uuid) -> defer.Deferred:
        """Queued -> delivered; fires whether it changed (only a queued command does)."""
        now = self._clock.seconds()

        def command_delivered(conn):
            return conn.execute(
                "UPDATE commands SET status = 'delivered', updated_at = ? WHERE command_uuid = ? AND status = 'queued'",
                (now, command_uuid),
            ).rowcount == 1

        return self._submit(command_delivered, group=True)

    def command_delivery_failed(self, command_uuid, detail, next_attempt_at) -> defer.Deferred:
        """Count a failed hand-over of a queued command and set when to try again; it stays queued."""
        now = self._clock.seconds()

        def command_delivery_failed(conn):
            conn.execute(
                "UPDATE commands SET attempts = attempts + 1, detail = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE command_uuid = ? AND status = 'queued'",
                (detail, next_attempt_at, now, command_uuid),
            )

        return self._submit(command_delivery_failed, group=True)

    def get_command(self, command_uuid) -> defer.Deferred:
        def get_command(conn):
            cursor = conn.execute(f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE command_uuid = ?", (command_uuid,))
            return one(Command, cursor)

        return self._submit(get_command, write=False)

    def command_result(self, command_uuid, ok: bool, detail: str | None = None, host_uuid: str | None = None):
        """
        Record what the device (or the backend) said about a command; fires its host profile after the change.

        None if there is no such command, or it is another host's when
        ``host_uuid`` is given. The host profile moves only while this is its
        current command: ok takes it from 'pending' to 'verifying'; an error
        counts a failed attempt (the retry rule) while it is pending or verifying.
        """
        now = self._clock.seconds()

        def command_result(conn):
            row = conn.execute(
                "SELECT host_uuid, profile_uuid FROM commands WHERE command_uuid = ? AND (? IS NULL OR host_uuid = ?)",
                (command_uuid, host_uuid, host_uuid),
            ).fetchone()
            if row is None:
                return None
            owner, profile_uuid = row
            conn.execute(
                "UPDATE commands SET status = ?, detail = ?, updated_at = ? WHERE command_uuid = ?",
                ("acknowledged" if ok else "error", detail, now, command_uuid),
            )
            if ok:
                changed = one(HostProfile, conn.execute(
                    "UPDATE host_profiles SET status = 'verifying', updated_at = ?"
                    f" WHERE {ONE_HOST_PROFILE} AND status = 'pending' AND command_uuid = ?"
                    f" RETURNING {HOST_PROFILE_COLUMNS}",
                    (now, owner, profile_uuid, command_uuid),
                ))
            else:
                reason = f"device reported an error: {detail}" if detail else "device reported an error"
                changed = count_failed_attempt(
                    conn, owner, profile_uuid, reason, now, self._max_retries,
                    " AND command_uuid = ? AND status IN ('pending', 'verifying')", (command_uuid,),
                )
            if changed is not None:
                return changed
            cursor = conn.execute(
                f"SELECT {HOST_PROFILE_COLUMNS} FROM host_profiles WHERE {ONE_HOST_PROFILE}", (owner, profile_uuid)
            )
            return one(HostProfile, cursor)

        return self._submit(command_result, group=True)

    def delete_finished_commands(self, older_than_seconds: float):
        """
        Delete acknowledged, failed and superseded commands not touched for ``older_than_seconds``; fires the count.

        In batches, each its own job, like delete_expired_challenges.
        """
        cutoff = self._clock.seconds() - older_than_seconds

        def delete_finished_commands(conn):
            return conn.execute(
                "DELETE FROM commands WHERE command_uuid IN (SELECT command_uuid FROM commands"
                " WHERE status IN ('acknowledged', 'error', 'superseded') AND updated_at < ? LIMIT ?)",
                (cutoff, _FINISHED_BATCH),
            ).rowcount

        return self._delete_in_batches(delete_finished_commands, _FINISHED_BATCH)
