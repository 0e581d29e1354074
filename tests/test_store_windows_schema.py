"""The schema that adds Windows hosts and SyncML profiles, upgrading a database that has rows.

SQLite rebuilds ``hosts`` and ``profiles`` to widen their CHECK constraints;
PostgreSQL replaces the constraints. Either way every row, column, index and
foreign key must survive, including foreign keys from tables this schema
does not know (a later or parallel schema's table referencing hosts).
"""

import sqlite3

import pytest
import pytest_twisted

from scepproxyd.daemon.logs import get_logger
from scepproxyd.store import Store, postgres
from scepproxyd.store.database import _refuse_newer, _schema_files, statements
from support.store import CA, EPOCH, SCHEMA_VERSION, claim_all, database_at_schema

# Found by what it does, not its number: numbers are given out at merge.
WINDOWS_SCHEMA = next(n for n, script in _schema_files() if "'windows_syncml'" in script)
HOSTS = [("mac-1", "C02", "macos"), ("droid-1", None, "android"), ("ipad-1", "DMP", "ipados")]
PROFILES = [
    ("p-apple", "Wi-Fi", "macos", b"<plist/>", CA, "mobileconfig", "com.example.wifi", '["X"]', 0),
    ("p-droid", "Android", "android", b"{}", None, "android_template", "tmpl", "[]", 1),
]
# A table the Windows schema does not know, shaped like one another schema adds beside it.
LATER_TABLE = ("CREATE TABLE later_host_notes (host_uuid TEXT NOT NULL PRIMARY KEY"
               " REFERENCES hosts (uuid) ON DELETE CASCADE, note TEXT)")


