"""
Host profiles: which profile is assigned to which host, and where each stands.

A host profile with status NULL is waiting to be (re)sent; the processing
job picks those up. Each gets a renewal ID when assigned, the token later
found in its certificate's CN or OU.
"""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.database import bulk_written, chunks, keyset, one, order_by, placeholders
from scepproxyd.store.models import (
    HOST_PROFILE_STATUSES,
    PLATFORMS,
    DuplicateError,
    HostProfile,
    NotFoundError,
    PlatformMismatchError,
    check_choice,
    check_filter,
    new_renewal_id,
)

# What a new host profile is inserted with; the rest start NULL.
_INSERT_COLUMNS = "host_uuid, profile_uuid, status, detail, retries, created_at, updated_at, renewal_id"
# HostProfile's fields, in order.
#: The sort key of host profile lists (keyset pagination).
HOST_PROFILE_ORDER = (("host_uuid", False), ("profile_uuid", False))
HOST_PROFILE_COLUMNS = f"{_INSERT_COLUMNS}, command_uuid, cert_serial, cert_not_before, cert_not_after"
ONE_HOST_PROFILE = "host_uuid = ? AND profile_uuid = ?"
_INSERT_HOST_PROFILE = (
    f"INSERT INTO host_profiles ({_INSERT_COLUMNS}) VALUES (?, ?, NULL, NULL, 0, ?, ?, ?)"
    " ON CONFLICT (host_uuid, profile_uuid) DO NOTHING"
)
# Commands that may still reach a device; the others are finished.
OUTSTANDING_COMMAND = "status IN ('queued', 'delivered')"
# The retry rule, in one place: a failed attempt sends the host profile back
# to NULL, to be sent again with a fresh challenge, until it has failed more
# than max_retries times; then it stays 'failed' until an admin resends it.
# (SET expressions all see the row as it was, here and on PostgreSQL.)
_FAILED_ATTEMPT = (
    "UPDATE host_profiles SET retries = retries + 1,"
    " status = CASE WHEN retries + 1 > ? THEN 'failed' ELSE NULL END, detail = ?, updated_at = ?"
    f" WHERE {ONE_HOST_PROFILE}"
)
# What list_host_profiles accepts as a status filter: "null" stands for NULL.
STATUS_FILTERS = tuple(status for status in HOST_PROFILE_STATUSES if status is not None) + ("null",)
# The current command was handed over and nothing was heard since (with status 'pending').
_HANDED_OVER = (
    "EXISTS (SELECT 1 FROM commands c WHERE c.command_uuid = host_profiles.command_uuid AND c.status = 'delivered')"
)
# list_host_profiles' lifecycle filter: the SQL of scepproxyd.delivery.lifecycle.lifecycle, word by word
# (tests/test_store_deliveries.py checks the two agree on every state).
LIFECYCLE_FILTERS = {
    "pending": f"(status IS NULL OR (status = 'pending' AND NOT {_HANDED_OVER}))",
    "delivering": f"status = 'pending' AND {_HANDED_OVER}",
    "delivered": "status = 'verifying'",
    "verified": "status = 'verified'",
    "failed": "status = 'failed'",
}


def _profile_platform(conn, profile_uuid) -> str:
    row = conn.execute("SELECT platform FROM profiles WHERE uuid = ?", (profile_uuid,)).fetchone()
    if row is None:
        raise NotFoundError(f"no profile {profile_uuid}")
    return row[0]


def _host_platforms(conn, host_uuids: list[str]) -> dict[str, str]:
    found = {}
    for keys in chunks(host_uuids):
        found.update(conn.execute(f"SELECT uuid, platform FROM hosts WHERE uuid IN ({placeholders(keys)})", keys))
    return found


def count_failed_attempt(conn, host_uuid, profile_uuid, detail, now, max_retries, condition="", params=()):
    """
    Apply the retry rule to one host profile; the changed HostProfile, or None if none matched.

    ``condition`` (SQL starting with AND, with its ``params``) narrows which
    host profile counts, e.g. only while a given command is its current one.
    """
    cursor = conn.execute(
        f"{_FAILED_ATTEMPT}{condition} RETURNING {HOST_PROFILE_COLUMNS}",
        (max_retries, detail, now, host_uuid, profile_uuid, *params),
    )
    return one(HostProfile, cursor)


def supersede_outstanding(conn, rows, now) -> None:
    """Retire the outstanding commands of each ``(host_uuid, profile_uuid)``, so none of them is delivered."""
    conn.executemany(
        f"UPDATE commands SET status = 'superseded', updated_at = ? WHERE {ONE_HOST_PROFILE} AND {OUTSTANDING_COMMAND}",
        ((now, host_uuid, profile_uuid) for host_uuid, profile_uuid in rows),
    )


