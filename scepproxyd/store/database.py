"""
The database underneath the store: opening, migrating, and the DB thread.

Why it is shaped this way:

- The reactor must never block on disk, so every statement runs on one
  dedicated thread (a one-thread ``ThreadPool``). The connection is opened
  *on* that thread and keeps sqlite3's ``check_same_thread``, so a stray use
  from any other thread fails loudly instead of racing.
- One DB thread plus ``BEGIN IMMEDIATE`` per write: no row is ever
  half-written, and concurrent callers are simply queued. Short writes
  that opt in share one transaction with those queued at the same
  moment (``store.group_commit``), so a burst of them costs one COMMIT.
- Time comes from an injected clock, read on the calling (reactor) thread,
  so tests drive expiry with ``twisted.internet.task.Clock``.
- The SQL stays portable (``ON CONFLICT``, ``DELETE ... RETURNING``), so
  one store serves SQLite (a file, the default) and PostgreSQL (a
  ``postgresql://`` URL, for several nodes); what differs between the two
  is in ``store.postgres`` and in the few engine checks of this module.
  On PostgreSQL the jobs run on ``pool_size`` threads, each with a
  connection from psycopg's pool for the length of one job.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from importlib import resources

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from scepproxyd.daemon.logs import get_logger
from scepproxyd.store import group_commit, postgres
from scepproxyd.store.models import (
    DuplicateError,
    StoreError,
    StoreUnavailable,
    challenge_hash,
    new_command_uuid,
    new_renewal_id,
)
from scepproxyd.timestamps import utc_iso

log = get_logger(__name__)

_SCHEMA_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+(?:\.(postgresql))?\.sql$")
#: The engines a schema file may be written for; a file without an engine suffix serves both.
ENGINES = ("sqlite", "postgresql")
#: A schema file with this line rewrote secrets it must not leave behind: once it is applied,
#: the migration rebuilds the file (VACUUM) and empties the WAL, so no old copy survives in free space.
VACUUM_AFTER = "-- scepproxyd: vacuum after this migration"
# Keys bound into one IN (...) list; well under SQLite's variable limit.
IN_LIST_CHUNK = 500

try:
    import psycopg as _psycopg
except ImportError:  # pragma: no cover - a dependency; only PostgreSQL needs it
    _psycopg = None

#: What a unique or foreign key refusal raises, on either engine (the store's code catches this).
IntegrityError = (sqlite3.IntegrityError,) + ((_psycopg.IntegrityError,) if _psycopg is not None else ())
_ENGINE_ERRORS = (sqlite3.Error,) + ((_psycopg.Error,) if _psycopg is not None else ())


def _schema_files(engine: str = "sqlite") -> list[tuple[int, str]]:
    """
    The packaged schema files for ``engine`` as ``(version, sql)``, in order.

    Numbering must run 1, 2, 3... without gaps: a gap would let a database
    be marked at a version without ever getting the skipped change.

    Most files serve both engines (``NNNN_name.sql``, with the few type
    names ``store.postgres`` translates). Where the two need different
    statements for one change, ``NNNN_name.postgresql.sql`` beside it is
    what PostgreSQL runs instead (schema 18: SQLite cannot drop a CHECK
    constraint and rebuilds the table; PostgreSQL drops and adds the
    constraint). A variant without its common file is refused, so both
    engines always pass through the same numbers.
    """
    if engine not in ENGINES:
        raise ValueError("unknown database engine %r" % (engine,))
    common, variants = {}, {}
    for entry in resources.files(__package__).joinpath("schema").iterdir():
        match = _SCHEMA_NAME.match(entry.name)
        if match:
            into, number = (variants if match.group(2) else common), int(match.group(1))
            if number in into:
                raise StoreError("two packaged schema files are numbered %04d" % (number,))
            into[number] = entry.read_text(encoding="utf-8")
    if sorted(common) != list(range(1, len(common) + 1)):
        raise StoreError("packaged schema files are not numbered 0001, 0002, ... without gaps")
    if set(variants) - set(common):
        raise StoreError("packaged PostgreSQL schema files %s have no common file of the same number"
                         % (", ".join(str(n) for n in sorted(set(variants) - set(common))),))
    chosen = dict(common)
    if engine == "postgresql":
        chosen.update(variants)
    return sorted(chosen.items())


def statements(script: str):
    """Split a schema script into statements, so it can run inside our own transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise StoreError("schema script ends with an incomplete statement")