class Engine:
    """One engine's plain connection with ``?`` placeholders, and how to read its catalogue."""

    def __init__(self, engine, target, password):
        self.engine, self.target, self.password = engine, target, password

    def before(self, version):
        if self.engine == "sqlite":
            self.conn = database_at_schema(self.target, version)
        else:
            postgres.migrate(self.target, self.password, _schema_files("postgresql")[:version],
                             statements, _refuse_newer, get_logger(__name__))
            self.conn = postgres.connect(self.target, self.password)
        return self

    def reopen(self):
        self.conn.close()
        if self.engine == "sqlite":
            self.conn = sqlite3.connect(self.target, isolation_level=None)
            self.conn.execute("PRAGMA foreign_keys = ON")
        else:
            self.conn = postgres.connect(self.target, self.password)

    def run(self, sql, params=()):
        return self.conn.execute(sql, params)

    def rows(self, table):
        return sorted(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                      for row in self.run("SELECT * FROM %s" % (table,)).fetchall())

    def columns(self, table):
        if self.engine == "sqlite":
            return [tuple(r) for r in self.run("PRAGMA table_info(%s)" % (table,)).fetchall()]
        return self.run("SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                        " WHERE table_name = ? ORDER BY ordinal_position", (table,)).fetchall()

    def indexes(self, table):
        if self.engine == "sqlite":
            return sorted(self.run("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                                   (table,)).fetchall())
        return sorted(self.run("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ?", (table,)).fetchall())

    def foreign_keys(self, table):
        if self.engine == "sqlite":
            return sorted(tuple(r[2:]) for r in self.run("PRAGMA foreign_key_list(%s)" % (table,)).fetchall())
        return sorted(self.run(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid = to_regclass(?)", (table,)).fetchall())


#: Upgraded from: schema 16 (the last release before issue 16's schemas), and the schema just before this one.
STARTS = sorted({16, WINDOWS_SCHEMA - 1})


@pytest.fixture(params=STARTS, ids=["from-%d" % (n,) for n in STARTS])
def old(request, engine, empty_database):
    target, password = empty_database
    db = Engine(engine, str(target), password).before(request.param)
    db.run("INSERT INTO cas (name, url, created_at, updated_at) VALUES (?, 'https://ca.example/scep', ?, ?)",
           (CA, EPOCH, EPOCH))
    for uuid, serial, platform in HOSTS:
        db.run("INSERT INTO hosts (uuid, serial, platform, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
               (uuid, serial, platform, EPOCH, EPOCH + 1))
    for row in PROFILES:
        db.run("INSERT INTO profiles (uuid, name, platform, content, ca_name, kind, identifier, variables,"
               " identifier_shared, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               row + (EPOCH, EPOCH))
    db.run("INSERT INTO host_profiles (host_uuid, profile_uuid, status, retries, created_at, updated_at, renewal_id)"
           " VALUES ('mac-1', 'p-apple', 'verified', 2, ?, ?, 'sp-0123456789abcdef')", (EPOCH, EPOCH))
    db.run("INSERT INTO host_profiles (host_uuid, profile_uuid, status, retries, created_at, updated_at, renewal_id)"
           " VALUES ('droid-1', 'p-droid', NULL, 0, ?, ?, 'sp-fedcba9876543210')", (EPOCH, EPOCH))
    db.run("INSERT INTO agent_credentials (host_uuid, token_hash, created_at) VALUES ('mac-1', ?, ?)",
           ("a" * 64, EPOCH))
    db.run(LATER_TABLE)
    db.run("INSERT INTO later_host_notes VALUES ('mac-1', 'kept'), ('droid-1', 'kept too')")
    if engine == "sqlite":
        db.conn.commit()
    yield db
    db.conn.close()


TABLES = ("cas", "hosts", "profiles", "host_profiles", "agent_credentials", "later_host_notes")


def test_upgrade_keeps_every_row_column_index_and_foreign_key(old):
    kept = {table: old.rows(table) for table in TABLES}
    shape = {table: (old.columns(table), old.indexes(table), old.foreign_keys(table)) for table in TABLES}
    assert Store.migrate(old.target, password=old.password) == SCHEMA_VERSION
    old.reopen()
    assert {table: old.rows(table) for table in TABLES} == kept
    assert {table: (old.columns(table), old.indexes(table), old.foreign_keys(table)) for table in TABLES} == shape
    if old.engine == "sqlite":
        assert old.run("PRAGMA foreign_key_check").fetchall() == []
        assert old.run("SELECT name FROM sqlite_master WHERE name LIKE '%rebuilt%'").fetchall() == []


def test_after_the_upgrade_windows_is_accepted_and_other_values_still_refused(old):
    Store.migrate(old.target, password=old.password)
    old.reopen()
    old.run("INSERT INTO hosts (uuid, serial, platform, created_at, updated_at) VALUES ('win-1', NULL, 'windows', ?, ?)",
            (EPOCH, EPOCH))
    old.run("INSERT INTO profiles (uuid, name, platform, content, kind, identifier, created_at, updated_at)"
            " VALUES ('p-win', 'Win', 'windows', ?, 'windows_syncml', 'win', ?, ?)", (b"<Replace/>", EPOCH, EPOCH))
    refused = (sqlite3.IntegrityError,) + ((postgres_integrity(),) if old.engine == "postgresql" else ())
    with pytest.raises(refused):
        old.run("INSERT INTO hosts (uuid, platform, created_at, updated_at) VALUES ('beos-1', 'beos', ?, ?)",
                (EPOCH, EPOCH))
    with pytest.raises(refused):
        old.run("INSERT INTO profiles (uuid, name, platform, content, kind, created_at, updated_at)"
                " VALUES ('p-bad', 'Bad', 'windows', ?, 'exe', ?, ?)", (b"x", EPOCH, EPOCH))


def test_after_the_upgrade_deleting_a_host_still_cascades_to_every_table_referencing_it(old):
    Store.migrate(old.target, password=old.password)
    old.reopen()
    old.run("DELETE FROM hosts WHERE uuid = 'mac-1'")
    assert [r[0] for r in old.rows("host_profiles")] == ["droid-1"]
    assert old.rows("agent_credentials") == []
    assert old.rows("later_host_notes") == [("droid-1", "kept too")]
    # And a profile still cannot be dropped from under its CA.
    with pytest.raises((sqlite3.IntegrityError,) + ((postgres_integrity(),) if old.engine == "postgresql" else ())):
        old.run("DELETE FROM cas WHERE name = ?", (CA,))


def postgres_integrity():
    import psycopg

    return psycopg.IntegrityError


def test_a_postgresql_variant_replaces_its_common_file_only_on_postgresql():
    sqlite_files, postgres_files = dict(_schema_files()), dict(_schema_files("postgresql"))
    assert sorted(sqlite_files) == sorted(postgres_files)
    assert "DROP TABLE hosts" in sqlite_files[WINDOWS_SCHEMA]
    assert "DROP CONSTRAINT hosts_platform_check" in postgres_files[WINDOWS_SCHEMA]
    assert [n for n in sqlite_files if sqlite_files[n] != postgres_files[n]] == [WINDOWS_SCHEMA]


# -- the store on either engine, at the latest schema -------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_windows_hosts_and_profiles_are_stored_and_claimed_for_the_outbox(store):
    await store.add_ca(CA, "https://ca.example/scep")
    await store.upsert_host("win-1", None, "windows")
    await store.add_profile("p-win", "Win", "windows", b"<Add/>", CA, kind="windows_syncml")
    await store.upsert_host("mac-1", None, "macos")
    await store.add_profile("p-mac", "Mac", "macos", b"<plist/>", CA, identifier="com.example.mac")
    await store.assign_profile("win-1", "p-win")
    await store.assign_profile("mac-1", "p-mac")
    claimed = await claim_all(store)
    assert set(claimed) == {("win-1", "p-win"), ("mac-1", "p-mac")}
    assert (await store.get_profile("p-win")).kind == "windows_syncml"


@pytest_twisted.ensureDeferred
async def test_an_installed_report_never_verifies_a_windows_host_profile(store):
    await store.add_ca(CA, "https://ca.example/scep")
    for host, platform in (("win-1", "windows"), ("mac-1", "macos")):
        await store.upsert_host(host, None, platform)
    await store.add_profile("p-win", "Win", "windows", b"<Add/>", CA, kind="windows_syncml")
    await store.add_profile("p-mac", "Mac", "macos", b"<plist/>", CA, identifier="com.example.mac")
    for host, profile in (("win-1", "p-win"), ("mac-1", "p-mac")):
        await store.assign_profile(host, profile)
        await store.set_host_profile_status(host, profile, "verifying")
    assert await store.profiles_installed("win-1", ["p-win"]) == 0
    assert await store.profiles_installed("mac-1", ["p-mac", "com.example.mac"]) == 1
    statuses = {(hp.host_uuid, hp.status) for hp in await store.list_host_profiles()}
    assert statuses == {("win-1", "verifying"), ("mac-1", "verified")}
