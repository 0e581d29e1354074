"""Hosts: the managed devices that profiles are assigned to."""

from __future__ import annotations

from twisted.internet import defer

from scepproxyd.store.database import chunks, keyset, one, order_by, placeholders
from scepproxyd.store.models import PLATFORMS, Host, check_choice

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
        uuid, _serial, platform = row
    except (TypeError, ValueError):
        raise ValueError(f"row {index}: expected (uuid, serial, platform), got {row!r}") from None
    if not isinstance(uuid, str) or not uuid:
        raise ValueError(f"row {index}: host uuid must be a non-empty string, not {uuid!r}")
    try:
        check_choice(platform, PLATFORMS, "platform")
    except ValueError as e:
        raise ValueError(f"row {index}: {e}") from None


class HostQueries:
    def upsert_host(self, uuid, serial, platform) -> defer.Deferred:
        """Add a host, or update its serial and platform if it is known; fires True if it was added."""
        now = self._clock.seconds()

        def upsert_host(conn):
            check_choice(platform, PLATFORMS, "platform")
            return _upsert(conn, uuid, serial, platform, now)

        return self._submit(upsert_host, changes_targets=True)

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
            created = sum(_upsert(conn, uuid, serial, platform, now) for uuid, serial, platform in rows)
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
            known = 0
            for keys in chunks([uuid for uuid, _, _ in rows]):
                (count,) = conn.execute(
                    f"SELECT count(*) FROM hosts WHERE uuid IN ({placeholders(keys)})", keys).fetchone()
                known += count
            conn.executemany(
                f"INSERT INTO hosts ({_HOST_COLUMNS}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE"
                " SET serial = excluded.serial, platform = excluded.platform, updated_at = excluded.updated_at",
                [(uuid, serial, platform, now, now) for uuid, serial, platform in rows],
            )
            return len(rows) - known, known

        return self._submit(import_hosts_batch, changes_targets=True)

    def get_host(self, uuid) -> defer.Deferred:
        def get_host(conn):
            return one(Host, conn.execute(f"SELECT {_HOST_COLUMNS} FROM hosts WHERE uuid = ?", (uuid,)))

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
