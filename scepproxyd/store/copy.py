"""
Moving a site from SQLite to PostgreSQL: every row of a stopped daemon's database, copied once, checked.

``scepproxyctl database copy --to URL`` runs this. Why it is shaped this way:

- **Offline, from one state.** The SQLite file is opened with its exclusive
  lock (``store.offline``): a daemon that has it open is refused, and while
  the copy runs nobody can change it, so every table is read from the same
  moment. Nothing is ever written to it.
- **The same schema on both sides.** The source must be at the schema this
  code knows (an older one is brought up to date by starting the daemon on it
  once); the target is migrated to it with ``Store.migrate``, so its tables
  are the ones the daemon expects on PostgreSQL, then every column is copied
  by name.
- **An empty target only.** A database at another schema version, holding
  other tables, or holding any scepproxyd rows is refused before anything is
  written: a copy never merges two sites.
- **One transaction.** The rows go in with ``COPY`` (one statement per table,
  parents before children so foreign keys hold at every row), read from
  SQLite in batches; then the rows of each table are counted on both sides.
  Any error or difference rolls everything back: the target is left as
  migrated and empty, and the copy can simply be run again. The transaction
  holds the migration lock, so a node started meanwhile waits for it.
- **No secret in a message.** Errors name the table and PostgreSQL's primary
  message, never a row (rows hold sealed challenges and key ciphertexts),
  and URLs are shown without any password.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from scepproxyd.store import offline, postgres
from scepproxyd.store.models import StoreError

#: Rows read from SQLite per round.
BATCH = 1000
#: Tables the migration itself fills: their rows are replaced by the source's,
#: and they do not make a target "not empty".
SEEDED = frozenset({"write_probe"})


class CopyError(StoreError):
    """The copy was refused or failed; nothing was written to the target. ``str()`` is the whole message."""


@dataclass(frozen=True)
class CopyResult:
    source: str
    #: The target's URL as shown (no password).
    target: str
    schema_version: int
    #: Table name -> rows copied (and counted on both sides), in the order they were copied.
    tables: dict


def _source_tables(conn: sqlite3.Connection) -> list[str]:
    """The source's tables, parents before children (each table after the tables its foreign keys name)."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    parents = {name: {row[2] for row in conn.execute("SELECT * FROM pragma_foreign_key_list(?)", (name,))} - {name}
               for name in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise CopyError("the tables' foreign keys form a cycle (%s); cannot order the copy"
                            % (", ".join(sorted(set(names) - set(ordered))),))
        ordered.extend(ready)
    return ordered


def _source_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def _quoted(name: str) -> str:
    return '"%s"' % (name.replace('"', '""'),)


def _open_source(path: Path, known: int) -> sqlite3.Connection:
    """The source locked for the whole copy, checked to be at schema ``known``."""
    if not path.is_file():
        raise CopyError("there is no SQLite database at %s ([database] path): nothing to copy" % (path,))
    try:
        conn = offline.lock_exclusive(path)
    except offline.DatabaseInUse:
        raise CopyError(
            "scepproxyd is running: another process has the database %s open; stop the daemon "
            "(systemctl stop scepproxyd) and run the copy again" % (path,)
        ) from None
    except sqlite3.Error as e:
        raise CopyError("cannot read the SQLite database %s: %s" % (path, e)) from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as e:
        conn.close()
        raise CopyError("cannot read the SQLite database %s: %s" % (path, e)) from None
    if version != known:
        conn.close()
        if version > known:
            raise CopyError("the SQLite database %s has schema version %d, newer than this scepproxyd knows (%d); "
                            "copy it with the scepproxyd that wrote it" % (path, version, known))
        raise CopyError("the SQLite database %s has schema version %d, this scepproxyd's is %d: start scepproxyd "
                        "on it once (it upgrades the schema at start), stop it, and copy again"
                        % (path, version, known))
    return conn


def _connect_target(url: str, password: str | None) -> postgres.Connection:
    try:
        return postgres.connect(url, password)
    except StoreError as e:
        # libpq's words: a refused login or an unreachable server, naming host, port and user, never the password.
        raise CopyError("cannot open the target database %s: %s; nothing was copied"
                        % (postgres.redacted(url), getattr(e, "reason", None) or e)) from None


