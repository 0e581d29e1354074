"""
The SQLite store: schema, migrations and every SQL statement of scepproxyd.

Why it is shaped this way:

- The reactor must never block on disk, so every statement runs on one
  dedicated thread (a one-thread ``ThreadPool``). The connection is opened
  *on* that thread and keeps sqlite3's ``check_same_thread``, so a stray use
  from any other thread fails loudly instead of racing.
- One DB thread plus ``BEGIN IMMEDIATE`` per write: no row is ever
  half-written, and concurrent callers are simply queued.
- Time comes from an injected clock, read on the calling (reactor) thread,
  so tests drive expiry with ``twisted.internet.task.Clock``.
- The SQL stays portable (``ON CONFLICT``, ``DELETE ... RETURNING``) so a
  PostgreSQL store can later sit behind the same interface.
"""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
from importlib import resources

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from scepproxyd.logs import get_logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = get_logger(__name__)

HOST_PROFILE_STATUSES = (None, "pending", "verifying", "verified", "failed")
PLATFORMS = ("macos", "ios", "ipados", "android")

_SCHEMA_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_EXPIRED_BATCH = 1000


class StoreError(Exception):
    """A store operation failed; the message is meant for the operator."""


class DuplicateError(StoreError):
    """The row being added already exists."""


class NotFoundError(StoreError):
    """A row being added refers to a CA, host, profile or host profile that does not exist."""


@attrs.frozen
class CertificateAuthority:
    name: str
    url: str
    challenge_ciphertext: bytes | None
    created_at: float
    updated_at: float


@attrs.frozen
class HostProfile:
    host_uuid: str
    profile_uuid: str
    status: str | None
    detail: str | None
    retries: int
    created_at: float
    updated_at: float


@attrs.frozen
class ProxyTarget:
    host_uuid: str
    profile_uuid: str
    ca_name: str
    ca_url: str
    status: str | None


@attrs.frozen
class ConsumedChallenge:
    challenge: str
    host_uuid: str
    profile_uuid: str
    created_at: float


_CA_COLUMNS = "name, url, challenge_ciphertext, created_at, updated_at"
_HOST_PROFILE_COLUMNS = "host_uuid, profile_uuid, status, detail, retries, created_at, updated_at"
_ONE_HOST_PROFILE = "host_uuid = ? AND profile_uuid = ?"


