"""
Work on a stopped daemon's SQLite file: take it whole, or find out that a daemon has it open.

Restore (``scepproxyd.backup``) and the move to PostgreSQL (``store.copy``)
must not run beside a daemon: restore would replace the file under it, and a
copy would miss what it writes meanwhile. Both take the file's exclusive
lock first. In WAL mode a plain ``BEGIN EXCLUSIVE`` only excludes writers, so
the connection first asks for exclusive locking mode: that needs the file
lock every other open connection holds a share of, so any process holding
the database open (the daemon, even idle) refuses it. Holding that lock, the
caller reads one consistent state and nobody can change it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from scepproxyd.store.models import StoreError

#: How long to wait for the lock before deciding another process holds it.
LOCK_TIMEOUT = 0.5
# SQLite's unix locking bytes (os_unix.c): a reader holds a shared lock on this range.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510


class DatabaseInUse(StoreError):
    """Another process (a running scepproxyd) has the SQLite database open."""

    def __init__(self, path):
        super().__init__("another process has the database %s open" % (path,))
        self.path = path


def busy(error: sqlite3.Error) -> bool:
    """Whether ``error`` is SQLite saying another connection holds the lock."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(error)


def posix_locked(path: Path) -> bool:
    """Whether another process holds SQLite's shared lock on ``path`` (works on files SQLite cannot read)."""
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST, os.SEEK_SET)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, _SHARED_SIZE, _SHARED_FIRST, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


def lock_exclusive(path: Path, timeout: float = LOCK_TIMEOUT) -> sqlite3.Connection:
    """
    A connection to the SQLite file at ``path`` holding its exclusive lock, inside ``BEGIN EXCLUSIVE``.

    Raises L{DatabaseInUse} when another process has the file open, and
    ``sqlite3.Error`` for anything else (a damaged file, no permission): the
    caller decides what that means. Closing the connection releases the lock.
    """
    conn = None
    try:
        conn = sqlite3.connect(
            "file:%s?mode=rw" % (quote(str(path)),), uri=True, isolation_level=None, timeout=timeout
        )
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        if busy(e):
            raise DatabaseInUse(path) from None
        raise
