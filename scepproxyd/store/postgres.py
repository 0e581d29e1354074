"""
PostgreSQL under the same store: every difference from SQLite, in one place.

The store's SQL is written once, in the dialect both engines accept. What
differs is handled here and nowhere else:

- **Placeholders**: the store writes ``?``; psycopg wants ``%s`` (and a
  literal ``%`` doubled). ``LIMIT ?`` with -1 (SQLite's "no limit") reads
  as ``LIMIT NULLIF(%s, -1)``, PostgreSQL's ``LIMIT NULL``. Translations
  are cached per statement.
- **Parameters** are bound on the client (psycopg's ``ClientCursor``), as
  sqlite3 does: ``? IS NULL`` needs no type for a NULL, and each statement
  is one round trip; ``executemany`` binds on the server in one pipeline,
  its statements being plain INSERTs and UPDATEs whose parameters the
  columns type.
- **Schema files**: ``BLOB`` is ``BYTEA`` and ``REAL`` is ``DOUBLE
  PRECISION``; the version lives in ``scepproxyd_schema`` (SQLite's
  ``PRAGMA user_version``); migrations run under an advisory lock, so two
  nodes starting at once apply each file once.
- **Functions** the SQLite connection defines in Python (``new_renewal_id``,
  ``utc_iso``, ``sha256_hex``), and SQLite's own ``randomblob`` and ``hex``
  that an old schema file uses, are SQL functions here, made by the
  migration; ``gen_random_uuid`` is PostgreSQL's own.
- **Transactions**: ``BEGIN`` (READ COMMITTED) instead of ``BEGIN
  IMMEDIATE``; the statements that must not race between nodes are single
  atomic statements or claim rows (``FOR UPDATE SKIP LOCKED``).

The password never appears in a URL the daemon logs: it comes from a file
(``[database] password_file``) or libpq's own ``PGPASSWORD``, and
``redacted()`` drops any password written into a URL.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

from scepproxyd.store.models import StoreError, StoreUnavailable

#: An advisory lock key of scepproxyd's own ("scepproxy" in ASCII, fits a bigint).
MIGRATION_LOCK = 0x7363657070726F78

_FUNCTIONS = (
    # A renewal ID as models.new_renewal_id makes it: "sp-" and 16 random hex digits.
    "CREATE OR REPLACE FUNCTION new_renewal_id() RETURNS text LANGUAGE sql VOLATILE AS"
    " $$ SELECT 'sp-' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16) $$",
    # SQLite's randomblob(n) (n <= 32) and hex(blob), which schema 3 uses to give old rows renewal IDs.
    "CREATE OR REPLACE FUNCTION randomblob(integer) RETURNS bytea LANGUAGE sql VOLATILE AS"
    " $$ SELECT substring(decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')"
    " FROM 1 FOR $1) $$",
    "CREATE OR REPLACE FUNCTION hex(bytea) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(encode($1, 'hex')) $$",
    # timestamps.utc_iso: "2024-05-01T12:00:00+00:00".
    "CREATE OR REPLACE FUNCTION utc_iso(double precision) RETURNS text LANGUAGE sql IMMUTABLE AS"
    " $$ SELECT to_char(to_timestamp($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"') $$",
    # models.challenge_hash: hex SHA-256 of the UTF-8 text.
    "CREATE OR REPLACE FUNCTION sha256_hex(text) RETURNS text LANGUAGE sql IMMUTABLE AS"
    " $$ SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') $$",
)

_TYPES = ((re.compile(r"\bBLOB\b"), "BYTEA"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"))
_LIMIT = re.compile(r"\bLIMIT \?")
_cache: dict[str, str] = {}
_cache_lock = threading.Lock()


def is_postgres(target) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def translate(sql: str) -> str:
    """The store's SQL with psycopg's placeholders (cached: the store has a few hundred statements)."""
    done = _cache.get(sql)
    if done is None:
        done = _LIMIT.sub("LIMIT NULLIF(?, -1)", sql.replace("%", "%%")).replace("?", "%s")
        with _cache_lock:
            _cache[sql] = done
    return done


def schema_for_postgres(script: str) -> str:
    for pattern, replacement in _TYPES:
        script = pattern.sub(replacement, script)
    return script


def redacted(url: str) -> str:
    """``url`` with any password in it replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (user, netloc[1])))


# SQLSTATE classes that mean the server cannot be used now, rather than a bad statement.
_UNAVAILABLE_CLASSES = {
    "08": "cannot reach the database server",
    "53": "the database server is out of resources",
    "57": "the database server is shutting down or restarting",
    "58": "the database server had a system error",
}


def connection_problem(error) -> Exception:
    """
    What a failed connection means, as the store's error: StoreError for a refused login (a
    configuration to fix), StoreUnavailable for a server that cannot be reached (try again later).
    libpq's message names host, port and user, never the password.
    """
    text = " ".join(str(error).split())
    if "authentication failed" in text or "no password supplied" in text or "does not exist" in text:
        return StoreError(text)
    return StoreUnavailable("cannot reach the database server: %s" % (text,))


def unavailable_reason(error) -> str | None:
    """A short reason when ``error`` (a psycopg error) means "try again later", else None."""
    import psycopg

    if isinstance(error, psycopg.OperationalError) and getattr(error, "sqlstate", None) is None:
        return "cannot reach the database server: %s" % (" ".join(str(error).split()),)
    state = getattr(error, "sqlstate", None) or ""
    meaning = _UNAVAILABLE_CLASSES.get(state[:2])
    return None if meaning is None else "%s (SQLSTATE %s)" % (meaning, state)


