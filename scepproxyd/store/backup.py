"""Online backup of the database, and the cheapest query there is (for health checks).

SQLite only: a PostgreSQL database is backed up with the server's own tools
(``pg_dump``), so ``backup_database`` refuses there and a backup holds the
state files alone (``scepproxyd.backup``).

``VACUUM INTO`` writes a consistent snapshot of the live database to a new
file while the daemon keeps serving: it is one read transaction, so in WAL
mode writers on other connections are not blocked, and on our one DB thread
the jobs queued behind it simply wait their turn. The copy is compact (no
free pages) and in rollback-journal mode, with the same ``user_version``.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer


def _rollback_journal(path: str) -> None:
    """
    Make sure the copy is a single self-contained file.

    SQLite versions differ on whether ``VACUUM INTO`` keeps WAL mode; a copy
    in WAL mode would need its -wal/-shm files beside it to be read, even
    read-only, so it is switched back to a rollback journal.
    """
    with open(path, "rb") as f:
        header = f.read(20)
    if header[18:20] == b"\x01\x01":
        return
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE").fetchone()
    finally:
        conn.close()


class BackupQueries:
    def backup_database(self, path) -> defer.Deferred:
        """
        Write a consistent copy of the database to ``path``; fires its size in bytes.

        ``path`` must not exist, or be an empty file (make it with mode 0600
        first so the copy is never readable by others). The copy is synced
        to disk before the Deferred fires.
        """
        if self.engine == "postgresql":
            from scepproxyd.store.models import StoreError

            return defer.fail(StoreError("the database is on PostgreSQL: back it up with pg_dump"))
        target = os.fspath(path)

        def backup_database(conn):
            conn.execute("VACUUM INTO ?", (target,))
            _rollback_journal(target)
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)  # VACUUM INTO does not sync its output
                return os.fstat(fd).st_size
            finally:
                os.close(fd)

        # Not a write: VACUUM cannot run inside the transaction _run would open.
        return self._submit(backup_database, write=False)

    def schema_version(self) -> defer.Deferred:
        """The database's schema version, on either engine (a backup's manifest records it)."""
        from scepproxyd.store import postgres

        def schema_version(conn):
            if isinstance(conn, postgres.Connection):
                return postgres.schema_version(conn)
            return conn.execute("PRAGMA user_version").fetchone()[0]

        return self._submit(schema_version, write=False)

    def ping(self) -> defer.Deferred:
        """``SELECT 1`` on the DB thread; fires None when the database answers."""

        def ping(conn):
            conn.execute("SELECT 1").fetchone()

        return self._submit(ping, write=False)