def _check_target_before_migrating(url: str, password: str | None, known: int) -> None:
    """Refuse a target at another schema version, or one holding tables of something else, before migrating it."""
    conn = _connect_target(url, password)
    try:
        version = postgres.schema_version(conn)
        if version == 0:
            others = [row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                " ORDER BY table_name")]
            if others:
                raise CopyError(
                    "the target database %s is not empty: it holds tables that are not scepproxyd's (%s); copy "
                    "into a new, empty database (CREATE DATABASE ... OWNER ...)"
                    % (postgres.redacted(url), ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")))
        elif version != known:
            raise CopyError(
                "the target database %s has scepproxyd schema version %d, not %d as the SQLite database: it "
                "already holds a scepproxyd site; copy into a new, empty database" % (postgres.redacted(url),
                                                                                      version, known))
    finally:
        conn.close()


def _migrate_target(url: str, password: str | None) -> int:
    from scepproxyd.store.database import Database

    try:
        return Database.migrate(url, password)
    except StoreError as e:
        raise CopyError("cannot prepare the target database: %s; nothing was copied"
                        % (getattr(e, "reason", None) or e,)) from None


def _target_columns(conn: postgres.Connection, table: str) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ? ORDER BY ordinal_position", (table,))]


def _count(conn, table: str) -> int:
    return conn.execute("SELECT count(*) FROM %s" % (_quoted(table),)).fetchone()[0]


def _refuse_rows(conn: postgres.Connection, url: str, tables) -> None:
    full = [(table, _count(conn, table)) for table in tables if table not in SEEDED]
    full = [(table, rows) for table, rows in full if rows]
    if full:
        raise CopyError(
            "the target database %s is not empty: it already holds scepproxyd rows (%s); copy into a new, empty "
            "database (or drop and create this one again)"
            % (postgres.redacted(url), ", ".join("%s: %d" % item for item in full)))


def _without_values(error) -> str:
    """PostgreSQL's primary message, cut before a quoted value (``invalid input syntax for type ...: "..."``)."""
    message = getattr(getattr(error, "diag", None), "message_primary", None) or " ".join(str(error).split())
    return re.sub(r':\s*".*$', "", message, flags=re.S)


def _copy_table(source: sqlite3.Connection, target: postgres.Connection, table: str, columns: list[str],
                batch: int) -> int:
    """COPY one table's rows from SQLite into PostgreSQL; the number of rows written."""
    names = ", ".join(_quoted(c) for c in columns)
    written = 0
    cursor = source.execute("SELECT %s FROM %s" % (names, _quoted(table)))
    with target.raw.cursor().copy("COPY %s (%s) FROM STDIN" % (_quoted(table), names)) as pipe:
        while rows := cursor.fetchmany(batch):
            for row in rows:
                pipe.write_row(row)
            written += len(rows)
    return written


def _copy_rows(source: sqlite3.Connection, target: postgres.Connection, url: str, known: int,
               batch: int) -> dict:
    """Every table, in one transaction under the migration lock; rolled back on any error or difference."""
    import psycopg

    tables = _source_tables(source)
    copied: dict[str, int] = {}
    target.execute("BEGIN")
    try:
        target.execute("SELECT pg_advisory_xact_lock(?)", (postgres.MIGRATION_LOCK,))
        version = postgres.schema_version(target)
        if version != known:  # changed since it was migrated: another node or copy got there first
            raise CopyError("the target database %s moved to schema version %d during the copy; nothing was copied"
                            % (postgres.redacted(url), version))
        for table in tables:
            columns, present = _source_columns(source, table), _target_columns(target, table)
            if set(columns) != set(present):
                raise CopyError(
                    "table %s has columns (%s) in SQLite but (%s) in PostgreSQL at the same schema version; "
                    "nothing was copied" % (table, ", ".join(sorted(columns)), ", ".join(sorted(present)) or "none"))
        _refuse_rows(target, url, tables)
        for table in tables:
            if table in SEEDED:
                target.execute("DELETE FROM %s" % (_quoted(table),))
            try:
                written = _copy_table(source, target, table, _source_columns(source, table), batch)
            except psycopg.Error as e:
                raise CopyError("copying table %s failed: %s; nothing was copied"
                                % (table, _without_values(e))) from None
            expected, landed = _count(source, table), _count(target, table)
            if not expected == written == landed:
                raise CopyError(
                    "table %s: %d rows in SQLite, %d written, %d in PostgreSQL; nothing was copied"
                    % (table, expected, written, landed))
            copied[table] = landed
        target.execute("COMMIT")
    except BaseException:
        if target.in_transaction:
            target.execute("ROLLBACK")
        raise
    return copied


def copy_to_postgres(source: Path, url: str, password: str | None = None, batch: int = BATCH) -> CopyResult:
    """
    Copy the stopped daemon's SQLite database at ``source`` into the empty PostgreSQL database at ``url``.

    ``password`` is the PostgreSQL password (None: libpq's own, PGPASSWORD or
    ~/.pgpass). Returns what was copied; every refusal or failure is a
    L{CopyError} whose message says what to do, and leaves the target as
    migrated with no rows, and the source as it was.
    """
    import psycopg

    from scepproxyd.store.database import _schema_files

    known = _schema_files()[-1][0]
    source_conn = _open_source(Path(source), known)
    try:
        _check_target_before_migrating(url, password, known)
        _migrate_target(url, password)
        target = _connect_target(url, password)
        try:
            try:
                tables = _copy_rows(source_conn, target, url, known, batch)
            except psycopg.Error as e:
                raise CopyError("the copy into %s failed: %s; nothing was copied"
                                % (postgres.redacted(url), _without_values(e))) from None
            except sqlite3.Error as e:
                raise CopyError("reading the SQLite database %s failed: %s; nothing was copied" % (source, e)) from None
        finally:
            target.close()
    finally:
        source_conn.close()
    return CopyResult(str(source), postgres.redacted(url), known, tables)

