"""Hosts: the managed devices that profiles are assigned to."""

from __future__ import annotations

import attrs
from twisted.internet import defer

from scepproxyd.store.database import chunks, keyset, one, order_by, placeholders
from scepproxyd.store.end_users import read_end_user, resend_changed, snapshot, write_end_user, write_end_users
from scepproxyd.store.models import PLATFORMS, Host, NotFoundError, check_choice

_HOST_COLUMNS = "uuid, serial, platform, created_at, updated_at"
#: The sort key of host lists (keyset pagination).
HOST_ORDER = (("uuid", False),)


def _upsert(conn, uuid, serial, platform, now) -> bool:
    """Insert or update one host; True if it was new."""
    created = conn.execute(
        f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING RETURNING uuid",
        (uuid, serial, platform, now, now),
    ).fetchone()
    if created is None:
        conn.execute(
            "UPDATE hosts SET serial = ?, platform = ?, updated_at = ? WHERE uuid = ?", (serial, platform, now, uuid)
        )
    return created is not None


def _check_import_row(index: int, row) -> None:
    try:
        uuid, _serial, platform, *end_user = row
        if len(end_user) > 1 or (end_user and not isinstance(end_user[0], (dict, type(None)))):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"row {index}: expected (uuid, serial, platform) or (uuid, serial, platform, end-user changes), got {row!r}"
        ) from None
    if not isinstance(uuid, str) or not uuid:
        raise ValueError(f"row {index}: host uuid must be a non-empty string, not {uuid!r}")
    try:
        check_choice(platform, PLATFORMS, "platform")
    except ValueError as e:
        raise ValueError(f"row {index}: {e}") from None


def _end_user_changes(rows) -> list[tuple[str, dict]]:
    """The (uuid, changes) of import rows that carry end-user changes (a fourth item)."""
    return [(row[0], row[3]) for row in rows if len(row) > 3 and row[3]]


def _get_host(conn, uuid) -> Host | None:
    host = one(Host, conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE uuid = ?", (uuid,)))
    return None if host is None else attrs.evolve(host, end_user=read_end_user(conn, uuid))


class HostQueries:
    def upsert_host(self, uuid, serial, platform, end_user=None) -> defer.Deferred:
        """
        Add a host, or update its serial and platform if it is known; fires True if it was added.

        ``end_user``: changes to its end-user attributes too (as
        EndUserQueries.set_end_user takes them), in the same transaction.
        Host profiles that render a value this changes are sent again.
        """
        now = self._clock.seconds()

        def upsert_host(conn):
            check_choice(platform, PLATFORMS, "platform")
            before = snapshot(conn, [uuid])
            created = _upsert(conn, uuid, serial, platform, now)
            if end_user:
                write_end_user(conn, uuid, end_user, now)
            resend_changed(conn, before, snapshot(conn, [uuid]), now)
            return created

        return self._submit(upsert_host, changes_targets=True)

    def update_host(self, uuid, serial=attrs.NOTHING, end_user=None) -> defer.Deferred:
        """
        Change some of a known host: its serial (None clears it) and end-user attributes.

        Fires ``(Host, sent)``: the host now, and the ``(host_uuid,
        profile_uuid)`` pairs sent again because a value they render changed
        (in the same transaction). NotFoundError if there is no such host.
        """
        now = self._clock.seconds()

        def update_host(conn):
            if conn.execute("SELECT 1 FROM hosts WHERE uuid = ?", (uuid,)).fetchone() is None:
                raise NotFoundError(f"no host {uuid}")
            before = snapshot(conn, [uuid])
            if serial is not attrs.NOTHING:
                conn.execute("UPDATE hosts SET serial = ?, updated_at = ? WHERE uuid = ?", (serial, now, uuid))
            if end_user:
                write_end_user(conn, uuid, end_user, now)
                conn.execute("UPDATE hosts SET updated_at = ? WHERE uuid = ?", (now, uuid))
            sent = resend_changed(conn, before, snapshot(conn, [uuid]), now)
            return _get_host(conn, uuid), sent

        return self._submit(update_host)

    def import_hosts(self, rows) -> defer.Deferred:
        """
        Upsert many ``(uuid, serial, platform)`` rows in one transaction; fires ``(created, updated)``.

        Every row is checked before any is written, so a bad one (its index
        is in the ValueError) leaves the hosts table as it was.
        """
        now = self._clock.seconds()
        rows = list(rows)

        def import_hosts(conn):
            for index, row in enumerate(rows):
                _check_import_row(index, row)
            before = snapshot(conn, [row[0] for row in rows])
            created = sum(_upsert(conn, uuid, serial, platform, now) for uuid, serial, platform, *_ in rows)
            write_end_users(conn, _end_user_changes(rows), now)
            resend_changed(conn, before, snapshot(conn, before), now)
            return created, len(rows) - created

        return self._submit(import_hosts, changes_targets=True)

    def import_hosts_batch(self, rows) -> defer.Deferred:
        """
        Upsert one batch of checked ``(uuid, serial, platform)`` rows in its own transaction; fires ``(created, updated)``.

        For big imports, which call this once per batch so other store work
        runs between batches; a repeated batch changes nothing more (an upsert).
        """
        now = self._clock.seconds()
        rows = list(rows)

        def import_hosts_batch(conn):
            for index, row in enumerate(rows):
                _check_import_row(index, row)
            before = snapshot(conn, [row[0] for row in rows])
            known = 0
            for keys in chunks([row[0] for row in rows]):
                (count,) = conn.execute(
                    f"SELECT count(*) FROM hosts WHERE uuid IN ({placeholders(keys)})", keys).fetchone()
                known += count
            conn.executemany(
                f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE"
                " SET serial = excluded.serial, platform = excluded.platform, updated_at = excluded.updated_at",
                [(uuid, serial, platform, now, now) for uuid, serial, platform, *_ in rows],
            )
            write_end_users(conn, _end_user_changes(rows), now)
            resend_changed(conn, before, snapshot(conn, before), now)
            return len(rows) - known, known

        return self._submit(import_hosts_batch, changes_targets=True)

    def get_host(self, uuid) -> defer.Deferred:
        """The Host with its end user (None if it has none recorded), or None."""

        def get_host(conn):
            return _get_host(conn, uuid)

        return self._submit(get_host, write=False)

    def list_hosts(self, platform=None, after=None, limit=None) -> defer.Deferred:
        """
        Hosts ordered by uuid, or only those of one platform.

        ``after`` (the HOST_ORDER key of the last host of the page before)
        and ``limit`` give one page; without them, every host.
        """

        def list_hosts(conn):
            if platform is not None:
                check_choice(platform, PLATFORMS, "platform")
            where, params = keyset(HOST_ORDER, after)
            cursor = conn.execute(
                f"SELECT {_HOST_COLUMNS} FROM hosts WHERE (? IS NULL OR platform = ?) AND {where}"
                f" ORDER BY {order_by(HOST_ORDER)} LIMIT ?",
                (platform, platform, *params, -1 if limit is None else limit),
            )
            return [Host(*row) for row in cursor]

        return self._submit(list_hosts, write=False)

    def delete_host(self, uuid) -> defer.Deferred:
        """Delete a host with its host profiles and their challenges; fires whether it existed."""

        def delete_host(conn):
            return conn.execute("DELETE FROM hosts WHERE uuid = ?", (uuid,)).rowcount == 1

        return self._submit(delete_host, changes_targets=True)
