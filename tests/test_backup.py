"""Backups: VACUUM INTO while serving, the backup directory, offline restore.

These tests use a real Store on a temporary state directory made by the
daemon's own ``prepare_state``. The real daemon under load is in
tests/interop/test_backup_daemon.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor

from support.ctl import ctl_in_process
from support.state import DB_NAME, fingerprint_files, make_settings, new_settings, rows
from support.store import postgres_password
from scepproxyd.backup import (
    DATABASE_ROLE,
    MANIFEST,
    BackupError,
    DaemonRunning,
    restore_backup,
    state_files,
    take_backup,
)
from scepproxyd.cli.backup import backup as cli_backup
from scepproxyd.service import prepare_state
from scepproxyd.store import Store, StoreError
from scepproxyd.store.database import _schema_files
from scepproxyd.web.admin_backup import backup_routes
from scepproxyd.web.api import HttpRefusal

# Every file a state with an RA and a NanoMDM key holds, by its name relative to the state directory.
STATE_NAMES = {
    "secrets.key", "admin.token", "nanomdm-webhook.token", "nanomdm.key",
    "ca/ca.key", "ca/ca.pem", "ca/challenge", "ca/ra.key", "ca/ra.pem",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(tmp_path):
    s = make_settings(tmp_path / "live")
    (s.state_directory / "nanomdm.key").write_text("nanomdm-api-key\n")
    os.chmod(s.state_directory / "nanomdm.key", 0o600)
    return s


@pytest_twisted.async_yield_fixture
async def live_store(settings):
    s = Store(settings.database.path, reactor)
    await s.start()
    await s.upsert_host("HOST-1", "C02AAA", "macos")
    await s.upsert_host("HOST-2", None, "android")
    yield s
    await s.stop()


async def backed_up(live_store, settings, directory):
    """A finished backup with the live store stopped, as restore expects."""
    result = await take_backup(live_store, settings, directory, reactor)
    await live_store.stop()
    return result


# -- what is backed up -------------------------------------------------------------


def test_state_files_are_the_existing_secrets(settings):
    state = settings.state_directory
    assert {p.relative_to(state).as_posix() for p in state_files(settings)} == STATE_NAMES
    (state / "nanomdm.key").unlink()
    assert {p.relative_to(state).as_posix() for p in state_files(settings)} == STATE_NAMES - {"nanomdm.key"}


def test_state_files_without_ra_or_ca(tmp_path):
    s = make_settings(tmp_path / "plain", ra=False, ca={"enabled": "no"})
    names = {p.relative_to(s.state_directory).as_posix() for p in state_files(s)}
    assert names == {"secrets.key", "admin.token", "nanomdm-webhook.token"}


# -- taking a backup -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_backup_writes_database_files_and_manifest(live_store, settings, tmp_path):
    directory = tmp_path / "backups" / "one"
    result = await take_backup(live_store, settings, directory, reactor)

    assert result["directory"] == str(directory)
    assert set(result["files"]) == STATE_NAMES | {DB_NAME}
    assert result["database_bytes"] == (directory / DB_NAME).stat().st_size > 0
    assert mode(directory) == 0o700
    written = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert written == STATE_NAMES | {DB_NAME, MANIFEST}
    for name in written:
        assert mode(directory / name) == 0o600, name
    for name in STATE_NAMES:
        assert (directory / name).read_bytes() == (settings.state_directory / name).read_bytes()

    manifest = json.loads((directory / MANIFEST).read_text())
    assert (manifest["format"], manifest["database"]) == (1, DB_NAME)
    assert manifest["schema_version"] == _schema_files()[-1][0]
    assert manifest["created_at"].endswith("+00:00")
    for entry in manifest["files"]:
        data = (directory / entry["name"]).read_bytes()
        assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert {e["role"] for e in manifest["files"]} >= {"database", "state.key_file", "ca.key_file", "ca.ra_key"}

    # The copy is a consistent, self-contained database: no -wal needed to read it.
    copy = directory / DB_NAME
    assert rows(copy, "PRAGMA integrity_check") == [("ok",)]
    assert rows(copy, "PRAGMA journal_mode") == [("delete",)]
    assert rows(copy, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]

    # Names only: no secret leaves through the answer.
    answer = json.dumps(result)
    for name in STATE_NAMES:
        assert (settings.state_directory / name).read_text().strip() not in answer


@pytest_twisted.ensureDeferred
async def test_backup_into_existing_empty_directory(live_store, settings, tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir(mode=0o755)
    result = await take_backup(live_store, settings, directory, reactor)
    assert DB_NAME in result["files"] and mode(directory) == 0o700


@pytest_twisted.ensureDeferred
async def test_ping_and_backup_database(live_store, tmp_path):
    assert await live_store.ping() is None
    size = await live_store.backup_database(tmp_path / "copy.sqlite3")
    assert size == (tmp_path / "copy.sqlite3").stat().st_size
    with pytest.raises(StoreError):  # VACUUM INTO never overwrites a database
        await live_store.backup_database(tmp_path / "copy.sqlite3")


@pytest_twisted.ensureDeferred
async def test_backup_refuses_bad_directories(live_store, settings, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (Path("relative/dir"), "directory must be an absolute path"),
        (full, "is not empty"),
        (a_file, "exists and is not a directory"),
        (a_file / "below", "cannot create %s: Not a directory" % (a_file / "below",)),
    ]
    for directory, message in cases:
        with pytest.raises(BackupError, match=message) as caught:
            await take_backup(live_store, settings, directory, reactor)
        assert caught.value.field == "directory"
    assert [p.name for p in full.iterdir()] == ["old.txt"]
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
@pytest_twisted.ensureDeferred
async def test_backup_refuses_unwritable_location(live_store, settings, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(BackupError, match="permission denied") as caught:
        await take_backup(live_store, settings, locked / "backup", reactor)
    assert caught.value.field == "directory"
    empty = tmp_path / "read-only-empty"
    empty.mkdir(mode=0o500)
    with pytest.raises(BackupError, match="not writable"):
        await take_backup(live_store, settings, empty, reactor)


@pytest_twisted.ensureDeferred
async def test_failed_backup_leaves_nothing_behind(live_store, settings, tmp_path):
    await live_store.stop()  # the database part fails
    directory = tmp_path / "new"
    with pytest.raises(BackupError, match="store is not running"):
        await take_backup(live_store, settings, directory, reactor)
    assert not directory.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(BackupError):
        await take_backup(live_store, settings, existing, reactor)
    assert existing.is_dir() and not any(existing.iterdir())


# -- the admin route -------------------------------------------------------------------


class FakeRequest:
    def __init__(self, body):
        self.content = io.BytesIO(json.dumps(body).encode())


@pytest_twisted.ensureDeferred
async def test_route_answers_201_or_422(live_store, settings, tmp_path):
    [(method, pattern, handler)] = backup_routes(live_store, settings, reactor)
    assert (method, pattern) == ("POST", "/api/v1/backup")
    status, result = await handler(FakeRequest({"directory": str(tmp_path / "b")}))
    assert status == 201 and DB_NAME in result["files"] and result["directory"] == str(tmp_path / "b")

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for body, message in [
        ({}, "directory is required"),
        ({"directory": 7}, "directory must be a string"),
        ({"directory": "backups/today"}, "absolute path"),
        ({"directory": str(tmp_path / "full")}, "is not empty"),
        ({"directory": str(tmp_path / "full" / "x" / "y")}, "Not a directory"),
    ]:
        with pytest.raises(HttpRefusal, match=message) as caught:
            await handler(FakeRequest(body))
        assert (caught.value.status, caught.value.field) == (422, "directory")


# -- restore ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restore_into_new_state_directory(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    # A stale -wal of an earlier database would be replayed into the restored one: it must go.
    target.state_directory.mkdir(parents=True)
    Path(str(target.database.path) + "-wal").write_bytes(b"stale wal" * 100)
    Path(str(target.database.path) + "-shm").write_bytes(b"stale shm")

    names = restore_backup(directory, target)

    assert set(names) == STATE_NAMES | {DB_NAME}
    assert not Path(str(target.database.path) + "-wal").exists()
    assert not Path(str(target.database.path) + "-shm").exists()
    for name in STATE_NAMES:
        assert (target.state_directory / name).read_bytes() == (settings.state_directory / name).read_bytes()
        assert mode(target.state_directory / name) == 0o600
    assert mode(target.database.path) == 0o600 and mode(target.state_directory / "ca") == 0o700
    assert not list(target.state_directory.rglob("*.restoring"))
    assert rows(target.database.path, "PRAGMA integrity_check") == [("ok",)]
    assert rows(target.database.path, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]
    # The daemon starts on it as it is.
    prepare_state(target)
    restored = Store(target.database.path, reactor)
    await restored.start()
    try:
        assert [h.uuid for h in await restored.list_hosts()] == ["HOST-1", "HOST-2"]
    finally:
        await restored.stop()


@pytest_twisted.ensureDeferred
async def test_restore_over_the_old_state(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await take_backup(live_store, settings, directory, reactor)
    await live_store.upsert_host("AFTER-BACKUP", None, "ios")
    await live_store.stop()
    (settings.state_directory / "admin.token").unlink()
    restore_backup(directory, settings)
    assert rows(settings.database.path, "SELECT uuid FROM hosts ORDER BY uuid") == [("HOST-1",), ("HOST-2",)]
    assert (settings.state_directory / "admin.token").read_bytes() == (directory / "admin.token").read_bytes()


@pytest_twisted.ensureDeferred
async def test_restore_of_an_older_backup_skips_the_retired_agent_token(live_store, settings, tmp_path):
    """A backup from before per-host agent credentials holds agent.token: checked, never put back."""
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    old_token = b"old-shared-agent-token-0123456789\n"
    (directory / "agent.token").write_bytes(old_token)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"].append({"name": "agent.token", "role": "agent.token_file", "bytes": len(old_token),
                              "sha256": hashlib.sha256(old_token).hexdigest()})
    (directory / MANIFEST).write_text(json.dumps(manifest))
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    names = restore_backup(directory, target)
    assert set(names) == STATE_NAMES | {DB_NAME}
    assert not (target.state_directory / "agent.token").exists()
    # Still checked like every file: an altered one is refused.
    (directory / "agent.token").write_bytes(b"x" + old_token[1:])
    with pytest.raises(BackupError, match="agent.token does not match MANIFEST.json"):
        restore_backup(directory, new_settings(tmp_path / "newer", ca={"ra": "yes"}))


@pytest_twisted.ensureDeferred
async def test_restore_refuses_while_the_database_is_open(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await take_backup(live_store, settings, directory, reactor)
    before = fingerprint_files(settings.state_directory)
    with pytest.raises(DaemonRunning, match="scepproxyd is running"):
        restore_backup(directory, settings)
    # The store kept working and nothing changed.
    await live_store.upsert_host("HOST-3", None, "ios")
    assert len(await live_store.list_hosts()) == 3
    assert fingerprint_files(settings.state_directory) == before


@pytest_twisted.ensureDeferred
async def test_restore_refuses_tampered_file(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = make_settings(tmp_path / "other")
    before = fingerprint_files(target.state_directory)
    hosts = rows(target.database.path, "SELECT count(*) FROM hosts")
    key = directory / "ca" / "ca.key"
    key.write_bytes(key.read_bytes().replace(b"A", b"B", 1))

    with pytest.raises(BackupError, match=r"ca/ca.key does not match MANIFEST.json \(sha256 differs\)"):
        restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) == before
    assert rows(target.database.path, "SELECT count(*) FROM hosts") == hosts
    assert not list(target.state_directory.rglob("*.restoring"))

    code, out, err = ctl_in_process("--config", str(target.config_path), "restore", str(directory))
    assert code == 1 and "sha256 differs" in err and "nothing was restored" in err


@pytest_twisted.ensureDeferred
async def test_restore_refuses_corrupt_database(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    database = directory / DB_NAME
    [(root,)] = rows(database, "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_hosts_1'")
    [(page_size,)] = rows(database, "PRAGMA page_size")
    data = bytearray(database.read_bytes())
    start = (root - 1) * page_size
    at = data.index(b"HOST-1", start, start + page_size)
    data[at:at + 6] = b"HOST-0"  # the index no longer matches its table
    database.write_bytes(bytes(data))
    manifest = json.loads((directory / MANIFEST).read_text())
    for entry in manifest["files"]:  # as if damaged before the manifest was written
        if entry["name"] == DB_NAME:
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))
    target = new_settings(tmp_path / "new")
    refusal = r"fails PRAGMA integrity_check \(row 1 missing from index .*\); nothing was restored"
    with pytest.raises(BackupError, match=refusal):
        restore_backup(directory, target)
    assert not target.state_directory.exists()


@pytest_twisted.ensureDeferred
async def test_restore_refuses_incomplete_or_unsafe_manifest(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = new_settings(tmp_path / "new")
    manifest = json.loads((directory / MANIFEST).read_text())

    def refused(changed, message):
        (directory / MANIFEST).write_text(json.dumps(changed))
        with pytest.raises(BackupError, match=message):
            restore_backup(directory, target)
        assert not target.state_directory.exists()

    escape = json.loads(json.dumps(manifest))
    escape["files"][1]["name"] = "../outside"
    refused(escape, "unsafe file")
    unknown = json.loads(json.dumps(manifest))
    unknown["files"][1]["role"] = "etc.passwd"
    refused(unknown, "unknown role")
    missing = json.loads(json.dumps(manifest))
    missing["files"].append(dict(missing["files"][1], name="ghost", role="ca.ra_key"))
    missing["files"] = [f for f in missing["files"] if f["role"] != "ca.ra_key" or f["name"] == "ghost"]
    refused(missing, "ghost listed in MANIFEST.json is missing")
    (directory / MANIFEST).unlink()
    with pytest.raises(BackupError, match="has no MANIFEST.json"):
        restore_backup(directory, target)


# -- scepproxyctl restore, offline -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ctl_restore_needs_no_api(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = new_settings(tmp_path / "new", ca={"ra": "yes"})
    # No daemon, no admin token: restore reads only the config and the backup.
    code, out, err = ctl_in_process("--config", str(target.config_path), "restore", str(directory))
    assert (code, err) == (0, "")
    assert out.startswith("restored 10 files from %s into %s:\n" % (directory, target.state_directory))
    assert "  ca/ca.key\n" in out and "  %s\n" % (DB_NAME,) in out
    other = new_settings(tmp_path / "other")
    code, out, err = ctl_in_process("--config", str(other.config_path), "--json", "restore", str(directory))
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "directory": str(directory), "state_directory": str(other.state_directory), "files": json.loads(out)["files"],
        "database_restored": True,
    }
    assert set(json.loads(out)["files"]) == STATE_NAMES | {DB_NAME}
    code, out, err = ctl_in_process("--config", str(tmp_path / "missing.ini"), "restore", str(directory))
    assert code == 2 and "cannot read configuration file" in err


@pytest_twisted.ensureDeferred
async def test_restore_refuses_symbolic_links_and_changes_nothing(live_store, settings, tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = make_settings(tmp_path / "other")
    before = fingerprint_files(target.state_directory)
    hosts = rows(target.database.path, "SELECT count(*) FROM hosts")
    elsewhere = tmp_path / "elsewhere"
    # A linked directory: its files match the manifest, but restore must not follow it.
    (directory / "ca").rename(elsewhere)
    (directory / "ca").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BackupError, match=r"contains a symbolic link \(directory .*/backup/ca -> .*elsewhere\)"):
        restore_backup(directory, target)
    code, out, err = ctl_in_process("--config", str(target.config_path), "restore", str(directory))
    assert code == 1 and "symbolic link" in err and "nothing was restored" in err
    assert fingerprint_files(target.state_directory) == before
    assert rows(target.database.path, "SELECT count(*) FROM hosts") == hosts
    assert not list(target.state_directory.rglob("*.restoring"))

    # A linked file, the directory put back.
    (directory / "ca").unlink()
    elsewhere.rename(directory / "ca")
    key = directory / "ca" / "ca.key"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    with pytest.raises(BackupError, match=r"contains a symbolic link \(file .*/backup/ca/ca.key -> "):
        restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) == before

    # Without links the same backup restores.
    key.unlink()
    elsewhere.rename(key)
    restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) != before


# -- with the database on PostgreSQL: the state files only ------------------------------------------


def pg_settings(directory: Path, postgres_url):
    """A configuration on ``postgres_url`` (its password in a file of the state), its state made as the daemon does."""
    directory.mkdir(parents=True)
    password_file = directory / "pg-password"
    password_file.write_text((postgres_password(postgres_url) or "") + "\n")
    password_file.chmod(0o600)
    return make_settings(directory, database={"url": postgres_url.url, "password_file": str(password_file)})


@pytest_twisted.async_yield_fixture
async def pg_store(postgres_url, tmp_path):
    """``(settings, started Store)`` of a site on PostgreSQL with two hosts."""
    settings = pg_settings(tmp_path / "pg", postgres_url)
    Store.migrate(settings.database.target, settings.database.password())
    s = Store(settings.database.target, reactor, password=settings.database.password())
    await s.start()
    await s.upsert_host("HOST-1", "C02AAA", "macos")
    yield settings, s
    await s.stop()


@pytest_twisted.ensureDeferred
async def test_backup_on_postgresql_holds_the_state_files_and_says_the_database_is_not_in_it(pg_store, postgres_url,
                                                                                            tmp_path):
    settings, store = pg_store
    directory = tmp_path / "backup"
    result = await take_backup(store, settings, directory, reactor)

    not_included = ("the database is not in this backup: it is on PostgreSQL (%s), shared by every node; back it up "
                    "with pg_dump (docs/operations.md, Several nodes)" % (postgres_url.url,))
    assert result == {"directory": str(directory), "files": result["files"], "database_bytes": None,
                      "database_included": False, "not_included": not_included}
    assert set(result["files"]) == STATE_NAMES - {"nanomdm.key"}
    written = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert written == set(result["files"]) | {MANIFEST}
    manifest = json.loads((directory / MANIFEST).read_text())
    assert (manifest["database"], manifest["database_included"], manifest["database_engine"]) == (
        None, False, "postgresql")
    assert (manifest["database_url"], manifest["not_included"]) == (postgres_url.url, not_included)
    assert manifest["schema_version"] == _schema_files()[-1][0]
    assert DATABASE_ROLE not in {entry["role"] for entry in manifest["files"]}

    # The admin route answers the same, and scepproxyctl says what the backup covers and what it does not.
    [(_, _, handler)] = backup_routes(store, settings, reactor)
    status, answer = await handler(FakeRequest({"directory": str(tmp_path / "by-route")}))
    assert status == 201 and answer["database_included"] is False

    class Api:
        def request(self, method, path, body):
            return 201, answer

    _, text = cli_backup(Api(), SimpleNamespace(directory=str(tmp_path / "by-route")), None)
    assert text == ("backed up %d files to %s: the state files only (the secrets key, the API tokens, the built-in "
                    "CA's key material)\n%s" % (len(answer["files"]), tmp_path / "by-route", not_included))
    if postgres_password(postgres_url):
        assert postgres_password(postgres_url) not in json.dumps(manifest) + text


@pytest_twisted.ensureDeferred
async def test_restore_on_postgresql_puts_back_the_files_only(pg_store, postgres_url, tmp_path):
    settings, store = pg_store
    directory = tmp_path / "backup"
    await take_backup(store, settings, directory, reactor)
    await store.upsert_host("AFTER-BACKUP", None, "ios")
    await store.stop()
    before = {name: (settings.state_directory / name).read_bytes() for name in ("secrets.key", "ca/ca.key")}
    for name in before:
        (settings.state_directory / name).write_bytes(b"lost")

    # Offline, on this node: nothing to lock on PostgreSQL, the files go back, the database is left alone.
    code, out, err = ctl_in_process("--config", str(settings.config_path), "restore", str(directory))
    assert (code, err) == (0, "")
    assert "the database was not restored: it is on PostgreSQL (%s); restore it from its pg_dump" % (
        postgres_url.url,) in out
    for name, data in before.items():
        assert (settings.state_directory / name).read_bytes() == data
    assert not settings.database.path.exists()
    hosts = Store(settings.database.target, reactor, password=settings.database.password())
    await hosts.start()
    try:
        assert [h.uuid for h in await hosts.list_hosts()] == ["AFTER-BACKUP", "HOST-1"]
    finally:
        await hosts.stop()
    code, out, err = ctl_in_process("--config", str(settings.config_path), "--json", "restore", str(directory))
    assert code == 0 and json.loads(out)["database_restored"] is False


@pytest_twisted.ensureDeferred
async def test_a_backup_without_database_is_refused_for_sqlite(pg_store, tmp_path):
    settings, store = pg_store
    directory = tmp_path / "backup"
    await take_backup(store, settings, directory, reactor)
    target = make_settings(tmp_path / "sqlite-site")
    before = fingerprint_files(target.state_directory)
    with pytest.raises(BackupError, match=r"holds no database: it was taken with the database on PostgreSQL \(%s\), "
                                          r"and this configuration keeps its database in SQLite at %s; .*nothing "
                                          r"was restored" % (settings.database.url, target.database.path)):
        restore_backup(directory, target)
    assert fingerprint_files(target.state_directory) == before


@pytest_twisted.ensureDeferred
async def test_a_sqlite_backup_restored_on_postgresql_leaves_its_database_out(live_store, settings, postgres_url,
                                                                            tmp_path):
    directory = tmp_path / "backup"
    await backed_up(live_store, settings, directory)
    target = pg_settings(tmp_path / "pg", postgres_url)
    names = restore_backup(directory, target)
    assert set(names) == STATE_NAMES and DB_NAME not in names
    assert not target.database.path.exists()
    assert (target.state_directory / "secrets.key").read_bytes() == (directory / "secrets.key").read_bytes()