class Connection:
    """
    A psycopg connection that the store's query code uses exactly like an sqlite3 one.

    ``execute`` takes ``?`` placeholders and returns a cursor with
    ``fetchone``, ``fetchall``, iteration and ``rowcount``; ``executemany``
    likewise. Transactions are the Database's: it sends BEGIN, COMMIT and
    ROLLBACK itself on a connection in autocommit mode, as with sqlite3.
    """

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params=()):
        if sql in ("BEGIN IMMEDIATE", "BEGIN"):
            sql = "BEGIN"
        return self.raw.execute(translate(sql), tuple(params) if params else None)

    def executemany(self, sql: str, rows):
        """
        One statement over many rows, bound on the server and sent in one pipeline: one prepared
        statement rather than a composed query and a round trip per row (the claim's 1,000 commands).
        """
        import psycopg

        cursor = psycopg.Cursor(self.raw)
        cursor.executemany(translate(sql), [tuple(row) for row in rows])
        return cursor

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def in_usable_transaction(self) -> bool:
        """In a transaction no statement has failed in: after an error PostgreSQL refuses all but ROLLBACK,
        and turns a COMMIT into a rollback without saying so."""
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status == TransactionStatus.INTRANS

    def close(self) -> None:
        self.raw.close()


def connect(url: str, password: str | None = None, connect_timeout: float = 10.0) -> Connection:
    """One connection in autocommit mode with client-side binding; StoreUnavailable if the server is down."""
    import psycopg

    kwargs = {"password": password} if password else {}
    try:
        raw = psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor,
                              connect_timeout=max(1, int(connect_timeout)), **kwargs)
    except psycopg.Error as e:
        raise connection_problem(e) from None
    raw.execute("SET TIME ZONE 'UTC'")
    return Connection(raw)


def schema_version(conn: Connection) -> int:
    """The applied schema version; 0 for an empty database."""
    exists = conn.execute("SELECT to_regclass('scepproxyd_schema') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM scepproxyd_schema").fetchone()
    return 0 if row is None else row[0]


def migrate(url: str, password: str | None, files, statements, refuse_newer, log) -> int:
    """
    Apply the schema files to the PostgreSQL database at ``url``; the version reached.

    Each file runs in its own transaction holding an advisory lock, and the
    version is read inside it: a second node starting at the same moment
    waits, then finds the file applied and moves on.
    """
    import psycopg

    conn = connect(url, password)
    try:
        known = files[-1][0]
        for number, script in files:
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                version = schema_version(conn)
                refuse_newer(redacted(url), version, known)
                if version < number:
                    if version == 0:
                        conn.execute("CREATE TABLE IF NOT EXISTS scepproxyd_schema (version INTEGER NOT NULL)")
                        conn.execute("INSERT INTO scepproxyd_schema (version) VALUES (0)")
                        for function in _FUNCTIONS:
                            conn.raw.execute(function)
                    for statement in statements(schema_for_postgres(script)):
                        conn.raw.execute(statement)
                    conn.execute("UPDATE scepproxyd_schema SET version = ?", (number,))
                    log.info("applied schema {version} to {url}", version=number, url=redacted(url))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        conn.execute("BEGIN")
        version = schema_version(conn)
        conn.execute("COMMIT")
        return version
    except psycopg.Error as e:
        raise StoreError("migrating database %s failed: %s" % (redacted(url), str(e).strip())) from None
    finally:
        conn.close()


def skip_locked() -> str:
    """What a claiming SELECT adds on PostgreSQL, so two nodes never claim one row (SQLite has one writer)."""
    return " FOR UPDATE SKIP LOCKED"


try:
    from psycopg_pool import PoolTimeout
except ImportError:  # pragma: no cover - only PostgreSQL needs it
    class PoolTimeout(Exception):
        """Stands in when psycopg_pool is not installed (then no PostgreSQL pool is ever made)."""


def open_pool(url: str, password: str | None, size: int, timeout: float, known: int, refuse_newer):
    """
    psycopg's pool of ``size`` connections, opened and checked: the schema must be exactly ``known``.

    Each connection is in autocommit mode with client-side binding and the
    UTC time zone; a broken one (the server restarted) is replaced before
    a job gets it. Fails with StoreUnavailable when the server is down,
    StoreError when the schema is not the one this code knows.
    """
    import psycopg
    from psycopg_pool import ConnectionPool

    def configure(raw):
        raw.execute("SET TIME ZONE 'UTC'")

    kwargs = {"autocommit": True, "cursor_factory": psycopg.ClientCursor,
              "connect_timeout": max(1, int(timeout))}
    if password:
        kwargs["password"] = password
    pool = ConnectionPool(url, min_size=size, max_size=size, kwargs=kwargs, configure=configure,
                          check=ConnectionPool.check_connection, timeout=timeout, open=False,
                          name="scepproxyd-postgresql")
    try:
        pool.open(wait=True, timeout=timeout)
    except PoolTimeout:
        pool.close()
        connect(url, password, timeout).close()  # says why (a refused login, a server down) ...
        raise StoreUnavailable("cannot reach the database server at %s" % (redacted(url),)) from None
    try:
        with pool.connection() as raw:
            version = schema_version(Connection(raw))
    except psycopg.Error as e:
        pool.close()
        raise StoreUnavailable("%s (%s)" % (unavailable_reason(e) or str(e).strip(), redacted(url))) from None
    if version != known:
        pool.close()
        refuse_newer(redacted(url), version, known)
        raise StoreError("database %s has schema version %d, expected %d: run migrate first"
                         % (redacted(url), version, known))
    return pool