#: The database and the files SQLite keeps beside it (created later with the database's own mode).
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _make_private(path) -> None:
    """The database file, and any -wal/-shm/-journal beside it, mode 0600 whatever the umask.

    The file is made here (mode 0600) before SQLite opens it, and SQLite
    gives the -wal, -shm and -journal files it makes later the database
    file's mode, so none of them is ever readable by others.
    """
    if str(path) == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
        for suffix in DATABASE_SUFFIXES:
            companion = "%s%s" % (path, suffix)
            if os.path.isfile(companion) and os.stat(companion).st_mode & 0o077:
                os.chmod(companion, 0o600)
    except OSError as e:
        raise StoreError(
            f"cannot open database {path}: {e.strerror or e} (does its directory exist and is it writable?)"
        ) from None


def _open(path, busy_timeout: float) -> sqlite3.Connection:
    """Open in autocommit mode (we write BEGIN/COMMIT ourselves), WAL on, files mode 0600."""
    _make_private(path)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    except sqlite3.Error as e:
        hint = "is the disk full, or the directory not writable?" if unavailable_reason(e) else (
            "does its directory exist and is it writable?")
        raise StoreError(f"cannot open database {path}: {e} ({hint})") from e
    if mode.lower() != "wal":
        conn.close()
        raise StoreError(f"database {path} cannot use WAL journal mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


#: SQLite's primary result codes that mean the file cannot be written (or read) now, not a bad request.
_UNAVAILABLE = {
    "SQLITE_FULL": "disk full",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_READONLY": "the database file is read-only",
    "SQLITE_CANTOPEN": "cannot open a database file",
    "SQLITE_CORRUPT": "the database file is damaged",
}


def unavailable_reason(error: sqlite3.Error) -> str | None:
    """``"disk full (SQLITE_FULL)"`` and the like for a storage failure, None for any other SQLite error."""
    name = getattr(error, "sqlite_errorname", None) or ""
    for primary, meaning in _UNAVAILABLE.items():
        if name == primary or name.startswith(primary + "_"):
            return "%s (%s)" % (meaning, name)
    return None


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _refuse_newer(path, version: int, known: int) -> None:
    if version > known:
        raise StoreError(
            f"database {path} has schema version {version}, newer than this scepproxyd knows ({known}); "
            "run the newer scepproxyd or restore a backup taken before it was upgraded"
        )


def _vacuum(conn: sqlite3.Connection, path, version: int) -> None:
    """
    Rebuild the database file and empty its WAL after a migration that rewrote secrets.

    Without it, copies of what the migration replaced (schema 13: the live
    proxy challenges in plain text) could stay in free pages of the file or
    in old WAL frames until overwritten. A failure (the rebuild needs room
    for a second copy; another process holding the database open keeps the
    WAL) leaves the migrated database as it is, with a warning: the leftovers
    are one-time challenges, refused anyway once ``[challenges] ttl`` has
    passed, and ``sqlite3 PATH VACUUM`` run later removes them.
    """
    try:
        conn.execute("VACUUM")
        (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        problem = "another process has the database open" if busy else None
    except sqlite3.Error as e:
        problem = str(e)
    if problem is None:
        log.info("compacted {path} after schema {version}", path=str(path), version=version)
    else:
        log.warn(
            "could not compact {path} after schema {version} ({problem}): copies of what it replaced may stay"
            " in the file's free space; run VACUUM on it while scepproxyd is stopped",
            path=str(path), version=version, problem=problem,
        )


def _in_transaction(conn, fn, write: bool, begin: str):
    """``fn(conn)``; a write inside ``begin`` ... COMMIT, rolled back whole if ``fn`` raises."""
    if not write:
        return fn(conn)
    conn.execute(begin)
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


#: Rows written at once past which PostgreSQL's statistics of the table are refreshed in the same job.
BULK_ROWS = 1000


def bulk_written(conn, table: str, count: int) -> None:
    """
    After ``count`` rows went into ``table`` at once: on PostgreSQL, refresh its statistics (ANALYZE).

    Statistics taken while a table was small make the planner join a claim
    back row by row over the whole table (seconds per batch) until
    autovacuum catches up; SQLite plans without them.
    """
    if count >= BULK_ROWS and isinstance(conn, postgres.Connection):
        conn.execute("ANALYZE %s" % (table,))


def skip_locked(conn, table: str) -> str:
    """
    The locking clause a claiming sub-SELECT ends with: ``FOR UPDATE OF table SKIP LOCKED`` on
    PostgreSQL, so concurrent claimers (other nodes) take disjoint rows; nothing on SQLite, whose one
    writer at a time already keeps claims apart.
    """
    return " FOR UPDATE OF %s SKIP LOCKED" % (table,) if isinstance(conn, postgres.Connection) else ""


def one(cls, cursor):
    """The cursor's first row as ``cls(*row)``, or None."""
    row = cursor.fetchone()
    return None if row is None else cls(*row)


def chunks(keys, size: int = IN_LIST_CHUNK):
    """``keys`` in lists of at most ``size``, for binding into ``IN (?, ...)``."""
    keys = list(keys)
    for start in range(0, len(keys), size):
        yield keys[start:start + size]


def placeholders(keys) -> str:
    return ", ".join("?" * len(keys))


def keyset(order, after) -> tuple[str, list]:
    """
    The condition for rows after ``after`` in ``order`` (keyset pagination), as ``(sql, params)``.

    ``order`` is ``[(column, descending), ...]``, the full sort key of a
    list (unique, ending in a primary key); ``after`` the values of those
    columns in the last row of the page before, or None for the first page.
    Rows are found through the sort key, never by skipping (no OFFSET), so a
    page costs the same deep in a million rows as at the start, and rows
    added or deleted meanwhile move no other row across a page boundary.
    """
    if after is None:
        return "1 = 1", []
    if len(after) != len(order):
        raise ValueError(f"a page key has {len(order)} values, not {len(after)}")
    alternatives, params = [], []
    for index, (column, descending) in enumerate(order):
        equal = [f"{c} = ?" for c, _ in order[:index]]
        alternatives.append("(" + " AND ".join(equal + [f"{column} {'<' if descending else '>'} ?"]) + ")")
        params.extend(after[:index])
        params.append(after[index])
    return "(" + " OR ".join(alternatives) + ")", params


def order_by(order) -> str:
    return ", ".join(f"{column}{' DESC' if descending else ''}" for column, descending in order)


class Database:
    """
    The DB thread and its connection; the query mixins run their SQL through ``_submit``.

    Call ``Store.migrate(path)`` once before ``start()``; ``start()`` refuses
    a database whose schema is not exactly the one this code knows.
    """

    #: When a reactor shutdown closes a store nobody stopped. The daemon's
    #: StoreService sets "during", so its own ordered stop (in the "before"
    #: phase, draining requests that still need the database) comes first.
    shutdown_phase = "before"

    def __init__(
        self,
        path,
        reactor,
        clock=None,
        challenge_ttl: float = 3600.0,
        busy_timeout: float = 5.0,
        max_retries: int = 3,
        password: str | None = None,
        pool_size: int = 4,
        in_flight_limit: float = 180.0,
    ):
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, not {max_retries!r}")
        self._path = path
        #: "sqlite" or "postgresql": the few places that differ ask this.
        self.engine = "postgresql" if postgres.is_postgres(path) else "sqlite"
        self._password = password
        #: On PostgreSQL: how long a challenge may be in flight before it counts as a dead node's orphan.
        self._in_flight_limit = in_flight_limit
        self._threads = pool_size if self.engine == "postgresql" else 1
        self._connections = None  # psycopg_pool.ConnectionPool, on PostgreSQL
        # With several DB threads, jobs wait until the pool is open, and the close waits for every job
        # submitted before it (counted here from submission to its end, on PostgreSQL).
        self._opened = threading.Event()
        self._active = 0
        self._idle = threading.Condition()
        self._max_retries = max_retries
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._challenge_ttl = challenge_ttl
        self._busy_timeout = busy_timeout
        self._pool: ThreadPool | None = None
        self._running = False
        self._stop_waiters: list[defer.Deferred] | None = None  # a list while stopping
        self._shutdown_trigger = None
        self._conn: sqlite3.Connection | None = None  # touched only on the DB thread
        #: Why the last write failed (None while writes work); read and set on the reactor thread.
        self.write_problem: str | None = None
        self._write_problem_since: float | None = None
        self._grouped = group_commit.WriteQueue(reactor, self._run_batch, group_commit.batch_cap(self._threads))
        #: Bumped (on the reactor thread) after every write that can change a proxy target: a CA, profile,
        #: host or assignment added, changed or removed. Caches of proxy_target compare it to drop what they hold.
        self.targets_generation = 0

    @staticmethod
    def migrate(path, password: str | None = None) -> int:
        """
        Bring the database at ``path`` (a file, or a ``postgresql://`` URL) to the newest schema, synchronously.

        Run by the tap before the reactor starts, so a bad file or a too-new
        schema stops twistd with a message rather than failing later. Each
        file runs in its own ``BEGIN IMMEDIATE`` transaction with its
        ``user_version`` bump, and the version is read inside it, so two
        processes migrating at once cannot both apply the same file (on
        PostgreSQL, under an advisory lock: see ``store.postgres.migrate``).
        """
        if postgres.is_postgres(path):
            return postgres.migrate(path, password, _schema_files("postgresql"), statements, _refuse_newer, log)
        files = _schema_files()
        conn = _open(path, busy_timeout=5.0)
        # Schema 8 backfills the hash of each pending host profile's newest challenge.
        conn.create_function("sha256_hex", 1, challenge_hash, deterministic=True)
        # What a migration deletes or rewrites is overwritten with zeros, whatever SQLite's build default.
        conn.execute("PRAGMA secure_delete = ON")
        # A table rebuild (schema 18: SQLite's documented twelve steps) needs both: with foreign keys off,
        # dropping the old table neither cascades nor fails; with the modern ALTER TABLE, renaming the new
        # table into place leaves every other table's REFERENCES to the old name pointing at it. The
        # foreign_key_check after each file is what proves no row lost its parent.
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA legacy_alter_table = OFF")
        vacuum, started = [], None
        try:
            for number, script in files:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = _user_version(conn)
                    started = version if started is None else started
                    _refuse_newer(path, version, files[-1][0])
                    if version < number:
                        for statement in statements(script):
                            conn.execute(statement)
                        if conn.execute("PRAGMA foreign_key_check").fetchall():
                            raise StoreError(f"schema {number} left rows breaking foreign keys in {path}")
                        conn.execute(f"PRAGMA user_version = {number}")
                        log.info("applied schema {version} to {path}", version=number, path=str(path))
                        if started > 0 and VACUUM_AFTER in script.splitlines():  # a new database has nothing to hide
                            vacuum.append(number)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            if vacuum:
                _vacuum(conn, path, vacuum[-1])
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
        self._pool = ThreadPool(minthreads=1, maxthreads=self._threads, name="scepproxyd-db")
        self._pool.start()
        self._running = True
        # Without stop() a reactor shutdown would leave the (non-daemon) DB
        # thread behind; the trigger's Deferred is waited for, so the close runs.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            self.shutdown_phase, "shutdown", self._stop_at_shutdown
        )

        def failed(failure):
            self._running = False
            if self._stop_waiters is None:  # else a stop() in progress stops the pool
                self._stop_pool(None)
            return failure

        return deferToThreadPool(self._reactor, self._pool, self._connect).addErrback(failed)

    def _connect(self) -> None:
        if self.engine == "postgresql":
            try:
                self._connections = postgres.open_pool(self._path, self._password, self._threads,
                                                       self._busy_timeout, _schema_files()[-1][0], _refuse_newer)
            finally:
                self._opened.set()
            return
        conn = _open(self._path, self._busy_timeout)
        known, version = _schema_files()[-1][0], _user_version(conn)
        if version != known:
            conn.close()
            _refuse_newer(self._path, version, known)
            raise StoreError(f"database {self._path} has schema version {version}, expected {known}: run migrate first")
        conn.execute("PRAGMA foreign_keys = ON")
        # Lets one INSERT ... SELECT give every new host profile its own token.
        conn.create_function("new_renewal_id", 0, new_renewal_id)
        # Named as PostgreSQL's built-in, so claiming SQL reads the same on both.
        conn.create_function("gen_random_uuid", 0, new_command_uuid)
        conn.create_function("utc_iso", 1, utc_iso, deterministic=True)
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
        if self._connections is not None:
            with self._idle:  # jobs submitted before stop() may still run on the other DB threads
                self._idle.wait_for(lambda: self._active == 0, timeout=self._busy_timeout + 60.0)
                self._connections.close()
                self._connections = None
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

    @defer.inlineCallbacks
    def _delete_in_batches(self, delete_batch, batch: int, on_batch=None):
        """Run ``delete_batch(conn)`` (returning a rowcount of at most ``batch``) until it deletes less.

        Each batch is its own job, so calls queued meanwhile (the proxy's)
        are not held behind one long delete. Fires the total. With
        ``on_batch``, ``delete_batch`` returns ``(rowcount, extra)`` and
        ``on_batch(extra)`` is called on this thread after each batch: what
        else the batch did, reported as it happens rather than at the end.
        """
        total = 0
        while True:
            count = yield self._submit(delete_batch)
            if on_batch is not None:
                count, extra = count
                on_batch(extra)
            total += count
            if count < batch:
                return total

    def _collect_in_batches(self, job, batch: int, on_items=None) -> defer.Deferred:
        """
        L{_delete_in_batches} for a ``job`` returning ``(rowcount, items)``: fires ``(total, all items)``.

        ``on_items`` is called with each non-empty batch's items as it is
        done (a job logs what it resent between batches, not at the end).
        """
        collected = []

        def each_batch(items):
            collected.extend(items)
            if on_items is not None and items:
                on_items(items)

        d = self._delete_in_batches(job, batch, each_batch)
        return d.addCallback(lambda total: (total, tuple(collected)))

    def _submit(self, fn, write: bool = True, changes_targets: bool = False, group: bool = False) -> defer.Deferred:
        """
        Queue ``fn(conn)`` on the DB thread; a write gets a transaction of its own.

        Whatever ``fn`` raises rolls the whole transaction back, so a write
        that checks as it goes still leaves nothing behind when a check fails.
        ``changes_targets``: the write can change what ``proxy_target``
        answers, so ``targets_generation`` moves on once it is over (failed
        too: an uncertain COMMIT may have happened), before its caller hears.
        ``group``: a short write (a few statements on a few rows) that may
        share its transaction with others queued at the same moment
        (store.group_commit); it still fails or succeeds on its own, but a
        failed COMMIT fails the whole batch. On SQLite a grouped job may run
        before ungrouped jobs queued earlier, never after one queued later.
        """
        if not self._running:
            return defer.fail(StoreError("store is not running; call start() first"))
        if self.engine == "postgresql":  # see _postgres_job
            with self._idle:
                self._active += 1
        if group and write:
            d = self._grouped.submit(self._pool, fn)
        else:
            d = deferToThreadPool(self._reactor, self._pool, self._run, fn, write)
        if write:
            d.addCallbacks(self._write_worked, self._write_failed)
        if changes_targets:
            d.addBoth(self._targets_changed)
        return d

    def _targets_changed(self, result):
        self.targets_generation += 1
        return result

    def _write_worked(self, result):
        if self.write_problem is not None:
            log.info(
                "database writes work again after {seconds:.0f} s ({reason} before); /readyz is ready again",
                seconds=self._clock.seconds() - self._write_problem_since, reason=self.write_problem,
            )
            self.write_problem = self._write_problem_since = None
        return result

    def _write_failed(self, failure):
        if failure.check(StoreUnavailable) and self.write_problem is None:
            self.write_problem = failure.value.reason
            self._write_problem_since = self._clock.seconds()
            log.error(
                "database writes fail: {reason}; answering 503 and /readyz not ready until a write succeeds "
                "(docs/operations.md, Disk full)", reason=failure.value.reason,
            )
        return failure

    def probe_writes(self) -> defer.Deferred:
        """
        One tiny write and a WAL checkpoint that truncates the WAL, so a full disk shows without traffic.

        The update and the next writes then need new space in the WAL file,
        which is what fails on a full disk; a probe that succeeds after a
        failure is how readiness comes back while nobody writes.
        """

        def probe_writes(conn):
            conn.execute(
                "UPDATE write_probe SET probes = probes + 1, probed_at = utc_iso(?) WHERE id = 1",
                (self._clock.seconds(),),
            )

        def checkpoint(_):
            if self.engine == "postgresql":
                return None  # the server keeps its own WAL

            def truncate_wal(conn):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

            return self._submit(truncate_wal, write=False).addCallbacks(self._write_worked, self._write_failed)

        return self._submit(probe_writes).addCallback(checkpoint)

    def _run(self, fn, write: bool):
        if self.engine == "postgresql":
            with self._postgres_job():
                return self._run_postgres(fn, write)
        return self._run_sqlite(fn, write)

    @contextlib.contextmanager
    def _postgres_job(self, jobs: int = 1):
        """
        Around ``jobs`` submitted jobs on a PostgreSQL DB thread: waits for the pool to open, counts them done after.

        ``_submit`` counted them in ``_active`` on the reactor thread, so
        ``_close`` waits for a job queued before ``stop()`` even when another
        DB thread dequeued it and has not started it yet.
        """
        try:
            self._opened.wait()
            if self._connections is None:
                raise StoreError("store is not open")
            yield
        finally:
            with self._idle:
                self._active -= jobs
                self._idle.notify_all()

    def _run_sqlite(self, fn, write: bool):
        try:
            return _in_transaction(self._conn, fn, write, "BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _sqlite_error(fn, e) from e

    def _run_postgres(self, fn, write: bool):
        """``fn`` on a pooled connection, a write in its own transaction; psycopg errors as the store's."""
        try:
            with self._connections.connection() as raw:
                return _in_transaction(postgres.Connection(raw), fn, write, "BEGIN")
        except (_psycopg.Error, postgres.PoolTimeout) as e:
            raise self._postgres_error(fn, e) from None

    def _postgres_error(self, fn, e) -> StoreError:
        """What a psycopg error (or the pool's timeout) in ``fn`` means, as the store's error."""
        if isinstance(e, _psycopg.IntegrityError):
            # Checked first, then written: on SQLite one writer at a time makes that safe; on PostgreSQL
            # another node (or DB thread) may write the same key in between. That is a duplicate, said so.
            constraint = getattr(getattr(e, "diag", None), "constraint_name", None) or "a constraint"
            if getattr(e, "sqlstate", None) == "23505":
                return DuplicateError(f"{fn.__name__}: the row was written meanwhile by another request ({constraint})")
            return StoreError(f"{fn.__name__}: a concurrent change conflicted ({constraint})")
        if isinstance(e, _psycopg.Error):
            reason = postgres.unavailable_reason(e)
            if reason is not None:
                return StoreUnavailable(reason)
            return StoreError(f"database error in {fn.__name__}: {str(e).strip()}")
        return StoreUnavailable("no database connection within %.0f s" % (self._busy_timeout,))

    # -- group commit (store.group_commit) ------------------------------------

    def _run_batch(self, fns) -> list:
        """
        On a DB thread: ``fns`` (grouped writes) in one transaction; ``(ok, result or Failure)`` for each.

        When one of them fails, each runs again alone, as an ungrouped write
        would (its own transaction, its own translated error). On PostgreSQL
        the jobs of a batch share one pooled connection, any DB thread's.
        """
        if self.engine == "postgresql":
            with self._postgres_job(len(fns)):
                outcomes = self._batch_postgres(fns)
                if outcomes is None:
                    outcomes = [group_commit.outcome(self._run_postgres, fn, True) for fn in fns]
                return outcomes
        outcomes = self._batch_sqlite(fns)
        if outcomes is None:
            outcomes = [group_commit.outcome(self._run_sqlite, fn, True) for fn in fns]
        return outcomes

    def _batch_sqlite(self, fns):
        try:
            results = group_commit.run_together(self._conn, fns, "BEGIN IMMEDIATE")
        except sqlite3.Error as e:  # BEGIN or COMMIT: every job of the batch failed alike
            return [(False, Failure(_sqlite_error(fn, e))) for fn in fns]
        return None if results is None else [(True, result) for result in results]

    def _batch_postgres(self, fns):
        try:
            with self._connections.connection() as raw:
                results = group_commit.run_together(postgres.Connection(raw), fns, "BEGIN")
        except (_psycopg.Error, postgres.PoolTimeout) as e:
            return [(False, Failure(self._postgres_error(fn, e))) for fn in fns]
        return None if results is None else [(True, result) for result in results]


def _sqlite_error(fn, e: sqlite3.Error) -> StoreError:
    """What an SQLite error in ``fn`` means, as the store's error: StoreUnavailable when the file cannot be written."""
    reason = unavailable_reason(e)
    if reason is not None:
        return StoreUnavailable(reason)
    return StoreError(f"database error in {fn.__name__}: {e}")