def retire_sent_copies(conn, rows, now) -> None:
    """
    Make the copies of each ``(host_uuid, profile_uuid)`` already handed over enroll nowhere.

    Their outstanding commands are retired, and their one-time challenges,
    the proxy's and the built-in CA's, deleted: what a host profile sent
    again from scratch needs, whatever sent it again.
    """
    supersede_outstanding(conn, rows, now)
    conn.executemany(f"DELETE FROM challenges WHERE {ONE_HOST_PROFILE}", rows)
    conn.executemany(f"DELETE FROM ca_challenges WHERE {ONE_HOST_PROFILE}", rows)


class AssignmentQueries:
    def assign_profile(self, host_uuid, profile_uuid) -> defer.Deferred:
        """
        Assign a profile to a host with status NULL, so the processing job sends it.

        NotFoundError names whichever of host and profile is missing;
        PlatformMismatchError if the profile is for another platform;
        DuplicateError if it is assigned already.
        """
        now = self._clock.seconds()

        def assign_profile(conn):
            host = conn.execute("SELECT platform FROM hosts WHERE uuid = ?", (host_uuid,)).fetchone()
            profile = conn.execute("SELECT platform FROM profiles WHERE uuid = ?", (profile_uuid,)).fetchone()
            pieces = (("host", host_uuid, host), ("profile", profile_uuid, profile))
            missing = [f"{what} {key}" for what, key, row in pieces if row is None]
            if missing:
                raise NotFoundError(f"cannot assign: no {' and no '.join(missing)}")
            if host[0] != profile[0]:
                raise PlatformMismatchError(host_uuid, host[0], profile[0], profile_uuid)
            cursor = conn.execute(
                f"{_INSERT_HOST_PROFILE} RETURNING {HOST_PROFILE_COLUMNS}",
                (host_uuid, profile_uuid, now, now, new_renewal_id()),
            )
            assigned = one(HostProfile, cursor)
            if assigned is None:
                raise DuplicateError(f"profile {profile_uuid} is already assigned to host {host_uuid}")
            return assigned

        return self._submit(assign_profile, changes_targets=True)

    def assign_profile_to_hosts(self, profile_uuid, host_uuids) -> defer.Deferred:
        """
        Assign a profile to many hosts at once; fires the number newly assigned.

        Hosts that have it already are skipped. All hosts are checked before
        anything is written: NotFoundError names the first unknown host,
        PlatformMismatchError the first host of another platform.
        """
        now = self._clock.seconds()
        host_uuids = list(dict.fromkeys(host_uuids))  # once each, in the order given

        def assign_profile_to_hosts(conn):
            profile_platform = _profile_platform(conn, profile_uuid)
            platforms = _host_platforms(conn, host_uuids)
            for host_uuid in host_uuids:
                if host_uuid not in platforms:
                    raise NotFoundError(f"cannot assign profile {profile_uuid}: no host {host_uuid}")
            for host_uuid in host_uuids:
                if platforms[host_uuid] != profile_platform:
                    raise PlatformMismatchError(host_uuid, platforms[host_uuid], profile_platform, profile_uuid)
            cursor = conn.executemany(
                _INSERT_HOST_PROFILE,
                ((host_uuid, profile_uuid, now, now, new_renewal_id()) for host_uuid in host_uuids),
            )
            assigned = max(cursor.rowcount, 0)
            bulk_written(conn, "host_profiles", assigned)
            return assigned

        return self._submit(assign_profile_to_hosts, changes_targets=True)

    def assign_profile_to_platform(self, profile_uuid, platform) -> defer.Deferred:
        """
        Assign a profile to every host of its platform; fires the number newly assigned.

        ``platform`` must be the profile's own (PlatformMismatchError with
        host_uuid None otherwise); hosts that have the profile are skipped.
        """
        now = self._clock.seconds()

        def assign_profile_to_platform(conn):
            check_choice(platform, PLATFORMS, "platform")
            profile_platform = _profile_platform(conn, profile_uuid)
            if platform != profile_platform:
                raise PlatformMismatchError(None, platform, profile_platform, profile_uuid)
            assigned = conn.execute(
                f"INSERT INTO host_profiles ({_INSERT_COLUMNS})"
                " SELECT h.uuid, ?, NULL, NULL, 0, ?, ?, new_renewal_id() FROM hosts h"
                " WHERE h.platform = ? AND NOT EXISTS"
                " (SELECT 1 FROM host_profiles hp WHERE hp.host_uuid = h.uuid AND hp.profile_uuid = ?)",
                (profile_uuid, now, now, platform, profile_uuid),
            ).rowcount
            bulk_written(conn, "host_profiles", assigned)
            return assigned

        return self._submit(assign_profile_to_platform, changes_targets=True)

    def unassign_profile(self, profile_uuid, host_uuids=None) -> defer.Deferred:
        """Remove a profile from the given hosts, or from all with None; fires the number removed."""
        host_uuids = None if host_uuids is None else list(dict.fromkeys(host_uuids))

        def unassign_profile(conn):
            if host_uuids is None:
                return conn.execute("DELETE FROM host_profiles WHERE profile_uuid = ?", (profile_uuid,)).rowcount
            return sum(
                conn.execute(
                    f"DELETE FROM host_profiles WHERE profile_uuid = ? AND host_uuid IN ({placeholders(keys)})",
                    [profile_uuid, *keys],
                ).rowcount
                for keys in chunks(host_uuids)
            )

        return self._submit(unassign_profile, changes_targets=True)

    def get_host_profile(self, host_uuid, profile_uuid) -> defer.Deferred:
        def get_host_profile(conn):
            cursor = conn.execute(
                f"SELECT {HOST_PROFILE_COLUMNS} FROM host_profiles WHERE {ONE_HOST_PROFILE}", (host_uuid, profile_uuid)
            )
            return one(HostProfile, cursor)

        return self._submit(get_host_profile, write=False)

    def list_host_profiles(
        self, host_uuid=None, profile_uuid=None, status=None, limit: int = 10000, offset: int = 0, after=None,
        lifecycle=None,
    ) -> defer.Deferred:
        """
        Host profiles ordered by host then profile, optionally of one host, profile or status.

        Each carries its current command's status (``command_status``), so a
        caller can tell a profile waiting for its agent from one the agent fetched.

        ``after`` (a HOST_PROFILE_ORDER key) starts the page after that row:
        the admin API pages this way; ``offset`` is for small internal lists.

        ``status`` is a status name, or the string "null" for those waiting
        to be sent; ``lifecycle`` a word of scepproxyd.delivery.lifecycle;
        None does not filter.
        """

        def list_host_profiles(conn):
            check_filter(status, STATUS_FILTERS, "status filter")
            check_filter(lifecycle, tuple(LIFECYCLE_FILTERS), "lifecycle filter")
            for what, value in (("limit", limit), ("offset", offset)):
                if not isinstance(value, int) or value < 0:
                    raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
            where, params = [], []
            for column, value in (("host_uuid", host_uuid), ("profile_uuid", profile_uuid)):
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            if status == "null":
                where.append("status IS NULL")
            elif status is not None:
                where.append("status = ?")
                params.append(status)
            if lifecycle is not None:
                where.append(LIFECYCLE_FILTERS[lifecycle])
            after_sql, after_params = keyset(HOST_PROFILE_ORDER, after)
            where.append(after_sql)
            params.extend(after_params)
            cursor = conn.execute(
                f"SELECT {HOST_PROFILE_COLUMNS}, (SELECT c.status FROM commands c"
                " WHERE c.command_uuid = host_profiles.command_uuid)"
                f" FROM host_profiles WHERE {' AND '.join(where)}"
                f" ORDER BY {order_by(HOST_PROFILE_ORDER)} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            return [HostProfile(*row) for row in cursor]

        return self._submit(list_host_profiles, write=False)

    def count_host_profiles(self, profile_uuid) -> defer.Deferred:
        """How many hosts a profile is assigned to."""

        def count_host_profiles(conn):
            return conn.execute("SELECT count(*) FROM host_profiles WHERE profile_uuid = ?", (profile_uuid,)).fetchone()[0]

        return self._submit(count_host_profiles, write=False)

    def set_host_profile_status(self, host_uuid, profile_uuid, status, detail=None) -> defer.Deferred:
        """Set status and detail; fires whether the host profile exists."""
        now = self._clock.seconds()

        def set_host_profile_status(conn):
            check_choice(status, HOST_PROFILE_STATUSES, "status")
            return conn.execute(
                f"UPDATE host_profiles SET status = ?, detail = ?, updated_at = ? WHERE {ONE_HOST_PROFILE}",
                (status, detail, now, host_uuid, profile_uuid),
            ).rowcount == 1

        return self._submit(set_host_profile_status)

    def resend_host_profile(self, host_uuid, profile_uuid) -> defer.Deferred:
        """
        Send a host profile again from scratch; fires it, or None if there is no such host profile.

        Status back to NULL with retries and detail cleared, its outstanding
        commands superseded (command_uuid cleared) and its challenges
        deleted, so only what the next claim sends will work. The renewal ID
        stays: it identifies the host profile, not the attempt.
        """
        now = self._clock.seconds()

        def resend_host_profile(conn):
            cursor = conn.execute(
                "UPDATE host_profiles SET status = NULL, retries = 0, detail = NULL, command_uuid = NULL,"
                f" updated_at = ? WHERE {ONE_HOST_PROFILE} RETURNING {HOST_PROFILE_COLUMNS}",
                (now, host_uuid, profile_uuid),
            )
            resent = one(HostProfile, cursor)
            if resent is not None:
                supersede_outstanding(conn, [(host_uuid, profile_uuid)], now)
                conn.execute(f"DELETE FROM challenges WHERE {ONE_HOST_PROFILE}", (host_uuid, profile_uuid))
            return resent

        return self._submit(resend_host_profile)

    def count_host_profiles_by_status(self) -> defer.Deferred:
        """Host profiles per status (None for NULL), every status present, zero if none."""

        def count_host_profiles_by_status(conn):
            counts = dict.fromkeys(HOST_PROFILE_STATUSES, 0)
            counts.update(conn.execute("SELECT status, COUNT(*) FROM host_profiles GROUP BY status"))
            return counts

        return self._submit(count_host_profiles_by_status, write=False)