def _schema_files() -> list[tuple[int, str]]:
    """
    The packaged schema files as ``(version, sql)``, in order.

    Numbering must run 1, 2, 3... without gaps: a gap would let a database
    be marked at a version without ever getting the skipped change.
    """
    found = []
    for entry in resources.files(__package__).joinpath("schema").iterdir():
        match = _SCHEMA_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    if [version for version, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError("packaged schema files are not numbered 0001, 0002, ... without gaps")
    return found


def _statements(script: str):
    """Split a schema script into statements, so it can run inside our own transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise StoreError("schema script ends with an incomplete statement")


def _open(path, busy_timeout: float) -> sqlite3.Connection:
    """Open in autocommit mode (we write BEGIN/COMMIT ourselves), WAL on."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {path}: {e} (does its directory exist and is it writable?)") from e
    if mode.lower() != "wal":
        conn.close()
        raise StoreError(f"database {path} cannot use WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _refuse_newer(path, version: int, known: int) -> None:
    if version > known:
        raise StoreError(
            f"database {path} has schema version {version}, newer than this scepproxyd knows ({known}); "
            "run the newer scepproxyd or restore a backup taken before it was upgraded"
        )


def _check(value, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def _one(cls, cursor):
    row = cursor.fetchone()
    return None if row is None else cls(*row)


class Store:
    """
    Async access to the scepproxyd database; every method returns a Deferred.

    Call ``Store.migrate(path)`` once before ``start()``; ``start()`` refuses
    a database whose schema is not exactly the one this code knows.
    """

    def __init__(self, path, reactor, clock=None, challenge_ttl: float = 3600.0, busy_timeout: float = 5.0):
        self._path = path
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._challenge_ttl = challenge_ttl
        self._busy_timeout = busy_timeout
        self._pool: ThreadPool | None = None
        self._running = False
        self._stop_waiters: list[defer.Deferred] | None = None  # a list while stopping
        self._shutdown_trigger = None
        self._conn: sqlite3.Connection | None = None  # touched only on the DB thread

    @staticmethod
    def migrate(path) -> int:
        """
        Bring the database at ``path`` to the newest schema, synchronously.

        Run by the tap before the reactor starts, so a bad file or a too-new
        schema stops twistd with a message rather than failing later. Each
        file runs in its own ``BEGIN IMMEDIATE`` transaction with its
        ``user_version`` bump, and the version is read inside it, so two
        processes migrating at once cannot both apply the same file.
        """
        files = _schema_files()
        conn = _open(path, busy_timeout=5.0)
        try:
            for number, script in files:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = _user_version(conn)
                    _refuse_newer(path, version, files[-1][0])
                    if version < number:
                        for statement in _statements(script):
                            conn.execute(statement)
                        if conn.execute("PRAGMA foreign_key_check").fetchall():
                            raise StoreError(f"schema {number} left rows breaking foreign keys in {path}")
                        conn.execute(f"PRAGMA user_version = {number}")
                        log.info("applied schema {version} to {path}", version=number, path=str(path))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            return _user_version(conn)
        except sqlite3.Error as e:
            raise StoreError(f"migrating database {path} failed: {e}") from e
        finally:
            conn.close()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Start the DB thread and open the connection on it, as its first job."""
        if self._pool is not None:
            return defer.fail(StoreError("store is already started"))
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="scepproxyd-db")
        self._pool.start()
        self._running = True
        # Without stop() a reactor shutdown would leave the (non-daemon) DB
        # thread behind; "before" triggers are waited for, so the close runs.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._stop_at_shutdown)

        def failed(failure):
            self._running = False
            if self._stop_waiters is None:  # else a stop() in progress stops the pool
                self._stop_pool(None)
            return failure

        return deferToThreadPool(self._reactor, self._pool, self._connect).addErrback(failed)

    def _connect(self) -> None:
        conn = _open(self._path, self._busy_timeout)
        known, version = _schema_files()[-1][0], _user_version(conn)
        if version != known:
            conn.close()
            _refuse_newer(self._path, version, known)
            raise StoreError(f"database {self._path} has schema version {version}, expected {known}: run migrate first")
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn

    def stop(self) -> defer.Deferred:
        """Close the connection on the DB thread, then stop the pool. Safe to call twice."""
        if self._stop_waiters is None:
            if not self._running:
                return defer.succeed(None)
            self._running = False
            self._stop_waiters = []
            # Queued behind every job already submitted, so those finish first.
            d = deferToThreadPool(self._reactor, self._pool, self._close)
            d.addBoth(self._stop_pool).addBoth(self._stopped)
        waiter = defer.Deferred()
        self._stop_waiters.append(waiter)
        return waiter

    def _stop_at_shutdown(self) -> defer.Deferred:
        self._shutdown_trigger = None  # it has fired; removing it now would warn
        return self.stop()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _stop_pool(self, result):
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # the thread is idle by now, so this join is immediate
        return result

    def _stopped(self, result) -> None:
        waiters, self._stop_waiters = self._stop_waiters, None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    # -- running jobs on the DB thread --------------------------------------

    def _submit(self, fn, write: bool = True) -> defer.Deferred:
        """Queue ``fn(conn)`` on the DB thread; a write gets a transaction of its own."""
        if not self._running:
            return defer.fail(StoreError("store is not running; call start() first"))
        return deferToThreadPool(self._reactor, self._pool, self._run, fn, write)

    def _run(self, fn, write: bool):
        conn = self._conn
        try:
            if not write:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as e:
            raise StoreError(f"database error in {fn.__name__}: {e}") from e

    # -- CAs ----------------------------------------------------------------

    def add_ca(self, name, url, challenge_ciphertext=None) -> defer.Deferred:
        """Add an upstream CA; a name already in use fails with DuplicateError."""
        now = self._clock.seconds()

        def add_ca(conn):
            cursor = conn.execute(
                f"INSERT INTO cas ({_CA_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                f" ON CONFLICT (name) DO NOTHING RETURNING {_CA_COLUMNS}",
                (name, url, challenge_ciphertext, now, now),
            )
            ca = _one(CertificateAuthority, cursor)
            if ca is None:
                raise DuplicateError(f"a CA named {name!r} already exists")
            return ca

        return self._submit(add_ca)

    def get_ca(self, name) -> defer.Deferred:
        def get_ca(conn):
            return _one(CertificateAuthority, conn.execute(f"SELECT {_CA_COLUMNS} FROM cas WHERE name = ?", (name,)))

        return self._submit(get_ca, write=False)

    # -- hosts, profiles, assignments ---------------------------------------

    def upsert_host(self, uuid, serial, platform) -> defer.Deferred:
        """Add a host, or update its serial and platform if it is known."""
        now = self._clock.seconds()

        def upsert_host(conn):
            _check(platform, PLATFORMS, "platform")
            conn.execute(
                "INSERT INTO hosts (uuid, serial, platform, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (uuid) DO UPDATE SET serial = excluded.serial, platform = excluded.platform,"
                " updated_at = excluded.updated_at",
                (uuid, serial, platform, now, now),
            )

        return self._submit(upsert_host)

    def add_profile(self, uuid, name, platform, content: bytes, ca_name: str | None) -> defer.Deferred:
        """Add a profile; DuplicateError if the uuid exists, NotFoundError if the CA does not."""
        now = self._clock.seconds()

        def add_profile(conn):
            _check(platform, PLATFORMS, "platform")
            try:
                added = conn.execute(
                    "INSERT INTO profiles (uuid, name, platform, content, ca_name, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING RETURNING uuid",
                    (uuid, name, platform, content, ca_name, now, now),
                ).fetchone()
            except sqlite3.IntegrityError as e:
                raise NotFoundError(f"profile {uuid} uses CA {ca_name!r}, which does not exist") from e
            if added is None:
                raise DuplicateError(f"a profile with uuid {uuid} already exists")

        return self._submit(add_profile)

    def assign_profile(self, host_uuid, profile_uuid) -> defer.Deferred:
        """Assign a profile to a host with status NULL, so the processing job sends it."""
        now = self._clock.seconds()

        def assign_profile(conn):
            try:
                cursor = conn.execute(
                    f"INSERT INTO host_profiles ({_HOST_PROFILE_COLUMNS}) VALUES (?, ?, NULL, NULL, 0, ?, ?)"
                    f" ON CONFLICT (host_uuid, profile_uuid) DO NOTHING RETURNING {_HOST_PROFILE_COLUMNS}",
                    (host_uuid, profile_uuid, now, now),
                )
                assigned = _one(HostProfile, cursor)
            except sqlite3.IntegrityError as e:
                missing = [
                    f"{table[:-1]} {key}"
                    for table, key in (("hosts", host_uuid), ("profiles", profile_uuid))
                    if conn.execute(f"SELECT 1 FROM {table} WHERE uuid = ?", (key,)).fetchone() is None
                ]
                raise NotFoundError(f"cannot assign: no {' and no '.join(missing) or 'such host or profile'}") from e
            if assigned is None:
                raise DuplicateError(f"profile {profile_uuid} is already assigned to host {host_uuid}")
            return assigned

        return self._submit(assign_profile)

    def get_host_profile(self, host_uuid, profile_uuid) -> defer.Deferred:
        def get_host_profile(conn):
            cursor = conn.execute(
                f"SELECT {_HOST_PROFILE_COLUMNS} FROM host_profiles WHERE {_ONE_HOST_PROFILE}", (host_uuid, profile_uuid)
            )
            return _one(HostProfile, cursor)

        return self._submit(get_host_profile, write=False)

    def set_host_profile_status(self, host_uuid, profile_uuid, status, detail=None) -> defer.Deferred:
        """Set status and detail; fires whether the host profile exists."""
        now = self._clock.seconds()

        def set_host_profile_status(conn):
            _check(status, HOST_PROFILE_STATUSES, "status")
            return conn.execute(
                f"UPDATE host_profiles SET status = ?, detail = ?, updated_at = ? WHERE {_ONE_HOST_PROFILE}",
                (status, detail, now, host_uuid, profile_uuid),
            ).rowcount == 1

        return self._submit(set_host_profile_status)

    # -- proxy path ---------------------------------------------------------

    def proxy_target(self, host_uuid, profile_uuid, ca_name) -> defer.Deferred:
        """
        Where to proxy for this identifier, or None.

        One query, so the proxy gives one and the same answer whichever piece
        is missing (no enumeration of hosts, profiles or CAs).
        """

        def proxy_target(conn):
            cursor = conn.execute(
                "SELECT hp.host_uuid, hp.profile_uuid, c.name, c.url, hp.status FROM host_profiles hp"
                " JOIN hosts h ON h.uuid = hp.host_uuid"
                " JOIN profiles p ON p.uuid = hp.profile_uuid"
                " JOIN cas c ON c.name = p.ca_name"
                " WHERE hp.host_uuid = ? AND hp.profile_uuid = ? AND p.ca_name = ?",
                (host_uuid, profile_uuid, ca_name),
            )
            return _one(ProxyTarget, cursor)

        return self._submit(proxy_target, write=False)

    def new_challenge(self, host_uuid, profile_uuid) -> defer.Deferred:
        """Mint a one-time challenge (24 random bytes, base64url, unpadded) for a host profile."""
        now = self._clock.seconds()
        challenge = base64.urlsafe_b64encode(secrets.token_bytes(24)).rstrip(b"=").decode("ascii")

        def new_challenge(conn):
            try:
                conn.execute(
                    "INSERT INTO challenges (challenge, host_uuid, profile_uuid, created_at) VALUES (?, ?, ?, ?)",
                    (challenge, host_uuid, profile_uuid, now),
                )
            except sqlite3.IntegrityError as e:
                raise NotFoundError(f"no profile {profile_uuid} assigned to host {host_uuid}") from e
            return challenge

        return self._submit(new_challenge)

    def consume_challenge(self, challenge, host_uuid, profile_uuid) -> defer.Deferred:
        """
        Use up a challenge: fires a ConsumedChallenge the first time, None after.

        The consuming DELETE ... RETURNING is one statement, so of any number
        of concurrent callers exactly one wins, here and on PostgreSQL. A
        matching row past its TTL is refused, and deleted by a second one.
        """
        cutoff = self._clock.seconds() - self._challenge_ttl
        params = (challenge, host_uuid, profile_uuid, cutoff)

        def consume_challenge(conn):
            rows = conn.execute(
                "DELETE FROM challenges WHERE challenge = ? AND host_uuid = ? AND profile_uuid = ?"
                " AND created_at >= ? RETURNING challenge, host_uuid, profile_uuid, created_at",
                params,
            ).fetchall()  # fetched before the COMMIT that _run issues
            if rows:
                return ConsumedChallenge(*rows[0])
            conn.execute(
                "DELETE FROM challenges WHERE challenge = ? AND host_uuid = ? AND profile_uuid = ? AND created_at < ?",
                params,
            )
            return None

        return self._submit(consume_challenge)

    def restore_challenge(self, consumed: ConsumedChallenge) -> defer.Deferred:
        """
        Put back a challenge whose upstream call failed in transport, so the device's retry works.

        It keeps its original created_at, so it still expires on time. If its
        host profile has gone meanwhile there is nothing to restore it to.
        """

        def restore_challenge(conn):
            conn.execute(
                "INSERT INTO challenges (challenge, host_uuid, profile_uuid, created_at) SELECT ?, ?, ?, ?"
                f" WHERE EXISTS (SELECT 1 FROM host_profiles WHERE {_ONE_HOST_PROFILE})"
                " ON CONFLICT (challenge) DO NOTHING",
                attrs.astuple(consumed) + (consumed.host_uuid, consumed.profile_uuid),
            )

        return self._submit(restore_challenge)

    def challenge_failed(self, host_uuid, profile_uuid, detail) -> defer.Deferred:
        """Send the host profile back to NULL, to be re-sent with a fresh challenge, counting the retry."""
        now = self._clock.seconds()

        def challenge_failed(conn):
            conn.execute(
                "UPDATE host_profiles SET status = NULL, retries = retries + 1, detail = ?, updated_at = ?"
                f" WHERE {_ONE_HOST_PROFILE}",
                (detail, now, host_uuid, profile_uuid),
            )

        return self._submit(challenge_failed)

    def enrollment_forwarded(self, host_uuid, profile_uuid) -> defer.Deferred:
        """Move pending -> verifying; fires whether it changed (only from pending)."""
        now = self._clock.seconds()

        def enrollment_forwarded(conn):
            return conn.execute(
                "UPDATE host_profiles SET status = 'verifying', updated_at = ?"
                f" WHERE {_ONE_HOST_PROFILE} AND status = 'pending'",
                (now, host_uuid, profile_uuid),
            ).rowcount == 1

        return self._submit(enrollment_forwarded)

    @defer.inlineCallbacks
    def delete_expired_challenges(self):
        """
        Delete challenges older than the TTL; fires the count.

        In batches, each its own job, so proxy calls queued meanwhile are
        not held behind one long delete.
        """
        cutoff = self._clock.seconds() - self._challenge_ttl

        def delete_expired_challenges(conn):
            return conn.execute(
                "DELETE FROM challenges WHERE challenge IN"
                " (SELECT challenge FROM challenges WHERE created_at < ? ORDER BY created_at LIMIT ?)",
                (cutoff, _EXPIRED_BATCH),
            ).rowcount

        total = 0
        while True:
            count = yield self._submit(delete_expired_challenges)
            total += count
            if count < _EXPIRED_BATCH:
                return total
